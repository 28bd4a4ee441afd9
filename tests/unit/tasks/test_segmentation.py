from __future__ import annotations

import pytest
import torch

from omnifm.tasks.segmentation import BRATS_CLASSES, SegTask


def test_brats_regions_from_class_indices():
    labels = torch.tensor([0, 1, 2, 3]).reshape(1, 1, 4)  # background, necrotic, edema, enhancing
    masks = SegTask().region_masks(labels)
    assert masks.shape == (1, 3, 4)
    assert masks[0].tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]  # WT, TC, ET


def test_default_regions_are_one_per_foreground_class():
    task = SegTask(("background", "liver", "lesion"), {})
    assert task.regions == {"liver": ("liver",), "lesion": ("lesion",)}


def test_round_trips_through_a_plain_dict():
    task = SegTask()
    assert SegTask.from_dict(task.to_dict()) == task
    assert task.to_dict()["classes"] == list(BRATS_CLASSES)


@pytest.mark.parametrize(
    "classes, regions, match",
    [
        (("tumour",), None, "must be unique, start with 'background'"),
        (("tumour", "background"), None, "start with 'background'"),
        (("background", "a", "a"), None, "unique"),
        (("background", "a"), {"R": ("b",)}, "region 'R' must list foreground classes"),
        (("background", "a"), {"R": ("background",)}, "region 'R'"),
        (("background", "a"), {"R": ()}, "region 'R'"),
    ],
)
def test_bad_task(classes, regions, match):
    with pytest.raises(ValueError, match=match):
        SegTask(classes, regions)
