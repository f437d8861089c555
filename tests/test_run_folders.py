"""Run folders and pointers users can trust: `latest` moves only for runs inside the output root."""

from __future__ import annotations

from defectseg.utils.io import point_latest


def test_latest_follows_runs_inside_the_output_root(tmp_path):
    root = tmp_path / "outputs"
    first, second = root / "finetune" / "a", root / "compare" / "x" / "finetune" / "0_freeze-scratch+seed-0"
    for run in (first, second):
        run.mkdir(parents=True)
    link = root / "finetune" / "latest"
    assert point_latest(link, first, root)
    assert link.resolve() == first.resolve()
    assert point_latest(link, second, root)
    assert link.resolve() == second.resolve()


def test_a_run_elsewhere_leaves_latest_alone(tmp_path):
    """A benchmark or test writing to a temporary folder must not repoint the user's latest run."""
    root = tmp_path / "outputs"
    mine = root / "finetune" / "mine"
    mine.mkdir(parents=True)
    link = root / "finetune" / "latest"
    point_latest(link, mine, root)
    elsewhere = tmp_path / "bench_tmp" / "run"
    elsewhere.mkdir(parents=True)
    assert not point_latest(link, elsewhere, root)
    assert link.resolve() == mine.resolve()
