"""Dashboards that answer the question: TensorBoard's HParams view shows stage 2's columns under any logdir."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from defectseg.training.runner import Run


def _log(save_dir, params, metrics):
    logger = TensorBoardLogger(save_dir=str(save_dir), name="tensorboard", version="", default_hp_metric=False)
    Run.log_hparams(SimpleNamespace(logger=logger, trainer=SimpleNamespace(is_global_zero=True)), params, metrics)
    logger.finalize("success")
    accumulator = EventAccumulator(str(save_dir / "tensorboard"))
    accumulator.Reload()
    return accumulator


def test_runs_write_sessions_but_no_experiment_that_would_hide_other_stages(tmp_path):
    """TensorBoard takes the HParams columns from the first run with an experiment record; none may write one."""
    stage1 = _log(tmp_path / "pretrain", {"stage": "pretrain", "seed": 0}, {"test_auroc": 0.9})
    stage2 = _log(
        tmp_path / "finetune",
        {"stage": "finetune", "freeze": "none", "seed": 1, "train_images": 25},
        {"best_val_dice": 0.7, "test_dice": 0.6},
    )
    for run in (stage1, stage2):
        tags = run.PluginTagToContent(metadata.PLUGIN_NAME)
        assert metadata.EXPERIMENT_TAG not in tags
        assert metadata.SESSION_START_INFO_TAG in tags and metadata.SESSION_END_INFO_TAG in tags
    start = metadata.parse_session_start_info_plugin_data(
        stage2.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["freeze"].string_value == "none"
    assert start.hparams["train_images"].number_value == 25
    assert stage2.Scalars("hparams/test_dice")[0].value == pytest.approx(0.6)


def test_known_noise_is_filtered_and_real_warnings_still_show(caplog):
    import logging
    import warnings

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from defectseg.utils.logs import quiet_third_party

    quiet_third_party()
    with warnings.catch_warnings(record=True) as shown:
        warnings.warn(
            "The number of training batches (2) is smaller than the logging interval", UserWarning, stacklevel=1
        )
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["a real problem"]
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing something")
        rank_zero_info("GPU available: False")
    assert "Tip" not in caplog.text and "GPU available" in caplog.text


def test_no_progress_bar_in_a_log_file(tmp_path):
    """Redirected output (a file, a pipe) gets plain lines; a terminal gets one bar."""
    from defectseg.utils.logs import interactive

    with (tmp_path / "log.txt").open("w") as file:
        assert not interactive(file)
