"""How visible the tumour is in each phantom modality after the sites' normalisation.

Per modality, :func:`contrast_table` renders a few phantom cases through a site acquisition,
normalises them exactly as a site does (:func:`omnifm.data.normalize.normalize_intensity`) and
measures, per tumour region, the ROC AUC of the normalised intensity separating the region's
voxels from each normal parenchyma tissue: grey matter (GM) and white matter (WM) voxels, i.e.
label 0 and at least half that tissue. ``AUC > 0.5``: the region is brighter than the tissue,
``< 0.5``: darker, ``0.5``: invisible by intensity. A region is only as visible as its contrast to
the tissue it resembles most: :func:`visibility` is ``min over GM, WM of max(AUC, 1 - AUC)``
(0.5 = invisible against one of them, 1 = perfectly separated from both).

Regions are BraTS': WT (labels 1, 2, 4), TC (1, 4), ET (4).

Examples::

    >>> table = contrast_table(("t1ce", "t2"), cases=2, shape=(32, 32, 12))
    >>> sorted(table["t1ce"]["ET"])
    ['GM', 'WM']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from omnifm.data.modalities import MODALITIES
from omnifm.data.normalize import normalize_intensity
from omnifm.data.phantom import Tissue, make_phantom_anatomy, render_modality, site_acquisition
from omnifm.validation import check_int

REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
NORMAL = {"GM": Tissue.GREY_MATTER, "WM": Tissue.WHITE_MATTER}
_STREAM = 11  # seed-sequence tag of this measurement's case draws


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive > negative) + 0.5 P(equal), from ranks (the Mann-Whitney U statistic / n1 n0).

    Raises:
        ValueError: either sample is empty.
    """
    positive, negative = np.ravel(positive), np.ravel(negative)
    if positive.size == 0 or negative.size == 0:
        raise ValueError(f"both samples must be non-empty, got {positive.size} and {negative.size} values")
    ranks = rankdata(np.concatenate([positive, negative]))
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2
    return float(u / (positive.size * negative.size))


def _case_voxels(modality: str, rng: np.random.Generator, shape: tuple[int, int, int], site: int) -> tuple:
    acquisition = site_acquisition(modality, 0, site)
    anatomy = make_phantom_anatomy(rng, shape, acquisition)
    image = normalize_intensity(render_modality(anatomy, modality, acquisition, rng)[None], modality)[0]
    normal = {name: (anatomy.label == 0) & (anatomy.fractions[tissue] >= 0.5) for name, tissue in NORMAL.items()}
    return image, anatomy.label, normal


def contrast_table(
    modalities: Sequence[str] = MODALITIES, cases: int = 4, shape: tuple[int, int, int] = (48, 48, 16),
    seed: int = 0, site: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{modality: {region: {"GM": AUC, "WM": AUC}}}`` over ``cases`` phantom cases per modality (voxels pooled).

    The same anatomies (same seed) are rendered in every modality, so the modalities differ only
    in physics and acquisition. A region without voxels in any case gives NaN.

    Args:
        modalities: modalities to measure.
        cases: phantom cases per modality (tumour-free draws are skipped and redrawn).
        shape: phantom volume size ``(H, W, D)``.
        seed: anatomy seed.
        site: site index of the acquisitions (:func:`~omnifm.data.phantom.site_acquisition`).
    """
    check_int("cases", cases)
    table = {}
    for modality in modalities:
        rng = np.random.default_rng([_STREAM, check_int("seed", seed, 0)])
        pooled: dict[str, list[np.ndarray]] = {name: [] for name in (*REGIONS, *NORMAL)}
        found = 0
        while found < cases:
            image, label, normal = _case_voxels(modality, rng, shape, site)
            if not (label > 0).any():
                continue
            found += 1
            for name, mask in normal.items():
                pooled[name].append(image[mask])
            for name, values in REGIONS.items():
                pooled[name].append(image[np.isin(label, values)])
        voxels = {name: np.concatenate(parts) for name, parts in pooled.items()}
        table[modality] = {r: {n: _auc_or_nan(voxels[r], voxels[n]) for n in NORMAL} for r in REGIONS}
    return table


def visibility(aucs: dict[str, float]) -> float:
    """``min over tissues of max(AUC, 1 - AUC)`` of one region's ``{"GM": AUC, "WM": AUC}``."""
    return min(max(auc, 1.0 - auc) for auc in aucs.values())


def _auc_or_nan(positive: np.ndarray, negative: np.ndarray) -> float:
    return roc_auc(positive, negative) if positive.size and negative.size else float("nan")


def contrast_markdown(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table of :func:`contrast_table`: per region ``AUC vs GM / vs WM (visibility)``."""
    lines = ["| modality | " + " | ".join(f"{r}: AUC vs GM / WM (visibility)" for r in REGIONS) + " |",
             "|---|" + "---|" * len(REGIONS)]
    for modality, row in table.items():
        cells = [f"{row[r]['GM']:.2f} / {row[r]['WM']:.2f} ({visibility(row[r]):.2f})" for r in REGIONS]
        lines.append(f"| {modality} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``omnifm-bench contrast``: the tumour-contrast table, written to ``--out`` as contrast.json / contrast.md."""
    import json
    import sys

    from omnifm.bench.subcommands import contrast_parser

    args = contrast_parser().parse_args(argv)
    table = contrast_table(MODALITIES, args.cases, tuple(args.shape), args.seed, args.site)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "omnifm-bench contrast " + " ".join(argv if argv is not None else sys.argv[2:])
    (args.out / "contrast.json").write_text(json.dumps({"command": command, **vars(args), "out": str(args.out),
                                                        "auc": table}, indent=1))
    text = contrast_markdown(table)
    (args.out / "contrast.md").write_text(text + "\n")
    print(text)
    return 0
