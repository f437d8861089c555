"""Does bf16 mixed precision cost Dice? Stage-2 runs in bf16-mixed and in 32-true, everything else
equal (same seeds, data, split, epochs), compared per seed and per test image.

    python benchmarks/precision_dice.py                            # experiment=quick, freeze=scratch, 4 epochs, seed 0
    python benchmarks/precision_dice.py --epochs 16 --seeds 0,1,2     # the full check: the quick protocol, 3 seeds
    python benchmarks/precision_dice.py --epochs 1 --set trainer.limit_train_batches=2   # a smoke test

Each run is `python -m defectseg.finetune ... trainer.precision=P` in its own process, under
``outputs/precision_dice/<date>/<precision>_seed<S>/``. Verdict: bf16 is "within noise" when the
paired bootstrap 95 % CI of the per-image test Dice difference (bf16 - fp32, averaged over seeds)
contains 0. Writes ``benchmarks/results/precision_dice_<date>_<device>.json`` and one line in
``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.results_log import append_result_line, cpu_isa, isa_text, shown, write_result  # noqa: E402
from defectseg.report import paired_bootstrap_ci  # noqa: E402

PRECISIONS = ("bf16-mixed", "32-true")


def run_one(precision: str, seed: int, args: argparse.Namespace, sweep_dir: Path) -> dict[str, Any]:
    run_dir = sweep_dir / f"{precision}_seed{seed}"
    command = [
        sys.executable,
        "-m",
        "defectseg.finetune",
        f"experiment={args.experiment}",
        f"freeze={args.freeze}",
        f"seed={seed}",
        f"trainer.precision={precision}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *args.set,
    ]
    print("[precision]", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    return json.loads((run_dir / "metrics.json").read_text())


def compare(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-seed differences and the per-image paired bootstrap CI (bf16 - fp32)."""
    bf16, fp32 = runs["bf16-mixed"], runs["32-true"]
    per_seed = [b["test_dice"] - f["test_dice"] for b, f in zip(bf16, fp32)]
    per_image = np.mean(
        [np.subtract(b["test_dice_per_image"], f["test_dice_per_image"]) for b, f in zip(bf16, fp32)], axis=0
    )
    low, high = paired_bootstrap_ci(per_image)
    summary: dict[str, Any] = {}
    for precision, group in runs.items():
        test = [r["test_dice"] for r in group]
        summary[precision] = {
            "test_dice": test,
            "best_val_dice": [r["best_val_dice"] for r in group],
            "test_dice_mean": float(np.mean(test)),
            "test_dice_std_over_seeds": float(np.std(test, ddof=1)) if len(test) > 1 else None,
            "train_images_per_second": [r["train_images_per_second"] for r in group],
        }
    return {
        **summary,
        "test_dice_difference_per_seed": per_seed,
        "test_dice_difference_mean": float(np.mean(per_seed)),
        "per_image_difference_ci95": [low, high],
        "within_noise": bool(low <= 0.0 <= high),
    }


def record(result: dict[str, Any]) -> Path:
    path = write_result("precision_dice", result)
    c = result["comparison"]
    overrides = " " + " ".join(result["overrides"]) if result["overrides"] else ""
    low, high = c["per_image_difference_ci95"]
    bf16, fp32 = c["bf16-mixed"], c["32-true"]
    note = f" · {result['note']}" if result["note"] else ""
    isa = isa_text(result.get("cpu_isa") or cpu_isa())
    line = (
        f"- {result['date'][:16].replace('T', ' ')} · {result['machine']} · {isa} · "
        f"precision Dice, experiment={result['experiment']} freeze={result['freeze']} "
        f"{result['epochs']} epochs, seeds {result['seeds']}{overrides} · "
        f"test Dice bf16-mixed {bf16['test_dice_mean']:.4f} vs 32-true {fp32['test_dice_mean']:.4f} "
        f"(difference {c['test_dice_difference_mean']:+.4f}; per-image 95 % CI [{low:+.4f}, {high:+.4f}]: "
        f"{'within noise' if c['within_noise'] else 'NOT within noise'}) · "
        f"train img/s bf16 {np.mean(bf16['train_images_per_second']):.1f} "
        f"vs fp32 {np.mean(fp32['train_images_per_second']):.1f}{note} · `{shown(path)}`"
    )
    append_result_line(line)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="quick")
    parser.add_argument(
        "--freeze",
        default="scratch",
        help="scratch needs no stage-1 encoder; encoder needs --set pretrained_encoder=DIR or outputs/pretrain/latest",
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", default="0", type=lambda s: [int(x) for x in s.split(",") if x])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override for every run (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where the runs go (default outputs/precision_dice/<date>)"
    )
    parser.add_argument("--note", default="")
    parser.add_argument("--no-record", dest="record", action="store_false")
    args = parser.parse_args(argv)
    if not args.seeds or args.epochs < 1:
        parser.error("need at least one seed and one epoch")

    from defectseg.training.runner import device_name

    date = datetime.now().isoformat(timespec="seconds")
    sweep_dir = args.out or REPO / "outputs" / "precision_dice" / date.replace(":", "-")
    runs = {precision: [run_one(precision, seed, args, sweep_dir) for seed in args.seeds] for precision in PRECISIONS}
    result = {
        "date": date,
        "machine": device_name("auto"),
        "cpu_isa": cpu_isa(),
        "experiment": args.experiment,
        "freeze": args.freeze,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "overrides": args.set,
        "note": args.note,
        "runs_dir": str(sweep_dir),
        "comparison": compare(runs),
    }
    print(json.dumps(result, indent=2))
    if args.record:
        print(f"[precision] written {record(result)} and a line in benchmarks/results.md")


if __name__ == "__main__":
    main()
