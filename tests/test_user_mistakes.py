"""Mistakes a new user makes in the first hour end in one line that names the key or file, not a traceback."""

from __future__ import annotations

import pytest
from conftest import write_segmentation_set

from defectseg.data import readers
from defectseg.data.synthetic import ensure_steel_segmentation
from defectseg.utils.errors import user_error_in


def test_embedded_set_over_a_users_folder_names_the_layouts(tmp_path):
    """`check_data dataset.root=DIR` without dataset=folder_seg: the embedded set would be generated over DIR."""
    mine = write_segmentation_set(tmp_path / "steel", n_images=2)
    with pytest.raises(FileExistsError) as raised:
        ensure_steel_segmentation(mine, n_images=2, size=32, progress=False)
    assert "dataset.root=" in str(raised.value) and "dataset=folder_seg" in str(raised.value)
    assert user_error_in(raised.value) is raised.value  # printed as one line by the entry points
    assert sorted(p.name for p in mine.iterdir()) == ["images", "masks"]  # nothing of the user's touched


def test_a_segmentation_set_read_as_classes_is_refused(tmp_path):
    """dataset=folder_cls on images/ + masks/ would train a classifier to tell photos from masks."""
    mine = write_segmentation_set(tmp_path / "steel", n_images=2)
    with pytest.raises(readers.DataError, match=r"images/ and masks/.*dataset=folder_seg"):
        readers.scan_classification_folder(mine)


def test_root_set_to_the_images_folder_says_to_go_one_up(tmp_path):
    mine = write_segmentation_set(tmp_path / "steel", n_images=2)
    with pytest.raises(readers.DataError, match=r"dataset.root=.*images: no images/ folder in it; it holds images"):
        readers.scan_segmentation_folder(mine / "images")
    with pytest.raises(readers.DataError, match=r"no images_typo/ folder in it \(it holds images/, masks/\)"):
        readers.scan_segmentation_folder(mine, image_dir="images_typo")
