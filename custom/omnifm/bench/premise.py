"""The paper's premise, measured on the phantom: is the low-frequency spectrum shared across modalities?

OmniFM assumes that the low-frequency part of an image's amplitude spectrum is consistent across
imaging modalities, so a spectral token can match an image to knowledge from sites imaging other
modalities. :func:`measure_premise` tests that on the built-in phantom:

1. draw ``cases`` anatomies and render **each one in every modality** (the same tissue fractions,
   tumour and grid; each modality through its own site acquisition: noise, bias, PSF, gain), then
   normalise each volume as a site does (:func:`omnifm.data.normalize.normalize_intensity`);
2. per axial slice with brain in it, take the project's spectrum
   (:func:`omnifm.modules.spectral_encoder.fft_magnitude`: centred ``log1p |FFT|``) and its
   low-pass centre crop at each ``fraction`` (:func:`~omnifm.modules.spectral_encoder.low_pass_crop`),
   flattened: ``raw``; and the same per-image standardised (zero mean, unit std): ``standardised``,
   what a standardising tokenizer sees;
3. **distance ratio** = mean Euclidean distance between the same slice of the same anatomy in two
   different modalities, divided by the mean distance between the same slice index of two
   different anatomies in one modality. The premise needs a ratio well below 1;
4. **1-NN modality identification**: for each slice, its nearest neighbour among the slices of the
   *other* anatomies (all modalities); the accuracy is the share whose neighbour has the same
   modality. Chance is ``1 / len(modalities)``; if the low-pass spectrum were modality-invariant,
   accuracy would sit near chance.

Examples::

    >>> result = measure_premise(modalities=("t1ce", "ct"), cases=2, shape=(32, 32, 6), fractions=(0.25,))
    >>> sorted(result["rows"][0])
    ['cross_modality_same_anatomy', 'fraction', 'nn_modality_accuracy', 'ratio', 'same_modality_other_anatomy', 'variant']
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from omnifm.bench.record import git_info, machine_info, write_json
from omnifm.bench.subcommands import PREMISE_FRACTIONS, premise_parser
from omnifm.data.normalize import normalize_intensity
from omnifm.data.phantom import SITE_MODALITIES, make_phantom_anatomy, render_modality, site_acquisition
from omnifm.modules.spectral_encoder import fft_magnitude, low_pass_crop
from omnifm.validation import check_int

FRACTIONS = PREMISE_FRACTIONS
VARIANTS = ("raw", "standardised")
_STREAM = 13  # seed-sequence tag of the anatomy draws
_MIN_BRAIN = 0.1  # a slice counts if at least this share of its pixels is brain


def render_same_anatomy(
    modalities: Sequence[str], cases: int, shape: tuple[int, int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, keep)``: ``images[a, m]`` is anatomy ``a`` in modality ``m``, normalised, ``(H, W, D)``;
    ``keep[a, z]`` marks slices with brain (all modalities share the anatomy, hence the mask)."""
    images = np.zeros((cases, len(modalities), *shape), dtype=np.float32)
    keep = np.zeros((cases, shape[2]), dtype=bool)
    geometry = site_acquisition(modalities[0], seed, 0)
    for a in range(check_int("cases", cases)):
        rng = np.random.default_rng([_STREAM, check_int("seed", seed, 0), a])
        anatomy = make_phantom_anatomy(rng, shape, geometry)
        keep[a] = (anatomy.brain >= 0.5).mean(axis=(0, 1)) >= _MIN_BRAIN
        for m, modality in enumerate(modalities):
            acquisition = site_acquisition(modality, seed, SITE_MODALITIES.index(modality))
            image = render_modality(anatomy, modality, acquisition, np.random.default_rng([_STREAM, seed, a, m]))
            images[a, m] = normalize_intensity(image[None], modality)[0]
    return images, keep


def low_pass_vectors(images: np.ndarray, fraction: float, standardise: bool) -> np.ndarray:
    """``(cases, modalities, D, features)`` flattened low-pass log-magnitude spectra of the axial slices."""
    cases, mods, height, width, depth = images.shape
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 2))).reshape(-1, 1, height, width)
    spec = low_pass_crop(fft_magnitude(slices, spatial_dims=2), 2, fraction).reshape(slices.shape[0], -1).double()
    if standardise:
        spec = (spec - spec.mean(1, keepdim=True)) / spec.std(1, keepdim=True).clamp_min(1e-6)
    return spec.reshape(cases, mods, depth, -1).numpy()


def _distances(vectors: np.ndarray, keep: np.ndarray) -> tuple[float, float]:
    """(cross-modality same-anatomy, same-modality other-anatomy) mean distances over kept slices."""
    cases, mods, depth, _ = vectors.shape
    cross = [np.linalg.norm(vectors[a, m1, z] - vectors[a, m2, z])
             for a in range(cases) for z in range(depth) if keep[a, z]
             for m1, m2 in itertools.combinations(range(mods), 2)]
    other = [np.linalg.norm(vectors[a1, m, z] - vectors[a2, m, z])
             for a1, a2 in itertools.combinations(range(cases), 2) for z in range(depth) if keep[a1, z] and keep[a2, z]
             for m in range(mods)]
    return float(np.mean(cross)), float(np.mean(other))


def _nn_accuracy(vectors: np.ndarray, keep: np.ndarray) -> float:
    """Share of slices whose nearest neighbour among the other anatomies' slices has the same modality."""
    cases, mods, depth, features = vectors.shape
    index = [(a, m, z) for a in range(cases) for m in range(mods) for z in range(depth) if keep[a, z]]
    flat = np.stack([vectors[a, m, z] for a, m, z in index])
    anatomy = np.array([a for a, _, _ in index])
    modality = np.array([m for _, m, _ in index])
    squared = (flat**2).sum(1)
    dist = squared[:, None] + squared[None, :] - 2 * flat @ flat.T
    dist[anatomy[:, None] == anatomy[None, :]] = np.inf
    return float(np.mean(modality[np.argmin(dist, axis=1)] == modality))


def measure_premise(
    modalities: Sequence[str] = SITE_MODALITIES, cases: int = 6, shape: tuple[int, int, int] = (48, 48, 16),
    fractions: Sequence[float] = FRACTIONS, seed: int = 0,
) -> dict[str, Any]:
    """The premise measurement (see the module docstring); a JSON-able dict with one row per
    (variant, fraction) and the setup."""
    if len(modalities) < 2 or check_int("cases", cases) < 2:
        raise ValueError(f"need >= 2 modalities and >= 2 cases, got {len(modalities)} and {cases}")
    start = time.perf_counter()
    images, keep = render_same_anatomy(tuple(modalities), cases, tuple(shape), seed)
    rows = []
    for variant in VARIANTS:
        for fraction in fractions:
            vectors = low_pass_vectors(images, fraction, standardise=variant == "standardised")
            cross, other = _distances(vectors, keep)
            rows.append({"variant": variant, "fraction": float(fraction), "cross_modality_same_anatomy": cross,
                         "same_modality_other_anatomy": other, "ratio": cross / other,
                         "nn_modality_accuracy": _nn_accuracy(vectors, keep)})
    return {
        "modalities": list(modalities), "cases": cases, "shape": list(shape), "seed": seed,
        "slices_per_modality": int(keep.sum()), "chance": 1.0 / len(modalities), "rows": rows,
        "seconds": time.perf_counter() - start,
    }


def premise_markdown(result: dict[str, Any]) -> str:
    """Markdown table of :func:`measure_premise`."""
    lines = [
        f"{result['cases']} anatomies x {len(result['modalities'])} modalities ({', '.join(result['modalities'])}), "
        f"{result['slices_per_modality']} brain slices per modality, {'x'.join(map(str, result['shape']))} voxels; "
        f"1-NN chance {100 * result['chance']:.0f} %.",
        "",
        "| spectrum | low-pass fraction | cross-modality, same anatomy | same modality, other anatomy | ratio | 1-NN modality id |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['variant']} | {row['fraction']:g} | {row['cross_modality_same_anatomy']:.3f} "
            f"| {row['same_modality_other_anatomy']:.3f} | {row['ratio']:.2f} | {100 * row['nn_modality_accuracy']:.0f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``omnifm-bench premise``: measure the premise, write ``premise.json`` and ``premise.md`` into ``--out``."""
    args = premise_parser().parse_args(argv)
    modalities = args.modalities or list(SITE_MODALITIES)
    result = measure_premise(modalities, args.cases, tuple(args.shape), args.fractions, args.seed)
    context = {"command": "omnifm-bench premise " + " ".join(argv if argv is not None else sys.argv[2:]),
               "git": git_info(), "machine": machine_info()}
    write_json(args.out / "premise.json", {**context, **result})
    text = premise_markdown(result)
    (args.out / "premise.md").write_text(text + "\n")
    print(text)
    print(f"wrote {args.out / 'premise.json'} and premise.md ({result['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
