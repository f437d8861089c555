"""How much Dice tiled inference costs: a fine-tune run's test photos predicted whole and in smaller tiles.

    python docs/results/predict_tiling_check.py outputs/finetune/latest --scale 0.5 --tiles 64 96

Each test photo of the run's split.json is predicted as predict does (same threshold, same
blending), once as a single tile and once per tile size given, and scored against its mask
with the per-photo Dice of training (an empty truth and an empty prediction score 1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from defectseg.data.readers import read_image, read_mask
from defectseg.inference.runtime import load_segmenter
from defectseg.inference.tiling import probability_map


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (predicted & truth).sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--tiles", type=int, nargs="+", default=[64])
    args = parser.parse_args()
    segmenter = load_segmenter(args.run_dir, "auto")
    threshold, multiple = segmenter.info.threshold, segmenter.info.multiple
    split = json.loads((args.run_dir / "split.json").read_text())
    images = [Path(p) for p in split["test"]]
    masks = [next((Path(split["root"]) / "masks").glob(f"{p.stem}.*")) for p in images]  # folder_seg layout, no mask_suffix
    pairs = [(read_image(i), read_mask(m).astype(bool)) for i, m in zip(images, masks)]
    whole = max(max(image.shape[:2]) for image, _ in pairs) * args.scale
    for tile in [int(np.ceil(whole / multiple) * multiple), *args.tiles]:
        scores = [dice(probability_map(image, segmenter, tile_size=tile, overlap=args.overlap, multiple=multiple, scale=args.scale) > threshold, truth) for image, truth in pairs]
        print(f"{len(pairs)} test photos, scale {args.scale}, tiles {tile} px, overlap {args.overlap}, threshold {threshold}: Dice {np.mean(scores):.3f}")


if __name__ == "__main__":
    main()
