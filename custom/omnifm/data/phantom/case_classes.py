"""Per-case classes for the phantom, so the classifier's case mode runs end to end on it.

Asked for only by a case-mode classification job (``labels: "case"``, see
:mod:`omnifm.tasks.classification.case_labels`): :func:`write_hemisphere_datalist` writes a
*second* datalist next to a phantom site's ``datalist.json`` (which stays as it is), whose entries
carry ``"class"`` by the **hemisphere rule**: ``no_tumour`` for a tumour-free case, else ``right``
or ``left`` by the side of the whole tumour's centroid (all voxels with label > 0) relative to the
centre of the RAS axis 0 (which points to the patient's right; a centroid exactly on the centre
counts as ``right``). The classes are :data:`HEMISPHERE_CLASSES`, in this order.

A left-right flip changes this class, so a job on it trains with ``mirror: false`` (the case mode
keeps a class under mirroring, as a diagnosis would be kept).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HEMISPHERE_CLASSES", "HEMISPHERE_DATALIST", "hemisphere_class", "write_hemisphere_datalist"]

HEMISPHERE_CLASSES = ("no_tumour", "right", "left")
HEMISPHERE_DATALIST = "datalist.hemisphere.json"


def hemisphere_class(label: np.ndarray) -> str:
    """The hemisphere rule's class of one ``(H, W, D)`` RAS label volume.

    Examples::

        >>> label = np.zeros((4, 2, 2), np.uint8)
        >>> hemisphere_class(label)
        'no_tumour'
        >>> label[3, 0, 0] = 2
        >>> hemisphere_class(label)
        'right'
    """
    rows = np.nonzero(np.asarray(label) > 0)[0]
    if rows.size == 0:
        return "no_tumour"
    return "right" if rows.mean() >= (label.shape[0] - 1) / 2 else "left"


def write_hemisphere_datalist(site_dir: str | Path) -> str:
    """Write ``datalist.hemisphere.json``: the site's datalist with a ``"class"`` per case; its file name.

    The file is rewritten only when its content changes (the site's data cache follows its
    modification time).
    """
    from omnifm.data.phantom.site_writer import DATALIST_NAME, write_json

    root = Path(site_dir)
    entries = json.loads((root / DATALIST_NAME).read_text())["cases"]
    write_json(root / HEMISPHERE_DATALIST, {"cases": [_with_class(root, entry) for entry in entries]}, keep_if_same=True)
    return HEMISPHERE_DATALIST


def _with_class(root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    import nibabel as nib  # MONAI's NIfTI reader; the phantom's labels are NIfTI

    label = np.asarray(nib.as_closest_canonical(nib.load(root / entry["label"])).dataobj)  # RAS, as loaded for training
    return {**entry, "class": hemisphere_class(label.reshape(label.shape[:3]))}
