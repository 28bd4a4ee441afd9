"""Slice classes derived from a segmentation ground truth: where the tumour is, not how it looks.

A slice's class is the quadrant of the axial plane its tumour lies in (hemisphere x front/back),
or ``no_tumour``. An intensity histogram is blind to location, so no per-site intensity rule can
solve the task; a site must learn where the tumour is relative to the head.

Axes are those of the RAS-oriented arrays every loaded case has: axis 0 points to the patient's
right, axis 1 to anterior. The quadrant is taken relative to the slice centre (the loaders and the
phantom centre the head in-plane). Slices whose tumour is too small, or whose tumour centroid lies
within ``margin`` of a midline, are ambiguous and get no class (-1): they are not trained on nor
scored.
"""

from __future__ import annotations

import numpy as np

from omnifm.validation import check_range

LOCATION_CLASSES = ("no_tumour", "right_anterior", "right_posterior", "left_anterior", "left_posterior")
UNLABELLED = -1


def slice_classes(label: np.ndarray, min_area: float = 0.005, margin: float = 0.03) -> np.ndarray:
    """The class of every axial slice of a label volume.

    Args:
        label: ``(1, H, W, D)`` class-index volume (any value > 0 is tumour).
        min_area: smallest tumour area, as a fraction of the slice, that gets a quadrant class.
        margin: half-width of the ambiguous band around each midline, as a fraction of the slice size.

    Returns:
        ``(D,)`` int64: 0 ``no_tumour``, 1-4 the quadrants of :data:`LOCATION_CLASSES`, -1 ambiguous.

    Examples::

        >>> label = np.zeros((1, 10, 10, 3), np.uint8)
        >>> label[0, 7:9, 7:9, 1] = 2   # right, anterior
        >>> label[0, 1:3, 1:3, 2] = 1   # left, posterior
        >>> slice_classes(label, min_area=0.01).tolist()
        [0, 1, 4]
    """
    check_range("min_area", min_area, 0, 1)
    check_range("margin", margin, 0, 0.5, high_open=True)
    tumour = np.asarray(label)[0] > 0  # (H, W, D)
    height, width, depth = tumour.shape
    out = np.full(depth, UNLABELLED, dtype=np.int64)
    rows, cols = np.arange(height) - (height - 1) / 2, np.arange(width) - (width - 1) / 2
    for z in range(depth):
        mask = tumour[..., z]
        area = int(mask.sum())
        if area == 0:
            out[z] = 0
            continue
        if area < min_area * height * width:
            continue
        right, anterior = (mask.sum(1) @ rows) / area, (mask.sum(0) @ cols) / area
        if abs(right) < margin * height or abs(anterior) < margin * width:
            continue
        out[z] = 1 + 2 * int(right < 0) + int(anterior < 0)
    return out
