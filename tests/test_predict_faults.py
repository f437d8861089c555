"""Predict loses nothing: colliding photo names, SIGTERM / SIGKILL / Ctrl-C mid-folder, and the rerun that continues."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectseg.data.readers import read_image
from defectseg.inference.names import output_names
from defectseg.predict import PredictStopped, run_predict

REPO = Path(__file__).resolve().parents[1]


def dark_square_photo(height: int, width: int, shade: int = 10) -> np.ndarray:
    image = np.full((height, width, 3), 200, np.uint8)
    image[height // 4 : height // 2, width // 4 : width // 2] = shade
    return image


def test_output_names_keep_the_whole_relative_path_and_never_collide(tmp_path):
    names = [
        "a.jpg",
        "a.png",
        "a_2.png",
        "a_png.png",
        "pier.v1.png",
        "pier.v2.png",
        "sub/a.png",
        "sub__a.png",
        "B.png",
        "b.PNG",
    ]
    paths = [tmp_path / n for n in names]
    out = output_names(paths, tmp_path)
    assert len({n.casefold() for n in out}) == len(out)  # distinct also on case-folding file systems
    assert out[4:7] == ["pier.v1", "pier.v2", "sub/a"]
    assert out[2] == "a_2" and out[0] != "a_2" and out[1] != "a_2"
    assert out[3] not in out[:3]


def test_colliding_folder_gives_every_photo_its_own_files(compose_config, monkeypatch, tmp_path):
    from tests.test_predict import DarkIsDefect

    folder = tmp_path / "photos"
    folder.mkdir()
    shades = {"a.jpg": 10, "a.png": 20, "a_2.png": 30, "pier.v1.png": 40, "pier.v2.png": 50}
    for name, shade in shades.items():
        photo = dark_square_photo(40, 48, shade)
        Image.fromarray(photo).save(folder / name, quality=100) if name.endswith("jpg") else Image.fromarray(
            photo
        ).save(folder / name)
    monkeypatch.setattr("defectseg.predict.load_segmenter", lambda *args, **kwargs: DarkIsDefect())
    cfg = compose_config("predict", [f"input={folder}", "save.probability=png", "progress=false"])
    summary = run_predict(cfg)
    out = Path(summary["output_dir"])

    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == len(shades) and all(r["status"] == "ok" for r in rows)
    for kind in ("mask", "overlay", "probability"):
        files = [r[kind] for r in rows]
        assert len(set(files)) == len(files), f"two photos share a {kind} file: {files}"
        assert all((out / f).is_file() for f in files)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert len([f for f in written if f.startswith("probabilities/")]) == len(shades)
    assert {r["probability"] for r in rows if "pier" in r["image"]} == {
        "probabilities/pier.v1.png",
        "probabilities/pier.v2.png",
    }
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["complete"] is True and [Path(r["image"]).name for r in saved["images"]] == sorted(shades)
    for row in rows:  # each file is the photo's own: the probability PNG reads back its photo's dark square
        photo = np.asarray(Image.open(row["image"]).convert("RGB"))
        probability = np.asarray(Image.open(out / row["probability"]))
        assert probability.shape == photo.shape[:2] and probability[12, 14] == 255 and probability[0, 0] == 0


# A stand-in model in a real `python -m defectseg.predict` process: photos after the second block until signalled.
SCRIPT = """
import os, runpy, sys, time
import numpy as np
import defectseg.inference.runtime as runtime
from defectseg.inference.runtime import ModelInfo

class Gated:
    info = ModelInfo(source="stand-in", runtime="numpy", threshold=0.5, tile_size=64, multiple=16)
    calls = 0

    def __call__(self, images):
        Gated.calls += 1
        if os.environ.get("BLOCK_AFTER") and Gated.calls > int(os.environ["BLOCK_AFTER"]):
            while True:
                time.sleep(0.05)
        return (images.mean(axis=1, keepdims=True) < 0.3).astype(np.float32)

runtime.load_segmenter = lambda *args, **kwargs: Gated()
runpy.run_module("defectseg.predict", run_name="__main__")
"""
PHOTOS = 6


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(PHOTOS):
        Image.fromarray(dark_square_photo(40, 56, shade=10 + index)).save(folder / f"p{index}.png")
    return folder


def start_predict(folder: Path, out: Path, block_after: int | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    env.pop("BLOCK_AFTER", None)
    if block_after is not None:
        env["BLOCK_AFTER"] = str(block_after)
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, f"input={folder}", f"output_dir={out}", "progress=false"],
        cwd=out.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_done(process: subprocess.Popen, summary: Path, done: int) -> None:
    """Until the summary lists ``done`` photos (the process then blocks in the next one), or the process ends."""
    while process.poll() is None:
        try:
            if json.loads(summary.read_text())["done"] >= done:
                return
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"predict ended before {done} photos were done:\n{process.stderr.read()}")


def assert_valid_partial_summary(out: Path, done: int) -> None:
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["complete"] is False and saved["done"] == done and saved["photos"] == PHOTOS
    assert [Path(r["image"]).name for r in saved["images"]] == [f"p{i}.png" for i in range(done)]
    for record in saved["images"]:
        assert (out / record["mask"]).is_file() and (out / record["overlay"]).is_file()
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [Path(r["image"]).name for r in rows] == [f"p{i}.png" for i in range(done)]


def stray_temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.tmp")]


@pytest.mark.parametrize(
    ("signal_number", "exit_code", "said"),
    [(signal.SIGTERM, 128 + signal.SIGTERM, "SIGTERM"), (signal.SIGINT, 128 + signal.SIGINT, "Ctrl-C")],
)
def test_a_signal_mid_folder_keeps_a_valid_summary_and_says_so(photo_folder, tmp_path, signal_number, exit_code, said):
    out = tmp_path / "predicted"
    process = start_predict(photo_folder, out, block_after=2)
    wait_for_done(process, out / "predictions.json", 2)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stderr
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped:")]
    assert stopped == [
        f"stopped: {said} after 2 of {PHOTOS} photo(s): their files and the summary (predictions.json, "
        f"complete=false) are in {out}; run the same command again to continue"
    ]
    assert_valid_partial_summary(out, 2)
    assert stray_temporaries(out) == []
    # output_dir= holds every file of the run, Hydra's included
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "predict.log").is_file()
    assert not (tmp_path / "outputs").exists()


def test_a_signal_while_a_photo_is_decoded_stops_the_run_instead_of_failing_the_photo(photo_folder, monkeypatch):
    """The reader turns decoder errors into DataError; the stop signal must pass through it (seen once in a test
    run under load: the photo was recorded as unreadable, the run went on and hung in the next photo)."""

    def interrupted(*_args, **_kwargs):
        raise PredictStopped(signal.SIGTERM)

    monkeypatch.setattr(Image, "open", interrupted)
    with pytest.raises(PredictStopped):
        read_image(photo_folder / "p0.png")


def test_sigkill_mid_folder_loses_nothing_and_the_rerun_continues(photo_folder, tmp_path):
    out = tmp_path / "predicted"
    process = start_predict(photo_folder, out, block_after=3)
    wait_for_done(process, out / "predictions.json", 3)
    process.kill()
    process.communicate(timeout=300)
    assert_valid_partial_summary(out, 3)
    first_masks = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    # what a kill inside a write leaves behind
    (out / ".predictions.json.k1ll3d00.tmp").write_text("{half")
    (out / "masks" / ".p3.png.k1ll3d00.tmp").write_bytes(b"\x89PNG half")

    rerun = start_predict(photo_folder, out, block_after=None)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["complete"] is True and saved["done"] == PHOTOS
    assert [Path(r["image"]).name for r in saved["images"]] == [f"p{i}.png" for i in range(PHOTOS)]
    assert stray_temporaries(out) == []
    # the three photos done before the kill were taken over, not predicted again
    assert {name: (out / "masks" / name).stat().st_mtime_ns for name in first_masks} == first_masks
    assert "3 already done here" in (out / "predict.log").read_text()


def test_a_rerun_with_other_settings_is_refused_and_changes_nothing(photo_folder, tmp_path):
    out = tmp_path / "predicted"
    first = start_predict(photo_folder, out, block_after=None)
    assert first.wait(timeout=300) == 0
    before = (out / "predictions.json").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    other = subprocess.run(
        [sys.executable, "-c", SCRIPT, f"input={photo_folder}", f"output_dir={out}", "threshold=0.3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "model.threshold" in other.stderr and "output_dir=" in other.stderr
    assert (out / "predictions.json").read_bytes() == before


def test_output_dir_naming_a_file_is_one_line(photo_folder, tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, f"input={photo_folder}", f"output_dir={target}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: output_dir={target} is a file; give a directory (an existing one or a new one) for the outputs"
    ]
    assert target.read_text() == "keep me"


def test_outputs_inside_the_input_folder_are_never_taken_for_photos(compose_config, monkeypatch, photo_folder):
    from tests.test_predict import DarkIsDefect

    monkeypatch.setattr("defectseg.predict.load_segmenter", lambda *args, **kwargs: DarkIsDefect())
    out = photo_folder / "inspection"
    overrides = [f"input={photo_folder}", "recursive=true", f"output_dir={out}", "progress=false"]
    first = run_predict(compose_config("predict", overrides))
    again = run_predict(compose_config("predict", overrides))  # previews/ and masks/ now lie inside input=
    assert first["images"] == again["images"] == PHOTOS
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["complete"] is True and saved["photos"] == PHOTOS
