"""Encoder exchange between the stages: safetensors + JSON, refusals with clear errors, `latest` links."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from defectseg.models import unet_paper
from defectseg.models.encoder_io import (
    INFO_NAME,
    WEIGHTS_NAME,
    EncoderMismatchError,
    load_encoder,
    resolve_encoder_path,
    save_encoder,
)
from defectseg.utils import io as io_utils
from defectseg.utils.io import point_link

SMALL = (4, 8, 16, 32, 64)  # fast stand-in; same architecture code path as the paper's widths


def small_model(seed: int = 0, channels=SMALL):
    torch.manual_seed(seed)
    return unet_paper(channels=channels)


@pytest.fixture
def saved(tmp_path: Path):
    model = small_model(seed=1)
    save_encoder(model.encoder, tmp_path / "stage1", model.architecture)
    return tmp_path / "stage1", model


def assert_same_encoder(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_save_writes_weights_and_description(saved):
    directory, model = saved
    assert sorted(os.listdir(directory)) == [INFO_NAME, WEIGHTS_NAME]
    info = json.loads((directory / INFO_NAME).read_text())
    assert info["architecture"] == model.architecture
    assert info["num_parameters"] == sum(p.numel() for p in model.encoder.parameters())
    assert info["weights"] == WEIGHTS_NAME


@pytest.mark.parametrize("via", ["directory", "file"])
def test_load_into_fresh_model_gives_identical_tensors(saved, via):
    directory, model = saved
    fresh = small_model(seed=2)
    assert not torch.equal(fresh.encoder.levels[0][0].weight, model.encoder.levels[0][0].weight)
    target = directory if via == "directory" else directory / WEIGHTS_NAME
    info = load_encoder(fresh.encoder, target, fresh.architecture)
    assert_same_encoder(fresh.encoder, model.encoder)
    assert info["architecture"] == model.architecture


def test_encoder_for_another_architecture_is_refused_naming_file_and_both(tmp_path: Path):
    other = small_model(channels=(16, 32, 64, 128, 256))
    save_encoder(other.encoder, tmp_path, other.architecture)
    paper = unet_paper()
    before = paper.encoder.levels[0][0].weight.clone()
    with pytest.raises(EncoderMismatchError) as caught:
        load_encoder(paper.encoder, tmp_path, paper.architecture)
    message = str(caught.value)
    assert str(tmp_path / WEIGHTS_NAME) in message
    assert "[16, 32, 64, 128, 256]" in message and "[32, 64, 128, 256, 512]" in message
    assert torch.equal(paper.encoder.levels[0][0].weight, before)


def test_missing_description_is_refused(saved):
    directory, model = saved
    (directory / INFO_NAME).unlink()
    with pytest.raises(EncoderMismatchError, match=INFO_NAME):
        load_encoder(small_model().encoder, directory, model.architecture)


def test_description_that_is_not_json_is_refused(saved):
    directory, model = saved
    (directory / INFO_NAME).write_text("{not json")
    with pytest.raises(EncoderMismatchError, match="not valid JSON"):
        load_encoder(small_model().encoder, directory, model.architecture)


@pytest.mark.parametrize("cut", [0.5, 0.01])
def test_truncated_weights_are_refused_clearly(saved, cut):
    directory, model = saved
    weights = directory / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: max(1, int(len(data) * cut))])
    with pytest.raises(EncoderMismatchError, match=r"sha256 does not match|unreadable safetensors") as caught:
        load_encoder(small_model().encoder, directory, model.architecture)
    assert str(weights) in str(caught.value)


def test_garbage_weights_are_refused_clearly(saved):
    directory, model = saved
    (directory / WEIGHTS_NAME).write_bytes(os.urandom(256))
    with pytest.raises(EncoderMismatchError, match=r"sha256 does not match|unreadable safetensors"):
        load_encoder(small_model().encoder, directory, model.architecture)


def test_bit_flipped_weights_are_refused(saved):
    directory, model = saved
    weights = directory / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(EncoderMismatchError):
        load_encoder(small_model().encoder, directory, model.architecture)


def test_weights_of_another_shape_under_matching_description_raise_mismatch(saved, tmp_path: Path):
    directory, model = saved
    other = small_model(channels=(8, 16, 32, 64, 128))
    save_encoder(other.encoder, tmp_path / "other", other.architecture)
    shutil.copy(tmp_path / "other" / WEIGHTS_NAME, directory / WEIGHTS_NAME)
    with pytest.raises(EncoderMismatchError):
        load_encoder(small_model().encoder, directory, model.architecture)


def test_missing_path_raises_file_not_found(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no pretrained encoder"):
        load_encoder(small_model().encoder, tmp_path / "nowhere", {"name": "unet_paper"})
    with pytest.raises(FileNotFoundError):
        resolve_encoder_path(tmp_path)  # a directory without encoder.safetensors


class _MarkerOnUnpickle:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_renamed_to_safetensors_is_refused_without_running_code(saved, tmp_path: Path, writer):
    directory, model = saved
    marker = tmp_path / "pwned"
    payload = {"levels.0.0.weight": _MarkerOnUnpickle(marker)}
    weights = directory / WEIGHTS_NAME
    if writer == "pickle":
        weights.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, weights)
    with pytest.raises(EncoderMismatchError):
        load_encoder(small_model().encoder, directory, model.architecture)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_MarkerOnUnpickle(marker)))  # the crafted payload does work when unpickled
    assert marker.exists()


def test_latest_link_resolves_through_load(saved, tmp_path: Path):
    directory, model = saved
    link = tmp_path / "latest"
    point_link(link, directory)
    fresh = small_model(seed=3)
    load_encoder(fresh.encoder, link, fresh.architecture)
    assert_same_encoder(fresh.encoder, model.encoder)


# --- point_link -------------------------------------------------------------------------------


def test_point_link_makes_a_relative_symlink(tmp_path: Path):
    target = tmp_path / "runs" / "2024-01-01"
    target.mkdir(parents=True)
    (target / "f.txt").write_text("one")
    link = tmp_path / "runs" / "latest"
    point_link(link, target)
    assert link.is_symlink()
    assert not os.path.isabs(os.readlink(link))
    assert os.readlink(link) == "2024-01-01"
    assert (link / "f.txt").read_text() == "one"


def test_point_link_still_works_after_moving_the_tree(tmp_path: Path):
    target = tmp_path / "a" / "runs" / "r1"
    target.mkdir(parents=True)
    point_link(tmp_path / "a" / "latest", target)
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "latest").resolve() == (tmp_path / "b" / "runs" / "r1").resolve()


def test_repointing_replaces_the_link_atomically(tmp_path: Path, monkeypatch):
    old, new = tmp_path / "r1", tmp_path / "r2"
    old.mkdir()
    new.mkdir()
    link = tmp_path / "latest"
    point_link(link, old)
    seen_during_replace = []
    real_replace = os.replace

    def spying_replace(src, dst):
        # at the moment of the swap the old link must still be there and still point at the old run
        seen_during_replace.append((Path(dst) == link, os.readlink(link)))
        return real_replace(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", spying_replace)
    point_link(link, new)
    assert seen_during_replace == [(True, "r1")]
    assert os.readlink(link) == "r2"
    assert link.resolve() == new.resolve()
    assert old.is_dir()  # the old run itself is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "r1", "r2"]  # no temp link left behind
