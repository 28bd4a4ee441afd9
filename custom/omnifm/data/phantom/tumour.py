"""The tumour of a phantom case: random shape and size, nested BraTS sub-regions (oedema, enhancing
rim, necrotic core), mass effect, and the label map from the sub-sampled tumour levels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnifm.data.phantom.conventions import LABEL_ENHANCING, LABEL_NECROTIC, LABEL_OEDEMA

@dataclass(frozen=True, eq=False)
class _Tumour:
    """A tumour's random parameters (MNI mm)."""

    centre: np.ndarray
    radius: float  # whole-tumour (oedema) radius, mm
    axes: np.ndarray  # rotation (rows: principal axes) scaled by 1 / (radius * aspect)
    core: float  # core radius / whole radius
    necrosis: float  # necrosis radius / core radius
    waves: np.ndarray  # (3, W, 3) wave vectors of the three irregularity fields
    phases: np.ndarray  # (3, W)
    amps: np.ndarray  # (3, W)
    push: float  # mass-effect strength in [0, 1)


def _draw_tumour(rng: np.random.Generator, candidates: np.ndarray) -> _Tumour:
    """Random tumour: centre deep in white matter, size, shape, nesting and mass effect."""
    centre = candidates[rng.integers(len(candidates))] + rng.uniform(-1.0, 1.0, size=3)
    radius = rng.uniform(14.0, 34.0)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    orientation = q * np.sign(np.diag(r))
    aspect = rng.uniform(0.75, 1.25, size=3)
    waves = rng.uniform(-1.6, 1.6, size=(3, 6, 3)) * np.pi
    return _Tumour(
        centre=centre,
        radius=radius,
        axes=orientation.T / (radius * aspect)[:, None],
        core=rng.uniform(0.35, 0.65),
        necrosis=rng.uniform(0.45, 0.8),
        waves=waves,
        phases=rng.uniform(0.0, 2.0 * np.pi, size=(3, 6)),
        amps=rng.normal(size=(3, 6)),
        push=rng.uniform(0.15, 0.45),
    )


def _wave_field(points: np.ndarray, waves: np.ndarray, phases: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Smooth random field in ``[-1, 1]`` at ``(3, N)`` points: a sum of plane sinusoids."""
    return amps @ np.sin(waves @ points + phases[:, None]) / np.abs(amps).sum()


def _tumour_levels(tumour: _Tumour, points: np.ndarray) -> np.ndarray:
    """Nested tumour level per ``(3, N)`` template point: 0 none, 1 oedema, 2 enhancing, 3 necrosis.

    Radii are irregular (smooth random fields); the whole tumour always contains the core plus a
    margin of a quarter of the core radius, and the enhancing rim is at least that thick too.
    """
    local = tumour.axes @ (points - tumour.centre[:, None])
    radius = np.linalg.norm(local, axis=0)
    levels = np.zeros(radius.shape, dtype=np.int8)
    near = radius < 1.6
    u, r = local[:, near], radius[near]
    field = [_wave_field(u, tumour.waves[n], tumour.phases[n], tumour.amps[n]) for n in range(3)]
    core = r / (tumour.core * (1.0 + 0.25 * field[1]))
    whole = (r < 1.0 + 0.3 * field[0]) | (core < 1.25)
    necrosis = (r / (tumour.core * tumour.necrosis * (1.0 + 0.25 * field[2])) < 1.0) & (core < 0.75)
    levels[near] = np.where(necrosis, 3, np.where(core < 1.0, 2, np.where(whole, 1, 0)))
    return levels


def _mass_effect(tumour: _Tumour, points: np.ndarray) -> np.ndarray:
    """Where the tissue shown at each point comes from: pulled towards the tumour centre."""
    offset = points - tumour.centre[:, None]
    distance = np.linalg.norm(offset, axis=0)
    factor = 1.0 - tumour.push * np.exp(-((distance / tumour.radius) ** 2))
    return tumour.centre[:, None] + offset * factor


def _labels(levels: np.ndarray) -> np.ndarray:
    """BraTS labels from sub-sample levels ``(sub, H, W, D)`` by majority, preserving nesting."""
    whole, core, necrosis = ((levels >= n).mean(axis=0) >= 0.5 for n in (1, 2, 3))
    label = np.zeros(levels.shape[1:], dtype=np.uint8)
    label[whole] = LABEL_OEDEMA
    label[core] = LABEL_ENHANCING
    label[necrosis] = LABEL_NECROTIC
    return label
