"""Export: ONNX and TorchScript agree with PyTorch, carry predict's settings, and the ONNX model predicts without
torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from defectseg.export import TORCHSCRIPT_INFO_NAME, load_torchscript, run_export
from defectseg.inference.runtime import TUNED_THRESHOLD_KEY
from defectseg.inference.torch_runtime import load_model
from defectseg.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write_tiny_run(run_dir: Path, threshold: float = 0.35) -> Path:
    """A fine-tune run directory as stage 2 leaves it (config.yaml + checkpoints/best.ckpt), for a tiny U-Net."""
    from hydra.utils import instantiate

    model_cfg = {"_target_": "defectseg.models.unet_paper", "in_channels": 3, "channels": [4, 8, 16], "num_classes": 1}
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"model": model_cfg, "dataset": {"image_size": 32}}), run_dir / "config.yaml")
    torch.manual_seed(0)
    model = instantiate(model_cfg)
    checkpoint = {
        "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
        "hyper_parameters": {"threshold": 0.5},
        TUNED_THRESHOLD_KEY: {"best_threshold": threshold, "val_dice_at_best_threshold": 0.9},
    }
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    torch.save(checkpoint, run_dir / "checkpoints" / "best.ckpt")
    return run_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export shared by the tests below (conf/export.yaml's own settings; exporting takes seconds)."""
    root = tmp_path_factory.mktemp("export")
    run_dir = write_tiny_run(root / "finetune" / "tiny")
    settings = OmegaConf.load(REPO / "conf" / "export.yaml")
    settings.pop("defaults")  # composed by Hydra: the schema and paths
    cfg = OmegaConf.merge(settings, {"checkpoint": str(run_dir), "output_dir": str(root / "exported")})
    return run_export(cfg), run_dir


def test_export_checks_itself_and_carries_predicts_settings(exported):
    report, _run_dir = exported
    assert set(report["exported"]) == {"onnx", "torchscript"}
    for result in report["exported"].values():
        assert result["ok"] and result["max_abs_difference"] <= 1e-4
    assert report["check"]["shapes"] == [[1, 3, 32, 32], [2, 3, 16, 36]]  # batch, height and width all vary
    onnx_path = Path(report["exported"]["onnx"]["path"])
    assert json.loads(Path(onnx_path.parent / "export.json").read_text())["exported"]["onnx"]["ok"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    stored = json.loads(session.get_modelmeta().custom_metadata_map["defectseg"])
    assert stored["threshold"] == 0.35 and stored["tile_size"] == 32 and stored["multiple"] == 4
    with zipfile.ZipFile(report["exported"]["torchscript"]["path"]) as archive:
        assert any(name.endswith(f"extra/{TORCHSCRIPT_INFO_NAME}") for name in archive.namelist())


def test_exported_models_run_at_a_size_they_were_not_checked_at(exported):
    report, run_dir = exported
    model, _ = load_model(run_dir / "checkpoints" / "best.ckpt")
    images = np.random.default_rng(1).random((3, 3, 44, 20), dtype=np.float32)
    with torch.no_grad():
        reference = torch.sigmoid(model(torch.from_numpy(images))).numpy()
    session = ort.InferenceSession(report["exported"]["onnx"]["path"], providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": images})[0], reference, atol=1e-4)
    scripted = load_torchscript(Path(report["exported"]["torchscript"]["path"]))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(torch.from_numpy(images)).numpy(), reference, atol=1e-4)


def test_onnx_model_predicts_from_the_command_line_without_torch_or_lightning(exported, tmp_path):
    report, _ = exported
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(photos / "p.png")
    out = tmp_path / "predicted"
    probe = (
        "import runpy, sys\n"
        "try:\n"
        "    runpy.run_module('defectseg.predict', run_name='__main__')\n"
        "finally:\n"
        "    loaded = sorted(m for m in ('torch', 'lightning') if m in sys.modules)\n"
        "    print('heavy modules:', loaded, file=sys.stderr)\n"
    )
    args = [
        f"input={photos}",
        f"checkpoint={report['exported']['onnx']['path']}",
        f"hydra.run.dir={out}",
        "progress=false",
    ]
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "heavy modules: []" in done.stderr
    assert Image.open(out / "masks" / "p.png").size == (70, 45)
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["model"]["runtime"] == "onnxruntime" and saved["model"]["threshold"] == 0.35


def test_export_refuses_an_old_opset_and_unknown_formats(compose_config, tmp_path):
    run_dir = write_tiny_run(tmp_path / "run")
    with pytest.raises(UserError, match="opset"):
        run_export(compose_config("export", [f"checkpoint={run_dir}", "opset=13"]))
    with pytest.raises(UserError, match="formats"):
        run_export(compose_config("export", [f"checkpoint={run_dir}", "formats=[tflite]"]))


def test_export_to_an_output_dir_keeps_every_file_of_the_run_there(exported, tmp_path):
    _, run_dir = exported
    out = tmp_path / "exported"
    done = subprocess.run(
        [sys.executable, "-m", "defectseg.export", f"checkpoint={run_dir}", f"output_dir={out}", "formats=[onnx]"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.onnx").is_file()
    assert (out / ".hydra" / "config.yaml").is_file(), "Hydra's files belong in the directory the user named"
    assert not (tmp_path / "outputs").exists()
