"""Classification on the task seam: tumour-location classes of axial slices, a MONAI ResNet-18 topology."""

from omnifm.tasks.classification.labels import LOCATION_CLASSES, slice_classes
from omnifm.tasks.classification.task import ClsTask

__all__ = ["LOCATION_CLASSES", "ClsTask", "slice_classes"]
