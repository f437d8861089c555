"""The throughput benchmark runs end to end on tiny data (speed is not asserted: figures come from `make bench`)."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from benchmarks import keras_peer, precision_dice, results_log, throughput


def test_throughput_benchmark_measures_both_contenders_and_records(segmentation_set, tmp_path, monkeypatch):
    monkeypatch.setattr(results_log, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(results_log, "RESULTS_LOG", tmp_path / "results.md")
    args = throughput.parse_args(
        [
            "--image-size",
            "32",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--modes",
            "frozen",
            "--precision",
            "32-true",
            "--peak-size",
            "128",
            "--note",
            "test",
            "--set",
            "dataset=folder_seg",
            "--set",
            f"dataset.root={segmentation_set}",
            "--set",
            f"paths.root_dir={tmp_path}",
            "--set",
            "trainer.enable_progress_bar=false",
            "--set",
            "~logger",
            "--set",
            "model.channels=[4,8,16,32,64]",
        ]
    )
    result = throughput.run(args)

    row = result["training"]["frozen"]
    assert row["freeze"] == "encoder"
    assert row["pipeline_images_per_second"][0] > 0 and row["bare_images_per_second"][0] > 0
    # stored to 4 decimals: a slow pipeline (a busy machine) gives a small ratio, where the rounding is the error
    assert row["ratio"] == pytest.approx(
        row["pipeline_images_per_second"][0] / row["bare_images_per_second"][0], rel=1e-3, abs=5e-5
    )
    # The frozen encoder's backward is skipped, so one step costs fewer FLOPs than training everything.
    scratch_flops = throughput.Bench(args).training_flops("scratch")
    assert 0 < row["train_gflop_per_step"] * 1e9 < scratch_flops
    assert result["inference"]["images_per_second"] > 0 and result["inference"]["gflop_per_image"] > 0
    assert set(result["matmul_peak_gflop_per_second"]) == {"float32"}  # 32-true: no half-precision peak asked for

    path = throughput.record(result)
    assert json.loads(path.read_text())["machine"] == result["machine"]
    line = (tmp_path / "results.md").read_text().splitlines()[-1]
    assert result["machine"] in line and "frozen: pipeline" in line and "test" in line
    isa = result["cpu_isa"]
    assert (
        set(isa) == {"cpu", "amx", "avx512_bf16", "avx512", "avx2"} and f"AMX {'yes' if isa['amx'] else 'no'}" in line
    )


def test_without_tensorflow_the_benchmark_says_how_to_add_the_keras_peer(monkeypatch):
    monkeypatch.setattr(keras_peer, "available", lambda: False)
    args = throughput.parse_args(["--modes", "scratch", "--precision", "32-true"])
    with throughput.ExitStack() as stack:
        peers = throughput.start_peers(throughput.Bench(args), stack)
    assert peers == {"skipped": keras_peer.INSTALL_HINT} and "[peer]" in keras_peer.INSTALL_HINT
    assert keras_peer.INSTALL_HINT in results_log.peers_text(peers)
    assert throughput.start_peers(throughput.Bench(throughput.parse_args(["--peer", "off"])), stack) == {}


def test_the_keras_peer_is_the_papers_unet():
    """Same architecture, same 7,846,657 parameters: otherwise the ratio to the paper's framework means nothing."""
    pytest.importorskip("tensorflow")
    assert keras_peer.build_unet([32, 64, 128, 256, 512], image_size=32).count_params() == 7_846_657


def test_the_peer_may_run_in_a_venv_of_its_own(monkeypatch, tmp_path):
    monkeypatch.setenv(keras_peer.PEER_PYTHON_ENV, str(tmp_path / "missing" / "python"))
    assert not keras_peer.available()
    (tmp_path / "python").write_text("")
    monkeypatch.setenv(keras_peer.PEER_PYTHON_ENV, str(tmp_path / "python"))
    assert keras_peer.peer_python() == str(tmp_path / "python")


def test_precision_comparison_pairs_runs_per_image():
    def run(test_dice, per_image, seed):
        return {
            "test_dice": test_dice,
            "best_val_dice": test_dice,
            "test_dice_per_image": per_image,
            "train_images_per_second": 1.0,
            "seed": seed,
        }

    runs = {
        "bf16-mixed": [run(0.5, [0.4, 0.6], 0), run(0.7, [0.6, 0.8], 1)],
        "32-true": [run(0.5, [0.5, 0.5], 0), run(0.6, [0.5, 0.7], 1)],
    }
    comparison = precision_dice.compare(runs)
    assert comparison["test_dice_difference_per_seed"] == pytest.approx([0.0, 0.1])
    assert comparison["32-true"]["test_dice_std_over_seeds"] == pytest.approx(0.0707, abs=1e-4)
    low, high = comparison["per_image_difference_ci95"]
    assert low <= 0.0 <= high and comparison["within_noise"]


def test_predict_benchmark_measures_speed_and_memory_in_child_processes(tmp_path, monkeypatch):
    from benchmarks import predict_speed

    monkeypatch.setattr(results_log, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(results_log, "RESULTS_LOG", tmp_path / "results.md")
    args = predict_speed.parse_args(
        ["--megapixels", "0.02", "--memory-megapixels", "0.03", "--runtimes", "torch", "--channels", "4,8,16,32,64"]
    )
    result = predict_speed.run(args)
    (run,) = result["speed"]["torch/fitted"]
    assert run["megapixels_per_second"] > 0 and run["tiles"] == 1  # 0.02 MP fits in one tile
    # one tile padded to the network's multiple: at least the photo's pixels, run faster than the whole predict
    assert 1.0 <= run["computed_per_photo_pixel"] < 1.2 and 0.0 <= run["outside_network"] < 1.0
    assert run["network_megapixels_per_second"] >= run["megapixels_per_second"]
    bound = result["ceiling"]  # the tiny network's FLOPs, not unet_paper's 426 GFLOP/MP
    assert 0 < bound["gflop_per_megapixel"] < 100 and bound["megapixels_per_second_at_peak"]["float32"] > 0
    memory = result["memory"]["torch/grid"]  # predict's default layout, the first of the default --layouts
    # the whole predict command ran (torch alone is over 100 MiB resident) and wrote the photo's results
    assert memory["peak_memory_mib"] > 100 and memory["seconds"] > 0 and memory["defects"] >= 0
    footprint = result["memory_torch"]  # the floor under it: this interpreter's torch build, imported alone
    assert footprint["python"] == sys.executable and 50 < footprint["import_mib"] < memory["peak_memory_mib"]
    line = results_log.RESULTS_LOG.read_text().splitlines()[-1] if predict_speed.record(result) else ""
    assert f"torch {footprint['torch']}" in line
    assert "tiled predict" in line and "AVX-512 BF16" in line and "torch/fitted" in line
    assert "fp32 matmul peak" in line and "outside it" in line and "whole predict command" in line


def test_gpu_check_runs_its_whole_path_on_a_cpu_in_tiny_mode(tmp_path, monkeypatch):
    """benchmarks/gpu_check.py waits for a GPU machine; this keeps it from rotting meanwhile."""
    from benchmarks import gpu_check

    monkeypatch.setattr(results_log, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(results_log, "RESULTS_LOG", tmp_path / "results.md")
    monkeypatch.setenv("HOME", str(tmp_path))
    result = gpu_check.run(argparse.Namespace(tiny=True, set=[]))
    assert set(result["throughput"]) == {"scratch", "frozen"}
    protocol = result["protocol"]
    assert protocol["epochs"] == 2 and protocol["loader"]["steps"] == 4  # 2 epochs x 2 batches, each step timed
    assert 0.0 <= protocol["loader"]["loader_wait_fraction"] <= 1.0 and protocol["wall_seconds"] > 0
    gpu_check.record(result)
    assert "gpu_check (tiny dry run)" in results_log.RESULTS_LOG.read_text()


def test_the_benchmarks_compose_the_stage_2_config_in_a_fresh_process():
    """make bench and the GPU check start as plain scripts: nothing else has registered the config schemas there
    (in this test session conftest has), so composing must register them itself."""
    import subprocess
    import sys

    from benchmarks.throughput import REPO

    code = "from benchmarks.throughput import compose; print(compose(['experiment=quick']).model._target_)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "defectseg.models.unet_paper"
