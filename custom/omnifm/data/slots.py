"""A multi-modality model's input slots, filled from a site's cases with an explicit presence mask.

A fusion model (e.g. the CT+MRI classifier) reads each case as ``S`` image slots, each taking one
kind of modality (``(("ct", ("ct",)), ("mri", ("t1", "t1ce", "t2", "flair")))``). A site's modalities
are assigned to slots once (:func:`assign_slots`: each modality to exactly one slot, at most one per
slot); each case then becomes ``{"image": (S, H, W, D), "present": uint8 (S,), "label"}``
(:func:`to_slots`). A slot the case has no image for is **absent**: ``present`` is 0 and the channel
is zero only so that arrays stack; models must mask it (never read it as an image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omnifm.data.site_config import SiteConfigError

Slots = tuple[tuple[str, tuple[str, ...]], ...]


def assign_slots(modalities: Sequence[str], slots: Slots) -> dict[str, int]:
    """``{site modality: slot index}``.

    Raises:
        SiteConfigError: a modality fits no slot, or two of the site's modalities fit one slot.

    Examples::

        >>> assign_slots(["t1ce", "ct"], (("ct", ("ct",)), ("mri", ("t1", "t1ce"))))
        {'t1ce': 1, 'ct': 0}
    """
    assignment: dict[str, int] = {}
    for modality in modalities:
        fits = [j for j, (_, accepted) in enumerate(slots) if modality in accepted]
        if not fits:
            accepted = {name: list(kinds) for name, kinds in slots}
            raise SiteConfigError(f"this job's model has no input slot for modality {modality!r} (slots: {accepted}); "
                                  f'remove it from "modalities" in omnifm_site.json or use a model that reads it')
        assignment[modality] = fits[0]
    taken = [m for m in modalities if list(assignment.values()).count(assignment[m]) > 1]
    if taken:
        slot = slots[assignment[taken[0]]][0]
        raise SiteConfigError(f"modalities {taken} would all fill the model's {slot!r} slot, which takes one image; "
                              f'keep one of them in "modalities" in omnifm_site.json')
    return assignment


def to_slots(case: dict[str, np.ndarray], channels: Sequence[str], assignment: dict[str, int],
             num_slots: int) -> dict[str, np.ndarray]:
    """A loaded case with channel ``j`` of modality ``channels[j]`` rearranged into the slots.

    A single-image case has one channel (``channels`` = its modality) and no ``present``; a paired
    case (:mod:`omnifm.data.integrity`) has one channel per site modality and a ``present`` flag each.

    Examples::

        >>> case = {"image": np.ones((1, 2, 2, 1), np.float32), "label": np.zeros((1, 2, 2, 1), np.uint8)}
        >>> out = to_slots(case, ["t1ce"], {"t1ce": 1}, 2)
        >>> out["image"].shape, out["present"].tolist()
        ((2, 2, 2, 1), [0, 1])
    """
    image = np.asarray(case["image"], dtype=np.float32)
    present_in = np.asarray(case.get("present", np.ones(len(channels), np.uint8)))
    slotted = np.zeros((num_slots, *image.shape[1:]), dtype=np.float32)
    present = np.zeros(num_slots, dtype=np.uint8)
    for j, modality in enumerate(channels):
        if present_in[j]:
            slotted[assignment[modality]] = image[j]
            present[assignment[modality]] = 1
    return {**case, "image": slotted, "present": present}


def parse_slots(inputs: object) -> Slots:
    """A task's ``inputs`` setting as slot tuples: two or more named slots, each with known modalities, none shared.

    Raises:
        ValueError: naming the problem.

    Examples::

        >>> parse_slots({"ct": ["ct"], "mri": ["t1", "t2"]})
        (('ct', ('ct',)), ('mri', ('t1', 't2')))
    """
    from omnifm.data.modalities import MODALITIES

    pairs = list(inputs.items()) if isinstance(inputs, dict) else list(inputs)  # type: ignore[call-overload]
    slots = tuple((str(slot), tuple(kinds)) for slot, kinds in pairs)
    listed = [m for _, kinds in slots for m in kinds]
    if len(slots) < 2 or any(not kinds for _, kinds in slots):
        raise ValueError(f"task inputs must name two or more slots, each with its modalities; got {inputs!r}")
    unknown = sorted(set(listed) - set(MODALITIES))
    if unknown or len(set(listed)) != len(listed):
        raise ValueError(f"task inputs: unknown {unknown} or repeated modalities in {inputs!r} (known: {list(MODALITIES)})")
    return slots
