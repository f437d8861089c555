"""The embedded synthetic sets: deterministic, laid out like the real sets, exact masks, crash-safe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from defectseg.data import synthetic as S
from defectseg.data.synthetic import concrete, publish, steel

N, SIZE = 6, 64


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _thin_dark_score(rgb: np.ndarray) -> int:
    """Size of the largest connected thin dark structure (black top-hat): cracks are long ones."""
    g = rgb.astype(np.float32).mean(-1) / 255.0
    tophat = ndimage.grey_closing(g, size=(5, 5)) - g
    labels, n = ndimage.label(tophat > 0.08, structure=np.ones((3, 3)))
    return 0 if n == 0 else int(np.bincount(labels.ravel())[1:].max())


# ---------------------------------------------------------------- stage 1: crack classification


def test_crack_layout_counts_and_manifest(tmp_path: Path) -> None:
    root = S.generate_crack_classification(tmp_path / "cls", n_per_class=N, size=SIZE, seed=0, progress=False)
    for name in ("Positive", "Negative"):
        files = sorted(p.name for p in (root / name).iterdir())
        assert files == [f"{i:05d}.png" for i in range(N)]
        with Image.open(root / name / files[0]) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
    manifest = json.loads((root / "GENERATED.json").read_text())
    assert manifest == {
        "generator": "crack_classification",
        "version": S.VERSION,
        "params": {"n_per_class": N, "size": SIZE, "seed": 0},
        "count": 2 * N,
    }


def test_crack_set_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = S.generate_crack_classification(tmp_path / "a", n_per_class=3, size=SIZE, seed=0, progress=False)
    b = S.generate_crack_classification(tmp_path / "b", n_per_class=3, size=SIZE, seed=0, progress=False)
    c = S.generate_crack_classification(tmp_path / "c", n_per_class=3, size=SIZE, seed=1, progress=False)
    for name in ("Positive", "Negative"):
        aa, bb, cc = _arrays(a / name), _arrays(b / name), _arrays(c / name)
        assert aa.keys() == bb.keys() == cc.keys()
        for key in aa:
            assert np.array_equal(aa[key], bb[key])
            assert not np.array_equal(aa[key], cc[key])


def test_image_i_does_not_depend_on_set_size(tmp_path: Path) -> None:
    small = S.generate_crack_classification(tmp_path / "small", n_per_class=2, size=SIZE, progress=False)
    large = S.generate_crack_classification(tmp_path / "large", n_per_class=4, size=SIZE, progress=False)
    for key, arr in _arrays(small / "Positive").items():
        assert np.array_equal(arr, _arrays(large / "Positive")[key])
    # and images within a set differ from each other
    pos = list(_arrays(large / "Positive").values())
    assert not np.array_equal(pos[0], pos[1])


def test_positives_show_thin_dark_structures_negatives_lack(tmp_path: Path) -> None:
    root = S.generate_crack_classification(tmp_path / "cls", n_per_class=10, size=96, seed=0, progress=False)
    pos = [_thin_dark_score(a) for a in _arrays(root / "Positive").values()]
    neg = [_thin_dark_score(a) for a in _arrays(root / "Negative").values()]
    assert np.median(pos) > 2.5 * max(np.median(neg), 1)
    # but the classes are not separable by darkness alone: negatives carry dark clutter too
    dark = lambda arrs: [float((a.mean(-1) < 0.75 * np.median(a.mean(-1))).mean()) for a in arrs]
    assert max(dark(_arrays(root / "Negative").values())) > 0.01


# ---------------------------------------------------------------- stage 2: steel segmentation


def test_steel_layout_masks_and_manifest(tmp_path: Path) -> None:
    root = S.generate_steel_segmentation(tmp_path / "seg", n_images=N, size=SIZE, seed=0, progress=False)
    images, masks = _arrays(root / "images"), _arrays(root / "masks")
    assert list(images) == list(masks) == [f"{i:05d}.png" for i in range(N)]
    with Image.open(root / "images" / "00000.png") as im, Image.open(root / "masks" / "00000.png") as mk:
        assert im.mode == "RGB" and mk.mode == "L" and im.size == mk.size == (SIZE, SIZE)
    for key in images:
        assert images[key].shape == (SIZE, SIZE, 3) and masks[key].shape == (SIZE, SIZE)
        assert set(np.unique(masks[key])) <= {0, 255}
        labels = np.asarray(Image.open(root / "labels" / key))
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 4} and np.array_equal(labels > 0, masks[key] > 0)
    assert sum(bool(m.any()) for m in masks.values()) >= N - 1
    manifest = S.read_manifest(root)
    assert (
        manifest is not None
        and manifest["count"] == N
        and manifest["params"]
        == {"n_images": N, "size": SIZE, "seed": 0, "conditions": "clean", "defect_set": "mixed", "labels": True}
    )


def test_steel_files_match_the_sample_function_and_are_deterministic(tmp_path: Path) -> None:
    a = S.generate_steel_segmentation(tmp_path / "a", n_images=3, size=SIZE, seed=5, progress=False)
    b = S.generate_steel_segmentation(tmp_path / "b", n_images=3, size=SIZE, seed=6, progress=False)
    for i in range(3):
        image, mask, _ = steel.steel_sample(5, i, SIZE)
        assert np.array_equal(np.asarray(Image.open(a / "images" / f"{i:05d}.png")), image)
        assert np.array_equal(np.asarray(Image.open(a / "masks" / f"{i:05d}.png")), mask.astype(np.uint8) * 255)
        assert not np.array_equal(np.asarray(Image.open(b / "images" / f"{i:05d}.png")), image)


@pytest.mark.parametrize(
    ("size", "conditions", "defect_set"),
    [
        (64, "clean", "mixed"),
        (160, "clean", "mixed"),
        (64, "field", "mixed"),
        (160, "field", "mixed"),
        (64, "clean", "crack"),
    ],
)
def test_masks_cover_exactly_what_the_defects_changed(size: int, conditions: str, defect_set: str) -> None:
    """Re-render each photo without its defects: the difference must sit on the mask (plus a 1-px rim).

    Under field conditions too: look-alike marks are not defects, so they must not touch the mask,
    and a faint defect must still visibly change every pixel of its mask.
    """
    checked = 0
    for i in range(12):
        image, mask, kinds = steel.steel_sample(0, i, size, conditions=conditions, defect_set=defect_set)
        clean, clean_mask, clean_kinds = steel.steel_sample(
            0, i, size, defects=False, conditions=conditions, defect_set=defect_set
        )
        assert not clean_mask.any() and clean_kinds == []
        diff = np.abs(image.astype(int) - clean.astype(int)).max(-1)
        if not mask.any():
            assert kinds == [] and diff.max() == 0
            continue
        checked += 1
        rim = ndimage.binary_dilation(mask, structure=np.ones((3, 3))) & ~mask
        outside = ~(mask | rim)
        assert diff[outside].max() == 0, f"image {i}: pixels changed away from the mask"
        assert (diff[mask] >= 3).all(), f"image {i}: mask pixels the defects left unchanged"
        assert diff[mask].mean() > 3 * diff[rim].mean(), f"image {i}: mask edge not where the change is"
        assert 0.0005 < mask.mean() < 0.4
    assert checked >= 10


def test_defect_kinds_mixed_and_some_images_empty() -> None:
    kinds, empty, fractions = set(), 0, []
    for i in range(120):
        _, mask, k = steel.steel_sample(0, i, 48)
        kinds.update(k)
        empty += not mask.any()
        fractions.append(mask.mean())
    assert kinds == {"crack", "corrosion", "pits", "scratch"}
    assert 1 <= empty <= 15  # a few percent
    assert 0.005 < float(np.median(fractions)) < 0.15


def test_stage2_cracks_use_the_shared_crack_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = S.crack_alpha

    def spy(*args, **kwargs):
        calls.append(kwargs.get("scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(steel, "crack_alpha", spy)  # where each stage looks it up
    monkeypatch.setattr(concrete, "crack_alpha", spy)
    has_crack = [i for i in range(10) if "crack" in steel.steel_sample(0, i, SIZE)[2]]
    assert has_crack and len(calls) >= len(has_crack)
    calls.clear()
    concrete.concrete_sample(0, 1, 0, SIZE)
    assert calls, "stage-1 cracks must come from the same function"


def test_the_two_domains_differ() -> None:
    """Stage 1 is near-grey concrete; stage 2 has colour (paint, rust): a simple statistic separates them."""

    def colourfulness(rgb: np.ndarray) -> float:
        return float((rgb.max(-1).astype(int) - rgb.min(-1).astype(int)).mean())

    grey = np.mean([colourfulness(concrete.concrete_sample(0, i % 2, i, SIZE)[0]) for i in range(12)])
    coloured = np.mean([colourfulness(steel.steel_sample(0, i, SIZE)[0]) for i in range(12)])
    assert coloured > 3 * grey


# ---------------------------------------------------------------- ensure_*: idempotent, atomic


def test_ensure_skips_a_matching_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "seg"
    assert S.ensure_steel_segmentation(root, n_images=3, size=SIZE, progress=False) == root
    stamp = (root / "GENERATED.json").stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("regenerated a set that was already complete")

    monkeypatch.setattr(publish, "generate_steel_segmentation", boom)
    assert S.ensure_steel_segmentation(root, n_images=3, size=SIZE, progress=False) == root
    assert (root / "GENERATED.json").stat().st_mtime_ns == stamp


def test_ensure_regenerates_when_params_change(tmp_path: Path) -> None:
    root = tmp_path / "cls"
    S.ensure_crack_classification(root, n_per_class=4, size=SIZE, seed=0, progress=False)
    first = _arrays(root / "Positive")
    S.ensure_crack_classification(root, n_per_class=2, size=SIZE, seed=1, progress=False)
    assert S.read_manifest(root)["params"] == {"n_per_class": 2, "size": SIZE, "seed": 1}
    second = _arrays(root / "Positive")
    assert list(second) == ["00000.png", "00001.png"]  # no stale files from the larger set
    assert not np.array_equal(first["00000.png"], second["00000.png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cls.lock", "cls"]  # no scratch folders left behind


def test_ensure_regenerates_when_version_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = S.ensure_crack_classification(tmp_path / "cls", n_per_class=1, size=SIZE, progress=False)
    monkeypatch.setattr(publish, "VERSION", publish.VERSION + 1)
    calls = []
    real = S.generate_crack_classification
    monkeypatch.setattr(publish, "generate_crack_classification", lambda *a, **k: calls.append(1) or real(*a, **k))
    S.ensure_crack_classification(root, n_per_class=1, size=SIZE, progress=False)
    assert calls and S.read_manifest(root)["version"] == publish.VERSION


def _fail_after(monkeypatch: pytest.MonkeyPatch, n_writes: int) -> None:
    real, count = publish._save_png, [0]

    def flaky(array, path):
        count[0] += 1
        if count[0] > n_writes:
            raise KeyboardInterrupt("simulated crash")
        real(array, path)

    monkeypatch.setattr(publish, "_save_png", flaky)


def test_interrupted_generation_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "seg"
    _fail_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        S.ensure_steel_segmentation(root, n_images=4, size=SIZE, progress=False)
    assert not root.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".seg.lock"]  # the partial folder was cleaned up
    monkeypatch.undo()
    S.ensure_steel_segmentation(root, n_images=4, size=SIZE, progress=False)
    assert len(list((root / "masks").iterdir())) == 4


def test_interrupted_regeneration_keeps_the_old_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = S.ensure_crack_classification(tmp_path / "cls", n_per_class=2, size=SIZE, seed=0, progress=False)
    before = _arrays(root / "Negative")
    _fail_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        S.ensure_crack_classification(root, n_per_class=3, size=SIZE, seed=0, progress=False)
    monkeypatch.undo()
    assert S.read_manifest(root)["params"]["n_per_class"] == 2
    after = _arrays(root / "Negative")
    assert after.keys() == before.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_in_place_generation_interrupted_is_not_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = S.generate_steel_segmentation(tmp_path / "seg", n_images=2, size=SIZE, progress=False)
    _fail_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        S.generate_steel_segmentation(root, n_images=2, size=SIZE, progress=False)
    monkeypatch.undo()
    assert S.read_manifest(root) is None  # the manifest goes first, so a half-rewritten set is not "complete"
    calls = []
    real = S.generate_steel_segmentation
    monkeypatch.setattr(publish, "generate_steel_segmentation", lambda *a, **k: calls.append(1) or real(*a, **k))
    S.ensure_steel_segmentation(root, n_images=2, size=SIZE, progress=False)
    assert calls and S.read_manifest(root)["count"] == 2


def test_ensure_refuses_to_replace_foreign_data(tmp_path: Path) -> None:
    root = tmp_path / "mydata"
    (root / "images").mkdir(parents=True)
    (root / "images" / "photo.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="mydata"):
        S.ensure_steel_segmentation(root, n_images=2, size=SIZE, progress=False)
    assert (root / "images" / "photo.jpg").read_bytes() == b"not ours"
    # a set from the other generator is not ours to replace either
    cls = S.ensure_crack_classification(tmp_path / "cls", n_per_class=1, size=SIZE, progress=False)
    with pytest.raises(FileExistsError):
        S.ensure_steel_segmentation(cls, n_images=1, size=SIZE, progress=False)


def test_ensure_cleans_scratch_folders_of_killed_processes(tmp_path: Path) -> None:
    """Under the set's lock nobody else is writing: scratch folders found there were left by a killed process."""
    orphans = [tmp_path / ".seg.partial", tmp_path / ".seg.old", tmp_path / ".seg.partial-12345-0123abcd"]
    for orphan in orphans:
        (orphan / "images").mkdir(parents=True)
    other = tmp_path / ".segments.partial"  # another set's scratch folder is not ours to touch
    other.mkdir()
    S.ensure_steel_segmentation(tmp_path / "seg", n_images=1, size=SIZE, progress=False)
    assert not any(orphan.exists() for orphan in orphans) and other.exists()


def test_ensure_waits_for_the_process_holding_the_lock(tmp_path: Path) -> None:
    """A set another process is generating (its lock held) is found complete once the lock is free, not made twice."""
    from filelock import FileLock

    root = tmp_path / "seg"
    code = f"""
import sys
from defectseg.data.synthetic import publish
real = publish._is_complete
def announce(*args, **kwargs):
    print("complete" if real(*args, **kwargs) else "incomplete", flush=True)
    return real(*args, **kwargs)
publish._is_complete = announce
publish.generate_steel_segmentation = lambda *args, **kwargs: sys.exit("generated a second time")
publish.ensure_steel_segmentation({str(root)!r}, n_images=1, size={SIZE}, progress=False)
"""
    with FileLock(tmp_path / ".seg.lock"):
        waiter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "incomplete"  # it saw no set yet
        S.generate_steel_segmentation(root, n_images=1, size=SIZE, progress=False)  # "the other process" at work
    out, _ = waiter.communicate(timeout=120)
    assert waiter.returncode == 0 and out.split() == ["complete"]  # re-checked under the lock, nothing regenerated


def test_ensure_logs_what_and_where(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="defectseg.data.synthetic")
    S.ensure_steel_segmentation(tmp_path / "seg", n_images=1, size=SIZE, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "defectseg.data.synthetic"]
    assert len(lines) == 1 and "steel_segmentation" in lines[0] and str(tmp_path / "seg") in lines[0]
    caplog.clear()
    S.ensure_steel_segmentation(tmp_path / "seg", n_images=1, size=SIZE, progress=False)
    assert not [r for r in caplog.records if r.name == "defectseg.data.synthetic"]


@pytest.mark.parametrize(
    "kwargs", [{"n_images": 0}, {"size": 8}, {"seed": -1}, {"conditions": "foggy"}, {"defect_set": "dents"}]
)
def test_invalid_parameters_are_rejected(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        S.ensure_steel_segmentation(tmp_path / "seg", progress=False, **kwargs)
    assert not (tmp_path / "seg").exists()


# ---------------------------------------------------------------- CLI


def test_cli_main(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert S.main(["seg", str(tmp_path / "seg"), "--n", "2", "--size", "32", "--seed", "3", "--no-progress"]) == 0
    assert S.read_manifest(tmp_path / "seg")["params"] == {
        "n_images": 2,
        "size": 32,
        "seed": 3,
        "conditions": "clean",
        "defect_set": "mixed",
        "labels": True,
    }
    assert (
        S.main(
            [
                "seg",
                str(tmp_path / "field"),
                "--n",
                "2",
                "--size",
                "32",
                "--conditions",
                "field",
                "--defect-set",
                "crack",
                "--no-progress",
            ]
        )
        == 0
    )
    params = S.read_manifest(tmp_path / "field")["params"]
    assert (params["conditions"], params["defect_set"]) == ("field", "crack")
    assert "2 images" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse: an unknown condition is a usage error
        S.main(["seg", str(tmp_path / "bad"), "--conditions", "foggy", "--no-progress"])
    assert S.main(["cls", str(tmp_path / "seg"), "--n", "1", "--size", "32", "--no-progress"]) == 2  # refuses


def test_cli_module_entry_point(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "defectseg.data.synthetic",
            "cls",
            str(tmp_path / "cls"),
            "--n",
            "1",
            "--size",
            "32",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == ["GENERATED.json", "Negative", "Positive"]


def test_worker_processes_write_the_same_files(tmp_path: Path) -> None:
    serial = S.generate_steel_segmentation(tmp_path / "serial", n_images=4, size=32, seed=2, progress=False)
    parallel = S.generate_steel_segmentation(
        tmp_path / "parallel", n_images=4, size=32, seed=2, progress=False, workers=2
    )
    for sub in ("images", "masks"):
        a, b = _arrays(serial / sub), _arrays(parallel / sub)
        assert a.keys() == b.keys() and len(a) == 4
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert S.read_manifest(parallel) == S.read_manifest(serial)


def test_cli_rejects_bad_values_instead_of_using_defaults(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert S.main(["seg", str(tmp_path / "seg"), "--n", "0", "--no-progress"]) == 2
    assert "n_images" in capsys.readouterr().err
    assert not (tmp_path / "seg").exists()


def test_field_conditions_add_to_the_clean_photos() -> None:
    """The field set is the clean set plus field effects: same backgrounds, same defects, same masks.

    So the clean default is the very set of every earlier result, and the two sets differ only in
    what field conditions add.
    """
    clean_means, field_means = [], []
    for i in range(12):
        clean, clean_mask, clean_kinds = steel.steel_sample(0, i, SIZE, conditions="clean")
        field, field_mask, field_kinds = steel.steel_sample(0, i, SIZE, conditions="field")
        assert np.array_equal(clean_mask, field_mask) and clean_kinds == field_kinds
        assert not np.array_equal(clean, field)
        clean_means.append(clean.mean())
        field_means.append(field.mean())
    assert np.mean(field_means) < np.mean(clean_means)  # darker on average: poorer light


def test_a_single_defect_set_repaints_the_mixed_photos_with_one_kind() -> None:
    """As the paper's "single defect" set: the same surfaces and the same number of defects as the mixed set, all of
    one kind."""
    counts, seen_other_kinds = [], set()
    for i in range(12):
        _, _, mixed_kinds = steel.steel_sample(0, i, SIZE)
        bare_mixed = steel.steel_sample(0, i, SIZE, defects=False)[0]
        _image, mask, kinds = steel.steel_sample(0, i, SIZE, defect_set="crack")
        assert np.array_equal(steel.steel_sample(0, i, SIZE, defects=False, defect_set="crack")[0], bare_mixed)
        assert set(kinds) <= {"crack"} and bool(kinds) == bool(mask.any())
        counts.append((len(mixed_kinds), len(kinds)))
        seen_other_kinds.update(set(mixed_kinds) - {"crack"})
    assert seen_other_kinds  # the mixed photos held other kinds, and these do not
    assert sum(k for _, k in counts) >= 0.8 * sum(m for m, _ in counts)  # a defect that misses the image is not listed


def test_look_alike_marks_are_painted_on_the_surface() -> None:
    """Every field photo gets at least one unlabelled mark, local (not a global tint) and of varying size."""
    covered = []
    for seed in range(10):
        surface = np.full((SIZE, SIZE, 3), 0.5, np.float32)
        steel.look_alikes(np.random.default_rng(seed), surface)
        changed = np.abs(surface - 0.5).max(-1) > 0.02
        assert changed.any(), f"seed {seed}: no mark painted"
        covered.append(changed.mean())
    assert min(covered) < 0.5 and max(covered) - min(covered) > 0.05
