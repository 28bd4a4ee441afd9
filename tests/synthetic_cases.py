"""Shared test fixtures-as-functions: a tiny UNet size, synthetic labelled volumes, a fake FLARE engine.

Importable as ``synthetic_cases`` from any test (pytest puts ``tests/`` on ``sys.path`` for its
rootdir ``conftest.py``).
"""

from __future__ import annotations

import numpy as np

SMALL = {"channels": [8, 16, 32], "strides": [2, 2]}
"""A UNet small enough for CPU unit tests."""


def volumes(n: int, seed: int, contrast: float = 2.0) -> list[dict[str, np.ndarray]]:
    """``n`` cases of 1x32x32x4: Gaussian noise plus ``contrast`` inside one box labelled 1."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        label = np.zeros((1, 32, 32, 4), np.uint8)
        label[0, 10:20, 12:22, 1:3] = 1
        image = rng.normal(0, 0.3, (1, 32, 32, 4)).astype(np.float32) + contrast * label
        cases.append({"image": image, "label": label})
    return cases


def quadrant_cases(n: int, seed: int, channels: int = 1) -> list[dict[str, np.ndarray]]:
    """``n`` cases of ``channels``x24x24x4: a box labelled 2 in a random off-centre quadrant of the middle
    slices, visible (+1) in every channel over Gaussian noise (the classification tests' location task)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        label = np.zeros((1, 24, 24, 4), np.uint8)
        y, x = rng.choice([3, 15]), rng.choice([3, 15])
        label[0, y:y + 6, x:x + 6, 1:3] = 2
        image = rng.normal(0, 0.3, (channels, 24, 24, 4)).astype(np.float32) + label.astype(np.float32)
        cases.append({"image": image, "label": label})
    return cases


class FakeWorkspace:
    def __init__(self, root):
        self.root = str(root)

    def get_root_dir(self):
        return self.root


class FakeEngine:
    """What the executor asks of FLARE's engine: a workspace; every other call is a no-op."""

    def __init__(self, root):
        self.workspace = FakeWorkspace(root)

    def get_workspace(self):
        return self.workspace

    def __getattr__(self, name):  # fire_event etc.
        return lambda *args, **kwargs: None


def assert_each_present_slot_reaches(logits, x, present, names) -> None:
    """For each present slot ``s`` of ``x`` (``(B, 2S, H, W)``: images then presence planes), noise in its
    image must change ``logits(x)`` (by more than 1e-4); ``names[s]`` names the slot in the failure."""
    import torch

    with torch.no_grad():
        base = logits(x)
        for s, p in enumerate(present):
            if p:
                changed = x.clone()
                changed[:, s] = torch.randn_like(changed[:, s])
                assert (base - logits(changed)).abs().max() > 1e-4, f"{names[s]} does not reach the logits"
