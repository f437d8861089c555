"""report.html as a person sees it: rendered in headless Chromium (skipped where no Chromium is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectseg.predict import run_predict

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no Chromium binary ({', '.join(CHROMIUM_NAMES)}) on PATH: apt-get install -y chromium")


def run_chromium(*args: str) -> subprocess.CompletedProcess:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


class DarkIsDefect:
    from defectseg.inference.runtime import ModelInfo

    info = ModelInfo(source="stand-in", runtime="numpy", threshold=0.5, tile_size=64, multiple=16)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return (images.mean(axis=1, keepdims=True) < 0.3).astype(np.float32)


@pytest.fixture
def report(compose_config, monkeypatch, tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, boxes in (("pier.v1", [(10, 60, 20, 30), (70, 75, 10, 150)]), ("pier.v2", [(40, 90, 100, 140)])):
        image = rng.integers(150, 230, (120, 180, 3), dtype=np.uint8)
        for y0, y1, x0, x1 in boxes:
            image[y0:y1, x0:x1] = 15
        Image.fromarray(image).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"not a photo")
    monkeypatch.setattr("defectseg.predict.load_segmenter", lambda *args, **kwargs: DarkIsDefect())
    cfg = compose_config("predict", [f"input={folder}", "mm_per_px=0.2", "progress=false"])
    summary = run_predict(cfg)
    out = Path(summary["output_dir"])
    return out / "report.html", json.loads((out / "predictions.json").read_text())


def test_report_is_self_contained(report):
    path, saved = report
    text = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "report.html must not load anything online"
    assert "<link" not in text and text.count("data:image/jpeg;base64,") == 4  # photo + overlay of 2 photos
    assert "broken.png" in text and "could not be read" in text
    assert saved["complete"] is True


def test_report_renders_in_chromium_with_its_rows_and_images(report, tmp_path):
    path, saved = report
    dom = run_chromium("--virtual-time-budget=10000", "--dump-dom", path.as_uri()).stdout
    defects = sum(len(r["components"]) for r in saved["images"])
    assert defects == 3 and dom.count('class="defect-row"') == defects
    assert 'data-images-total="4"' in dom and 'data-images-loaded="4"' in dom  # every image decoded
    assert ">pier.v1<" in dom and ">pier.v2<" in dom and "mm²" in dom

    screenshot = tmp_path / "report.png"
    run_chromium("--window-size=1200,1800", f"--screenshot={screenshot}", path.as_uri())
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1800, 1200)
    assert (pixels < 200).mean() > 0.05 and pixels.std() > 20  # text, tables and photos, not a blank page
    # the photos themselves: rows of the page whose pixels vary like the noise photos do
    assert (pixels.std(axis=1) > 25).sum() > 100


def test_defect_table_sorts_by_a_clicked_column_in_chromium(report, tmp_path):
    path, _ = report
    clicking = tmp_path / "clicked.html"
    script = (
        "<script>window.addEventListener('load', function () {"
        "var th = Array.from(document.querySelectorAll('th')).filter(function (h) {"
        "return h.textContent === 'area (px)' && h.closest('table').querySelector('.defect-row'); })[0];"
        "th.click(); th.click(); });</script></body>"
    )
    clicking.write_text(path.read_text().replace("</body>", script))
    dom = run_chromium("--virtual-time-budget=10000", "--dump-dom", clicking.as_uri()).stdout

    def areas(page: str) -> list[int]:
        rows = re.findall(r'<tr class="defect-row">(.*?)</tr>', page, flags=re.S)
        return [int(re.findall(r'data-value="([^"]*)"', row)[1]) for row in rows]

    written = areas(path.read_text())
    assert len(written) == 3 and written != sorted(written, reverse=True)  # per photo, largest first within each
    assert areas(dom) == sorted(written, reverse=True)  # two clicks on "area (px)": largest first overall
