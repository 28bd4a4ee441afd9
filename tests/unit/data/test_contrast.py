"""The phantom's tumour contrast after the sites' normalisation: which region each modality shows.

Measured with :func:`omnifm.bench.contrast.contrast_table` (AUC of the normalised intensity,
region voxels vs grey- and white-matter voxels) on 3 small cases per modality. The thresholds are
tolerant bounds around values measured on 5 (seed, site, size) draws: T1CE and PET ET visibility
0.99-1.00; T2 WT 0.80-1.00, FLAIR WT 0.96-0.99; native T1 at most 0.76 in any region (ET 0.55-0.68).
Perfusion SPECT (hypo-perfused core and oedema, a rim whose perfusion varies from case to case,
all under a 12-18 mm blur): WT AUC vs GM 0.08-0.30 and vs WM 0.08-0.35 (the tumour is a cold
region), ET AUC vs GM 0.04-0.67 (never the hot spot it is in PET: 0.99-1.00).
"""

from __future__ import annotations

import numpy as np
import pytest

from omnifm.bench.contrast import contrast_markdown, contrast_table, roc_auc, visibility


@pytest.fixture(scope="module")
def table() -> dict:
    return contrast_table(cases=3, shape=(32, 32, 12), seed=0, site=0)


def _vis(table: dict, modality: str, region: str) -> float:
    return visibility(table[modality][region])


def test_each_modality_shows_the_region_it_should(table):
    shown = "\n" + contrast_markdown(table)
    assert _vis(table, "t1ce", "ET") >= 0.95 and _vis(table, "pet", "ET") >= 0.95, "ET enhances in T1CE and PET" + shown
    assert table["t1ce"]["ET"]["GM"] > 0.5 and table["pet"]["ET"]["GM"] > 0.5, "ET is bright there" + shown
    assert _vis(table, "t2", "WT") >= 0.75 and _vis(table, "flair", "WT") >= 0.9, "oedema shows in T2 and FLAIR" + shown
    assert table["t2"]["WT"]["GM"] > 0.5 and table["flair"]["WT"]["GM"] > 0.5, "oedema is bright there" + shown
    assert table["ct"]["WT"]["GM"] < 0.3, "oedema is hypodense in CT" + shown


def test_spect_shows_the_tumour_as_hypo_perfused(table):
    shown = "\n" + contrast_markdown(table)
    assert table["spect"]["WT"]["GM"] < 0.4 and table["spect"]["WT"]["WM"] < 0.45, "the tumour is cold" + shown
    assert _vis(table, "spect", "WT") >= 0.6, "a cold tumour is visible" + shown
    assert table["spect"]["ET"]["GM"] < table["pet"]["ET"]["GM"] - 0.25, "the rim is no PET hot spot" + shown
    assert table["spect"]["ET"]["GM"] < 0.75, "the blurred rim is at most mildly hyper-perfused" + shown


def test_native_t1_is_the_hard_case(table):
    shown = "\n" + contrast_markdown(table)
    assert max(_vis(table, "t1", r) for r in ("WT", "TC", "ET")) <= 0.7, "native T1 hides the tumour" + shown
    assert _vis(table, "t1", "ET") < _vis(table, "t1ce", "ET") - 0.25, "contrast agent makes ET visible" + shown


def test_roc_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40), np.concatenate([rng.normal(0, 1, 30), [1.0, 1.0]])
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(pos, neg) == pytest.approx(pairwise)
    assert roc_auc(np.ones(3), np.ones(4)) == 0.5 and roc_auc(np.ones(3), np.zeros(4)) == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        roc_auc(np.ones(3), np.array([]))
