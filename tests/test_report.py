"""Tests of the sweep report on hand-made sweep directories with known numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import stats

from defectseg import report
from defectseg.report import (
    VERDICT_GAIN,
    VERDICT_NS,
    aggregate,
    collect_runs,
    expected_jobs,
    main,
    paired_bootstrap_ci,
    write_report,
)
from tests.helpers import finetune_metrics, write_job, write_multirun

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_sweep(
    root: Path,
    values: dict[str, list[float]],
    *,
    per_image: dict[str, list[list[float]]] | None = None,
    crash: tuple[str, ...] = (),
    train_images: int = 175,
) -> Path:
    """Sweep freeze=<modes> seed=0..n-1 with given test Dice; jobs numbered like Hydra."""
    modes = list(values)
    n_seeds = len(next(iter(values.values())))
    write_multirun(root, [f"freeze={','.join(modes)}", f"seed={','.join(map(str, range(n_seeds)))}"])
    job = 0
    for mode in modes:
        for seed, test in enumerate(values[mode]):
            pi = per_image[mode][seed] if per_image else None
            m = (
                None
                if f"{mode}:{seed}" in crash
                else finetune_metrics(mode, seed, test, per_image=pi, train_images=train_images)
            )
            write_job(root, str(job), [f"freeze={mode}", f"seed={seed}"], m)
            job += 1
    return root


def row_of(rows: list[dict[str, Any]], freeze: str, train_images: int | None = None) -> dict[str, Any]:
    found = [r for r in rows if r["freeze"] == freeze and (train_images is None or r["train_images"] == train_images)]
    assert len(found) == 1, found
    return found[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- statistics


def test_mean_std_and_gain_match_hand_computation(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "s", {"scratch": [0.70, 0.72, 0.74], "encoder": [0.78, 0.81, 0.78]})
    runs, missing = collect_runs(sweep)
    assert len(runs) == 6 and missing == []
    rows = aggregate(runs)
    assert [r["freeze"] for r in rows] == ["scratch", "encoder"]  # scratch first, the reference
    s, e = row_of(rows, "scratch"), row_of(rows, "encoder")
    assert s["n_seeds"] == 3 and s["seeds"] == [0, 1, 2]
    assert s["test_dice_mean"] == pytest.approx(0.72, abs=1e-12)
    assert s["test_dice_std"] == pytest.approx(0.02, abs=1e-12)  # sample std, ddof=1
    assert e["test_dice_mean"] == pytest.approx(0.79, abs=1e-12)
    assert e["test_dice_std"] == pytest.approx(math.sqrt(0.0003), abs=1e-12)
    assert e["val_dice_mean"] == pytest.approx(0.81, abs=1e-12)
    assert e["gain_abs"] == pytest.approx(0.07, abs=1e-12)
    assert e["gain_pct"] == pytest.approx(0.07 / 0.72 * 100, abs=1e-9)
    assert s["gain_abs"] is None and s["verdict"] is None
    assert e["trainable_params"] == 3134433 and s["trainable_params"] == 7846657
    assert e["mode"] == "transfer-frozen encoder" and s["mode"] == "scratch"

    out = write_report(sweep)
    csv_rows = read_csv(out["paths"]["report.csv"])
    enc = next(r for r in csv_rows if r["freeze"] == "encoder")
    assert float(enc["test_dice_mean"]) == pytest.approx(0.79, abs=1e-12)
    assert float(enc["gain_pct"]) == pytest.approx(9.7222222, abs=1e-6)
    md = out["paths"]["report.md"].read_text()
    assert "0.790 ± 0.017" in md and "+0.070 (+9.7%)" in md
    assert "cuda: NVIDIA H100" in md and "table1" in md


def test_single_seed_has_blank_std(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "s", {"scratch": [0.70], "none": [0.75]})
    out = write_report(sweep)
    row = row_of(out["rows"], "none")
    assert row["test_dice_std"] is None and row["ttest_p"] is None and row["n_paired"] == 1
    assert row["mode"] == "transfer-full fine-tuning"
    csv_row = next(r for r in read_csv(out["paths"]["report.csv"]) if r["freeze"] == "none")
    assert csv_row["test_dice_std"] == "" and csv_row["ttest_p"] == ""
    assert "0.750 ± –" in out["markdown"]


def test_paired_ttest_matches_scipy_and_pairs_by_seed(tmp_path: Path) -> None:
    scratch = [0.70, 0.66, 0.74, 0.69]
    transfer = [0.79, 0.73, 0.80, 0.80]
    sweep = make_sweep(tmp_path / "s", {"scratch": scratch, "encoder": transfer})
    rows = aggregate(collect_runs(sweep)[0])
    expected = stats.ttest_rel(transfer, scratch).pvalue
    e = row_of(rows, "encoder")
    assert e["n_paired"] == 4
    assert e["ttest_p"] == pytest.approx(expected, rel=1e-12)
    # Pairing is by seed, not by order: an unpaired test would give a different p.
    assert e["ttest_p"] != pytest.approx(stats.ttest_ind(transfer, scratch).pvalue, rel=1e-3)


def test_ttest_uses_only_seeds_present_in_both(tmp_path: Path) -> None:
    sweep = make_sweep(
        tmp_path / "s", {"scratch": [0.70, 0.66, 0.74], "encoder": [0.79, 0.73, 0.80]}, crash=("encoder:1",)
    )
    e = row_of(aggregate(collect_runs(sweep)[0]), "encoder")
    assert e["n_paired"] == 2
    assert e["ttest_p"] == pytest.approx(stats.ttest_rel([0.79, 0.80], [0.70, 0.74]).pvalue, rel=1e-12)


def test_bootstrap_clear_gain_is_real(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 0.8, size=20)
    scratch_pi = [list(base + rng.normal(0, 0.01, 20)) for _ in range(3)]
    transfer_pi = [list(base + 0.1 + rng.normal(0, 0.01, 20)) for _ in range(3)]
    sweep = make_sweep(
        tmp_path / "s",
        {"scratch": [float(np.mean(v)) for v in scratch_pi], "encoder": [float(np.mean(v)) for v in transfer_pi]},
        per_image={"scratch": scratch_pi, "encoder": transfer_pi},
    )
    e = row_of(aggregate(collect_runs(sweep)[0]), "encoder")
    assert e["verdict"] == VERDICT_GAIN
    assert e["boot_n_images"] == 20
    assert 0.05 < e["boot_ci_low"] < 0.1 < e["boot_ci_high"] < 0.15
    # Averaged over seeds first, then resampled: the CI must match a direct computation.
    diff = np.mean(transfer_pi, axis=0) - np.mean(scratch_pi, axis=0)
    assert (e["boot_ci_low"], e["boot_ci_high"]) == paired_bootstrap_ci(diff)


def test_bootstrap_no_gain_is_not_significant(tmp_path: Path) -> None:
    base = [0.5, 0.6, 0.7, 0.8, 0.55, 0.65, 0.75, 0.85]
    swing = [0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.1, -0.1]  # mean difference exactly 0
    scratch_pi = [base, base]
    transfer_pi = [[b + s for b, s in zip(base, swing)]] * 2
    sweep = make_sweep(
        tmp_path / "s",
        {"scratch": [0.68, 0.68], "encoder": [0.68, 0.68]},
        per_image={"scratch": scratch_pi, "encoder": transfer_pi},
    )
    e = row_of(aggregate(collect_runs(sweep)[0]), "encoder")
    assert e["verdict"] == VERDICT_NS
    assert e["boot_ci_low"] < 0 < e["boot_ci_high"]
    assert e["ttest_p"] is None  # identical paired differences: t undefined, not a fake p


def test_paired_bootstrap_ci_deterministic_and_exact_on_constant() -> None:
    rng = np.random.default_rng(0)
    diff = rng.normal(0.02, 0.05, size=50)
    assert paired_bootstrap_ci(diff) == paired_bootstrap_ci(diff)
    low, high = paired_bootstrap_ci(diff)
    assert low < float(np.mean(diff)) < high
    assert paired_bootstrap_ci(np.full(7, 0.125)) == (0.125, 0.125)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([])


# --------------------------------------------------------------------------- missing jobs


def test_crashed_job_is_reported_missing_with_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep(tmp_path / "s", {"scratch": [0.70, 0.72], "encoder": [0.78, 0.80]}, crash=("encoder:1",))
    runs, missing = collect_runs(sweep)
    assert len(runs) == 3
    assert len(missing) == 1
    assert missing[0]["job"] == "3"
    assert missing[0]["overrides"] == ["freeze=encoder", "seed=1"]
    assert "metrics.json" in missing[0]["reason"]

    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "MISSING" in out and "freeze=encoder seed=1" in out
    assert "| transfer-frozen encoder |" in out
    md = (sweep / "report.md").read_text()
    section = md.split("## MISSING jobs", 1)[1]
    assert "`3` freeze=encoder seed=1" in section
    assert "3 finished, 1 MISSING" in md


def test_corrupt_metrics_is_missing_not_fatal(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "s", {"scratch": [0.70, 0.72], "encoder": [0.78, 0.80]})
    (sweep / "2" / "metrics.json").write_text('{"test_dice": 0.7')  # truncated write
    runs, missing = collect_runs(sweep)
    assert len(runs) == 3
    assert [m["job"] for m in missing] == ["2"] and "unreadable" in missing[0]["reason"]


def test_expected_count_from_multirun_yaml(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_multirun(root, ["freeze=scratch,encoder,none", "seed=0,1,2", "trainer.max_epochs=100"])
    assert expected_jobs(root)[0] == 9
    # Only 6 of 9 job dirs were ever created (e.g. the launcher died).
    job = 0
    for mode in ("scratch", "encoder"):
        for seed in range(3):
            write_job(
                root,
                str(job),
                [f"freeze={mode}", f"seed={seed}", "trainer.max_epochs=100"],
                finetune_metrics(mode, seed, 0.7),
            )
            job += 1
    runs, missing = collect_runs(root)
    assert len(runs) == 6
    assert len(missing) == 3
    assert all(m["job_dir"] is None and "never launched" in m["reason"] for m in missing)
    assert sorted(m["overrides"][:2] for m in missing) == [["freeze=none", f"seed={s}"] for s in range(3)]
    result = write_report(root)
    assert "6 finished, 3 MISSING" in result["markdown"]


def test_expected_count_shortfall_when_combos_unmatchable(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_multirun(root, ["freeze=scratch,encoder", "seed=0,1"])
    # Job overrides written in a form that does not match the sweep axes: count only.
    for job in range(3):
        write_job(root, str(job), [f"run={job}"], finetune_metrics("scratch", job, 0.7))
    _, missing = collect_runs(root)
    assert len(missing) == 1 and missing[0]["count"] == 1
    assert "1 of 4 expected jobs" in missing[0]["reason"]


def test_expected_jobs_expands_hydra_sweep_functions(tmp_path: Path) -> None:
    assert expected_jobs(tmp_path) == (None, [])  # no multirun.yaml
    write_multirun(tmp_path / "a", ["seed=range(0,3)", "freeze=choice(scratch,encoder)"])
    n, combos = expected_jobs(tmp_path / "a")
    assert n == 6 and {(c["seed"], c["freeze"]) for c in combos} == {
        (s, f) for s in "012" for f in ("scratch", "encoder")
    }
    write_multirun(tmp_path / "b", ["model.channels=[32,64],[16,32]", "seed=0,1,2"])
    assert expected_jobs(tmp_path / "b")[0] == 6
    write_multirun(tmp_path / "c", ["dataset=glob(*)", "seed=0,1"])  # glob() needs the config directory: unknown
    assert expected_jobs(tmp_path / "c") == (None, [])


def test_sweep_launched_with_range_and_choice_is_reported_by_recorded_values(tmp_path: Path) -> None:
    """Axes written as range()/choice() count and pair like a,b lists; rows come from what each run recorded."""
    root = tmp_path / "s"
    write_multirun(
        root, ["freeze=choice(scratch,encoder)", "seed=range(0,3)", "+dataset.max_train_images=range(10,31,20)"]
    )
    job = 0
    for size in (10, 30):
        for mode in ("scratch", "encoder"):
            for seed in range(3):
                if (mode, seed, size) == ("encoder", 2, 30):
                    continue  # the launcher died before the last job
                test = 0.5 + (0.2 if mode == "encoder" else 0.0) + size / 1000 + 0.01 * seed
                overrides = [f"freeze={mode}", f"seed={seed}", f"+dataset.max_train_images={size}"]
                write_job(root, str(job), overrides, finetune_metrics(mode, seed, test, train_images=size))
                job += 1
    result = write_report(root, plots=False)
    rows = {(r["freeze"], r["train_images"]): r for r in result["rows"]}
    assert set(rows) == {(m, s) for m in ("scratch", "encoder") for s in (10, 30)}
    assert rows["encoder", 10]["seeds"] == [0, 1, 2] and rows["encoder", 30]["seeds"] == [0, 1]
    assert rows["encoder", 10]["gain_abs"] == pytest.approx(0.2)
    assert rows["encoder", 30]["n_paired"] == 2
    assert [m["overrides"] for m in result["missing"]] == [["freeze=encoder", "seed=2", "dataset.max_train_images=30"]]
    assert "11 finished, 1 MISSING" in result["markdown"]
    assert "label_efficiency.csv" in result["paths"]


def test_nested_job_dirs_are_collected(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_job(root, "main/0", ["freeze=scratch", "seed=0"], finetune_metrics("scratch", 0, 0.7))
    write_job(root, "label_efficiency/3", ["freeze=encoder", "seed=0"], finetune_metrics("encoder", 0, 0.8))
    write_job(root, "label_efficiency/4", ["freeze=encoder", "seed=1"], None)
    runs, missing = collect_runs(root)
    assert sorted(r["job"] for r in runs) == ["label_efficiency/3", "main/0"]
    assert [m["job"] for m in missing] == ["label_efficiency/4"]


def test_stage1_run_beside_the_sweep_is_neither_a_job_nor_missing(tmp_path: Path) -> None:
    root = tmp_path / "compare"
    write_job(root, "finetune/0", ["freeze=scratch", "seed=0"], finetune_metrics("scratch", 0, 0.7))
    write_job(root, "pretrain", ["experiment=quick"], {"stage": "pretrain", "test_accuracy": 0.97})
    runs, missing = collect_runs(root)
    assert [r["job"] for r in runs] == ["finetune/0"]
    assert missing == []


def test_missing_fields_fall_back_to_the_resolved_config(tmp_path: Path) -> None:
    """An older metrics.json without freeze/seed: the job's .hydra/config.yaml says what the run was, not its
    overrides."""
    root = tmp_path / "s"
    m = finetune_metrics("encoder", 2, 0.8)
    del m["freeze"], m["seed"], m["device"], m["test_dice_per_image"], m["best_val_dice"]
    job = write_job(root, "0", ["freeze=scratch", "seed=7"], m)  # overrides that disagree are ignored
    (job / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"seed": 2, "freeze": {"mode": "encoder", "depth": None}})
    )
    write_job(root, "1", ["freeze=scratch", "seed=2"], finetune_metrics("scratch", 2, 0.7))
    rows = write_report(root)["rows"]
    e = row_of(rows, "encoder")
    assert e["seeds"] == [2] and e["val_dice_mean"] is None
    assert e["gain_abs"] == pytest.approx(0.1)
    assert e["verdict"].startswith("n/a")


def test_two_stage1_runs_of_one_objective_are_two_rows(tmp_path: Path) -> None:
    """A small and a large stage-1 run (same objective) must not be averaged into one row; both compare with one
    scratch."""
    root = tmp_path / "s"
    for seed in (0, 1):
        write_job(
            root,
            f"scratch{seed}",
            ["freeze=scratch", f"seed={seed}"],
            finetune_metrics("scratch", seed, 0.70 + 0.01 * seed),
        )
        for name, test in (("pretrain_small", 0.66), ("pretrain_large", 0.74)):
            m = finetune_metrics("encoder", seed, test + 0.01 * seed) | {
                "pretrained_encoder": {"path": f"/runs/{name}/encoder.safetensors", "sha256": name}
            }
            write_job(root, f"{name}{seed}", ["freeze=encoder", f"seed={seed}"], m)
    out = write_report(root)
    transfer = {r["encoder_from"]: r for r in out["rows"] if r["freeze"] == "encoder"}
    assert set(transfer) == {"pretrain_small", "pretrain_large"}
    assert transfer["pretrain_small"]["gain_abs"] == pytest.approx(-0.04) and transfer["pretrain_large"][
        "gain_abs"
    ] == pytest.approx(0.04)
    assert row_of([r for r in out["rows"] if r["freeze"] == "scratch"], "scratch")["encoder_from"] is None
    md = out["paths"]["report.md"].read_text()
    assert "transfer-frozen encoder [pretrain_small]" in md and "transfer-frozen encoder [pretrain_large]" in md
    assert {r["encoder_from"] for r in read_csv(out["paths"]["report.csv"])} == {"", "pretrain_small", "pretrain_large"}


def test_report_names_the_stage1_runs_with_their_size_and_quality(tmp_path: Path) -> None:
    """A reused stage 1 lives outside the sweep: the header says which one, from stage 2's record or the run's
    metrics.json."""
    recorded = {
        "pretrain_task": "classification",
        "dataset": "concrete",
        "train_images": 32000,
        "epochs": 3,
        "test_accuracy": 0.9952,
    }
    old = tmp_path / "stage1_old"  # an encoder that recorded no size: its run's metrics.json gives it
    old.mkdir()
    (old / "metrics.json").write_text(
        json.dumps({"stage": "pretrain", "train_images": 640, "epochs": 8, "test_auroc": 0.991})
    )
    root = tmp_path / "s"
    write_job(root, "0", ["freeze=scratch"], finetune_metrics("scratch", 0, 0.70))
    write_job(
        root,
        "1",
        ["freeze=encoder"],
        finetune_metrics("encoder", 0, 0.69)
        | {"pretrained_encoder": {"path": "/gone/stage1_big/encoder.safetensors", **recorded}},
    )
    write_job(
        root,
        "2",
        ["freeze=none"],
        finetune_metrics("none", 0, 0.71)
        | {"pretrained_encoder": {"path": "/gone/stage1_big/encoder.safetensors", **recorded}},
    )
    write_job(
        root,
        "3",
        ["freeze=none"],
        finetune_metrics("none", 1, 0.68)
        | {
            "pretrained_encoder": {
                "path": str(old / "encoder.safetensors"),
                "pretrain_task": "classification",
                "dataset": "concrete",
            }
        },
    )
    line = next(
        line
        for line in write_report(root)["paths"]["report.md"].read_text().splitlines()
        if line.startswith("- **Stage 1:**")
    )
    assert "`stage1_big` (classification on concrete; 32,000 train images, 3 epochs; test accuracy 0.995)" in line
    assert "`stage1_old` (classification on concrete; 640 train images, 8 epochs; test AUROC 0.991)" in line
    assert line.count("stage1_big") == 1  # one stage 1, however many jobs used it


def test_partial_mode_label_and_order(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_job(root, "0", ["freeze=none"], finetune_metrics("none", 0, 0.81))
    write_job(root, "1", ["freeze=partial"], finetune_metrics("partial", 0, 0.80, freeze_depth=2))
    write_job(root, "2", ["freeze=scratch"], finetune_metrics("scratch", 0, 0.70))
    write_job(root, "3", ["freeze=encoder"], finetune_metrics("encoder", 0, 0.79))
    rows = aggregate(collect_runs(root)[0])
    assert [r["mode"] for r in rows] == ["scratch", "transfer-frozen encoder", "partial-2", "transfer-full fine-tuning"]


# --------------------------------------------------------------------------- label efficiency


def test_label_efficiency_csv_when_several_train_sizes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_multirun(root, ["freeze=scratch,encoder", "seed=0,1", "dataset.max_train_images=10,50"])
    table = {
        ("scratch", 10): [0.40, 0.44],
        ("encoder", 10): [0.60, 0.62],
        ("scratch", 50): [0.60, 0.64],
        ("encoder", 50): [0.70, 0.74],
    }
    job = 0
    for (mode, size), vals in table.items():
        for seed, v in enumerate(vals):
            write_job(
                root,
                str(job),
                [f"freeze={mode}", f"seed={seed}", f"dataset.max_train_images={size}"],
                finetune_metrics(mode, seed, v, train_images=size),
            )
            job += 1
    result = write_report(root)
    assert "label_efficiency.csv" in result["paths"] and "label_efficiency.png" in result["paths"]
    rows = read_csv(result["paths"]["label_efficiency.csv"])
    got = [(r["mode"], int(r["train_images"]), int(r["n_seeds"]), float(r["test_dice_mean"])) for r in rows]
    assert got == [
        ("scratch", 10, 2, pytest.approx(0.42)),
        ("scratch", 50, 2, pytest.approx(0.62)),
        ("transfer-frozen encoder", 10, 2, pytest.approx(0.61)),
        ("transfer-frozen encoder", 50, 2, pytest.approx(0.72)),
    ]
    enc10 = next(r for r in rows if r["freeze"] == "encoder" and r["train_images"] == "10")
    assert float(enc10["gain_abs"]) == pytest.approx(0.19)  # vs scratch at the same size
    assert float(enc10["test_dice_std"]) == pytest.approx(math.sqrt(0.0002))
    assert_png(result["paths"]["label_efficiency.png"])


def test_no_label_efficiency_for_single_size(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "s", {"scratch": [0.70, 0.72], "encoder": [0.78, 0.80]})
    result = write_report(sweep)
    assert "label_efficiency.csv" not in result["paths"]
    assert not (sweep / "label_efficiency.csv").exists() and not (sweep / "label_efficiency.png").exists()


def test_label_efficiency_only_for_sets_trained_at_several_budgets(tmp_path: Path) -> None:
    """Sets that differ only in size (82 vs 175 images) make no curve; a set with two budgets does."""
    root = tmp_path / "s"
    write_multirun(root, ["dataset=small,big,curve", "freeze=scratch,encoder", "seed=0"])
    jobs = [("small", 82), ("big", 175), ("curve", 25), ("curve", 175)]
    job = 0
    for dataset, size in jobs:
        for mode in ("scratch", "encoder"):
            write_job(
                root,
                str(job),
                [f"dataset={dataset}", f"freeze={mode}", "seed=0"],
                finetune_metrics(mode, 0, 0.5, train_images=size, dataset=dataset),
            )
            job += 1
    result = write_report(root, plots=False)
    rows = read_csv(result["paths"]["label_efficiency.csv"])
    assert {(r["dataset"], int(r["train_images"])) for r in rows} == {("curve", 25), ("curve", 175)}

    only_sizes = tmp_path / "t"
    write_multirun(only_sizes, ["dataset=small,big", "freeze=scratch", "seed=0"])
    for job, (dataset, size) in enumerate(jobs[:2]):
        write_job(
            only_sizes,
            str(job),
            [f"dataset={dataset}", "freeze=scratch", "seed=0"],
            finetune_metrics("scratch", 0, 0.5, train_images=size, dataset=dataset),
        )
    assert "label_efficiency.csv" not in write_report(only_sizes, plots=False)["paths"]


# --------------------------------------------------------------------------- files and CLI


def assert_png(path: Path, min_bytes: int = 15_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert float(np.std(img[..., :3])) > 0.05  # not a blank canvas


def test_pngs_written_and_non_trivial(tmp_path: Path) -> None:
    sweep = make_sweep(
        tmp_path / "s", {"scratch": [0.70, 0.72, 0.71], "encoder": [0.78, 0.80, 0.79], "none": [0.80, 0.81, 0.79]}
    )
    result = write_report(sweep)
    assert result["paths"]["compare.png"] == sweep / "compare.png"
    assert_png(sweep / "compare.png")
    assert "![compare](compare.png)" in result["markdown"]
    # Atomic writes leave no temp files behind.
    assert sorted(p.name for p in sweep.iterdir() if p.is_file()) == [
        "compare.png",
        "multirun.yaml",
        "report.csv",
        "report.md",
    ]


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "does-not-exist")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and err.count("\n") == 1

    empty = tmp_path / "empty"
    write_multirun(empty, ["freeze=scratch,encoder"])
    write_job(empty, "0", ["freeze=scratch"], None)  # only a crashed job
    assert main([str(empty)]) == 2
    assert "no finished job" in capsys.readouterr().err
    assert not (empty / "report.md").exists()

    sweep = make_sweep(tmp_path / "s", {"scratch": [0.70, 0.72], "encoder": [0.78, 0.80]})
    out_dir = tmp_path / "out"
    assert main([str(sweep), "--out", str(out_dir)]) == 0
    stdout = capsys.readouterr().out
    assert "| dataset |" in stdout and "transfer-frozen encoder" in stdout
    assert "WARNING" not in stdout
    assert {p.name for p in out_dir.iterdir()} >= {"report.csv", "report.md", "compare.png"}
    assert not (sweep / "report.md").exists()


def test_module_entry_point_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    sweep = make_sweep(tmp_path / "s", {"scratch": [0.70, 0.72], "encoder": [0.78, 0.80]})
    proc = subprocess.run(
        [sys.executable, "-m", "defectseg.report", str(sweep), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "transfer-frozen encoder" in proc.stdout
    assert (sweep / "report.csv").exists() and not (sweep / "compare.png").exists()
    assert report.REPORT_CSV_COLUMNS[0] in (sweep / "report.csv").read_text().splitlines()[0]


def test_why_section_quotes_the_mean_learning_curve_and_level_movement(tmp_path: Path) -> None:
    """Val Dice at 10/25/50/100 % of the epochs and the per-level encoder change, both averaged over seeds; runs from
    before these fields existed (the old sweep) leave the section and the figure out."""
    old = write_report(make_sweep(tmp_path / "old", {"scratch": [0.70, 0.72], "encoder": [0.78, 0.80]}))
    assert "learning_curves.png" not in old["paths"] and "## Why" not in old["markdown"]

    root = tmp_path / "s"
    write_multirun(root, ["freeze=scratch,none", "seed=0,1"])
    curves = {  # ten epochs each; the transfer run starts ahead and scratch catches up
        "scratch": [[0.1 * e for e in range(1, 11)], [0.1 * e + 0.02 for e in range(1, 11)]],
        "none": [[0.5 + 0.04 * e for e in range(1, 11)], [0.5 + 0.04 * e for e in range(1, 11)]],
    }
    levels = {"scratch": [[0.5, 0.6, 0.7, 0.8, 0.9]] * 2, "none": [[0.02, 0.04, 0.06, 0.1, 0.2], [0.04] * 5]}
    job = 0
    for mode in ("scratch", "none"):
        for seed in (0, 1):
            metrics = finetune_metrics(mode, seed, 0.7)
            metrics.update(val_dice_by_epoch=curves[mode][seed], encoder_level_change=levels[mode][seed])
            write_job(root, str(job), [f"freeze={mode}", f"seed={seed}"], metrics)
            job += 1
    result = write_report(root)
    assert_png(result["paths"]["learning_curves.png"])
    section = result["markdown"].split("## Why: learning curves and encoder levels")[1]
    table = [line for line in section.splitlines() if line.startswith("| steel_single")]
    scratch_cells = [c.strip() for c in table[0].strip("|").split("|")]
    transfer_cells = [c.strip() for c in table[1].strip("|").split("|")]
    # epoch 1 (10 %), 3 (25 %), 5 (50 %), 10 (100 %), mean of the two seeds
    assert scratch_cells[2:6] == ["0.110", "0.310", "0.510", "1.010"]
    assert transfer_cells[2:6] == ["0.540", "0.620", "0.700", "0.900"]
    assert scratch_cells[6:] == ["50.0", "60.0", "70.0", "80.0", "90.0"]
    assert transfer_cells[6:] == ["3.0", "4.0", "5.0", "7.0", "12.0"]


def test_weight_averaging_makes_its_own_row_and_is_compared_with_averaged_scratch(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_multirun(root, ["freeze=scratch,none", "callbacks=default,ema", "seed=0,1"])
    dice = {("scratch", None): 0.60, ("scratch", "ema 0.99"): 0.66, ("none", None): 0.65, ("none", "ema 0.99"): 0.70}
    job = 0
    for (mode, averaging), value in dice.items():
        for seed in (0, 1):
            metrics = finetune_metrics(mode, seed, value + 0.01 * seed)
            metrics["weight_averaging"] = averaging
            write_job(root, str(job), [f"freeze={mode}", f"seed={seed}"], metrics)
            job += 1
    rows = write_report(root)["rows"]
    assert len(rows) == 4
    averaged = next(r for r in rows if r["freeze"] == "none" and r["weight_averaging"] == "ema 0.99")
    plain = next(r for r in rows if r["freeze"] == "none" and r["weight_averaging"] is None)
    assert averaged["gain_abs"] == pytest.approx(0.04)  # against scratch + ema (0.665), not plain scratch (0.605)
    assert plain["gain_abs"] == pytest.approx(0.05)
    assert "transfer-full fine-tuning + ema 0.99" in write_report(root)["markdown"]
