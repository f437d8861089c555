"""Draw docs/results/transfer_summary.png and print its table: full fine-tuning's gain over scratch on the three real
sets at every label budget measured, from the 1728-step classification stage 1 (filled markers) and from a
segmentation stage 1 on the other crack set's masks (open markers), read from the reports' report.csv files.

python docs/results/transfer_summary.py
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from defectseg.report.statistics import VERDICT_GAIN, VERDICT_LOSS, scratch_reference

HERE = Path(__file__).parent
#: (set, report.csv relative to docs/results, the stage-1 folder its transfer rows name, the budget when a report has
#: several). The bf16 stage 1 and the fp32 one were both trained for 1728 steps by `experiment=real`; the fp32 one is
#: named stage1_real. stage1_seg_dc / stage1_seg_cf: the U-Net segmenting DeepCrack's / CrackForest's masks
#: (870 / 880 steps); which objective a stage 1 had is read from the report's pretrain_task column.
CELLS = [
    ("magnetic_tile", "transfer_2026-12-07/magnetic_tile_25_50_labels/report.csv", "stage1_real", 25),
    ("magnetic_tile", "transfer_2026-12-07/magnetic_tile_25_50_labels/report.csv", "stage1_real", 50),
    ("magnetic_tile", "transfer_2026-12-03/magnetic_tile/report.csv", "stage1_real_1728", None),
    ("CrackForest", "transfer_2026-12-03/crackforest_25_labels/report.csv", "stage1_real", None),
    ("CrackForest", "transfer_2026-12-07/crackforest_50_labels/report.csv", "stage1_real", None),
    ("CrackForest", "transfer_2026-12-07/crackforest_25_50_82_labels/report.csv", "stage1_real", 82),
    ("DeepCrack", "transfer_2026-12-07/deepcrack_25_labels/report.csv", "stage1_real", None),
    ("DeepCrack", "transfer_2026-12-07/deepcrack_50_labels/report.csv", "stage1_real", None),
    ("DeepCrack", "transfer_2026-12-03/deepcrack/report.csv", "stage1_real_1728", None),
    ("CrackForest", "transfer_2026-12-07/crackforest_25_50_labels/report.csv", "stage1_seg_dc", 25),
    ("CrackForest", "transfer_2026-12-07/crackforest_50_labels_segmentation_stage1/report.csv", "stage1_seg_dc", None),
    ("DeepCrack", "transfer_2026-12-07/deepcrack_25_labels_segmentation_stage1/report.csv", "stage1_seg_cf", None),
    ("DeepCrack", "transfer_2026-12-07/deepcrack_50_labels_segmentation_stage1/report.csv", "stage1_seg_cf", None),
    ("CrackForest", "transfer_2026-12-07/crackforest_25_50_82_labels/report.csv", "stage1_seg_dc", 82),
]
COLOURS = {"magnetic_tile": "tab:orange", "CrackForest": "tab:green", "DeepCrack": "tab:blue"}
#: stage-1 objective -> (extra x nudge so its points sit beside the classifier's, legend suffix, marker style)
STAGE1_MARKERS = {
    "classification": (0.0, "", {}),
    "segmentation": (0.015, ", segmentation stage 1", {"mfc": "white", "ls": "--"}),
}


def read_cell(name: str, report: str, encoder: str, labels: int | None) -> dict | None:
    """Scratch and full fine-tuning of one report at one budget (None while the report is not there yet)."""
    path = HERE / report
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    full = next(
        r
        for r in rows
        if r["transfer"] == "full_finetune"
        and r["encoder_from"] == encoder
        and labels in (None, int(r["train_images"]))
    )
    scratch = scratch_reference(full, rows)  # the row the report measured full's gain against
    return {
        "set": name,
        "labels": int(full["train_images"]),
        "scratch": float(scratch["test_dice_mean"]),
        "full": float(full["test_dice_mean"]),
        "gain": 100 * float(full["gain_abs"]),
        "low": 100 * float(full["boot_ci_low"]),
        "high": 100 * float(full["boot_ci_high"]),
        "significant": full["verdict"] in (VERDICT_GAIN, VERDICT_LOSS),
        "precision": full["precision"],
        "stage1": full["pretrain_task"],
        "report": "results/" + report.replace("report.csv", "report.md"),  # as linked from docs/transfer_measured.md
    }


def points(value: float) -> str:
    """Signed, one decimal, and no "-0.0"."""
    return "0.0" if round(value, 1) == 0 else f"{value:+.1f}".replace("-", "−")


def main() -> None:
    cells = [c for c in (read_cell(*cell) for cell in CELLS) if c is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(8, color="grey", ls="--", lw=0.8)
    ax.text(26, 8.3, "paper's margin (+8)", color="grey", fontsize=8)
    for shift, (name, colour) in enumerate(COLOURS.items()):
        for stage1, (nudge, suffix, style) in STAGE1_MARKERS.items():
            mine = sorted((c for c in cells if c["set"] == name and c["stage1"] == stage1), key=lambda c: c["labels"])
            if not mine:
                continue
            xs = [c["labels"] * (1 + 0.03 * (shift - 1) + nudge) for c in mine]
            ys = [c["gain"] for c in mine]
            errs = [[c["gain"] - c["low"] for c in mine], [c["high"] - c["gain"] for c in mine]]
            ax.errorbar(xs, ys, yerr=errs, color=colour, marker="o", capsize=3, label=name + suffix, **style)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks([25, 50, 82, 175], labels=["25", "50", "82", "175"])
    ax.set_xlabel("labelled training photos")
    ax.set_ylabel("test Dice gain over scratch (points)")
    ax.set_title("Full fine-tuning vs scratch, 3 seeds, 95 % CI (filled: classification stage 1)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = HERE / "transfer_summary.png"
    fig.savefig(out, dpi=120)
    print(out)
    print("| set | labels | stage 1 | scratch | full fine-tuning | gain [95 % CI] | stage-1 precision | report |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cells:
        gain = f"{points(c['gain'])} [{points(c['low'])}, {points(c['high'])}]"
        if c["significant"]:
            gain = f"**{gain}**"
        cell = f"{c['set']} | {c['labels']} | {c['stage1']}"
        dice = f"{c['scratch']:.3f} | {c['full']:.3f}"
        print(f"| {cell} | {dice} | {gain} | {c['precision']} | [report]({c['report']}) |")


if __name__ == "__main__":
    main()
