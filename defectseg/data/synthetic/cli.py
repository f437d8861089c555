"""Command line: ``python -m defectseg.data.synthetic {cls,seg} ROOT [--n N] ...`` (idempotent)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from defectseg.data.synthetic.publish import ensure_crack_classification, ensure_steel_segmentation, read_manifest
from defectseg.data.synthetic.steel import CONDITIONS, DEFECT_SETS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m defectseg.data.synthetic",
        description="Generate the embedded synthetic data sets "
        "(idempotent: nothing is redone if ROOT already matches).",
    )
    parser.add_argument(
        "kind",
        choices=("cls", "seg"),
        help="cls: concrete crack classification (stage 1); seg: steel defect segmentation (stage 2)",
    )
    parser.add_argument("root", type=Path, help="output folder")
    parser.add_argument(
        "--n", type=int, default=None, help="images per class (cls, default 300) or images (seg, default 175)"
    )
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 227 for cls, 256 for seg)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--conditions",
        choices=CONDITIONS,
        default="clean",
        help="seg only: clean (default) or field (look-alike marks, faint defects, poor light)",
    )
    parser.add_argument(
        "--defect-set",
        choices=DEFECT_SETS,
        default="mixed",
        help="seg only: mixed (default: every defect kind) or one kind alone, as the paper's 'single defect' set",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="worker processes; 0 (default): one per CPU for sets of 256+ images"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cls = args.kind == "cls"
    n = args.n if args.n is not None else (300 if cls else 175)
    size = args.size if args.size is not None else (227 if cls else 256)
    common = {"size": size, "seed": args.seed, "progress": not args.no_progress, "workers": args.workers}
    try:
        if cls:
            root = ensure_crack_classification(args.root, n_per_class=n, **common)
        else:
            root = ensure_steel_segmentation(
                args.root, n_images=n, conditions=args.conditions, defect_set=args.defect_set, **common
            )
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{root} ({read_manifest(root)['count']} images)")
    return 0
