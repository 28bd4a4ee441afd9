"""Segmentation on the task seam: axial slices, a MONAI UNet tapped at its bottleneck, Dice per region."""

from omnifm.tasks.segmentation.task import BRATS_CLASSES, BRATS_REGIONS, SegTask

__all__ = ["BRATS_CLASSES", "BRATS_REGIONS", "SegTask"]
