"""Data settings of the benchmark: Dirichlet skew, case picking, federation loading."""

from __future__ import annotations

import pytest

from omnifm.bench.settings import PAIRED_SETTINGS, SETTINGS, DataConfig, check_setting, dirichlet_plan, load_federation, pick_cases
from omnifm.data.loading import split_cases
from omnifm.tasks.segmentation import SegTask


@pytest.mark.parametrize("sites, cases, alpha, seed", [(3, 12, 0.5, 0), (4, 6, 0.5, 1), (2, 10, 100.0, 2)])
def test_dirichlet_plan_keeps_the_pooled_budget(sites, cases, alpha, seed):
    plan = dirichlet_plan(sites, cases, alpha, seed, min_cases=3)
    assert len(plan) == sites
    assert sum(n for n, _ in plan) == sites * cases
    assert all(n >= 3 and 0.0 <= f <= 1.0 for n, f in plan)
    assert plan == dirichlet_plan(sites, cases, alpha, seed, min_cases=3), "deterministic per seed"


def test_small_alpha_skews_more_than_large_alpha():
    def spread(alpha: float) -> float:
        sizes = [n for seed in range(20) for n, _ in dirichlet_plan(3, 12, alpha, seed, min_cases=2)]
        return max(sizes) - min(sizes)

    assert spread(0.5) > spread(1000.0)
    fractions = [f for seed in range(20) for _, f in dirichlet_plan(3, 12, 0.5, seed)]
    assert min(fractions) < 0.1 and max(fractions) > 0.9, "Beta(0.5, 0.5) is U-shaped"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sites": 3, "cases": 2, "alpha": 0.5, "seed": 0, "min_cases": 4}, "min_cases (4) must be <= cases (2)"),
        ({"sites": 3, "cases": 8, "alpha": 0.0, "seed": 0}, "alpha"),
        ({"sites": 0, "cases": 8, "alpha": 0.5, "seed": 0}, "sites"),
    ],
)
def test_dirichlet_plan_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dirichlet_plan(**kwargs)


@pytest.mark.parametrize("size, fraction, test_fraction", [(4, 0.0, 0.0), (8, 0.5, 0.0), (10, 1.0, 0.25), (6, 0.01, 0.25)])
def test_pick_cases_puts_a_tumour_case_in_every_split_part(size, fraction, test_fraction):
    flags = [i % 3 == 0 for i in range(40)]  # every third pool case is tumour-free
    chosen = pick_cases(flags, size, fraction, 0.25, seed=3, test_fraction=test_fraction)
    assert len(chosen) == size == len(set(chosen))
    parts = [p for p in split_cases(size, 0.25, 3, test_fraction) if p]
    assert len(parts) == (3 if test_fraction else 2)
    assert all(any(not flags[chosen[i]] for i in part) for part in parts)
    n_free = sum(flags[i] for i in chosen)
    assert n_free == min(size - max(round(fraction * size), len(parts)), sum(flags))


def test_pick_cases_needs_tumour_cases():
    with pytest.raises(ValueError, match="cannot give 4 cases"):
        pick_cases([True] * 10 + [False], 4, 0.5, 0.25, 0)


def test_data_config_and_setting_checks():
    with pytest.raises(ValueError, match="min_cases"):
        DataConfig(cases=3, min_cases=4)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        DataConfig(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="unknown setting 'iid'"):
        check_setting("iid")
    assert DataConfig(shape=(16, 16, 4)).to_dict()["shape"] == [16, 16, 4]


@pytest.fixture(scope="module")
def federations(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_cache")
    data = DataConfig(sites=3, cases=4, shape=(16, 16, 8), min_cases=2, pool_factor=4, test_fraction=0.0)
    task = SegTask.from_dict(None)
    return {s: load_federation(s, data, 0, root, task) for s in SETTINGS if s not in PAIRED_SETTINGS}


def test_settings_give_the_promised_modalities(federations):
    modalities = {s: [v["modality"] for _, v in sorted(summary.items())] for s, (_, summary) in federations.items()}
    assert modalities == {
        "cross-modality": ["t1ce", "ct", "t2"], "cross-modality+t1": ["t1ce", "ct", "t2", "t1"],
        "same-modality": ["t1ce"] * 3, "dirichlet": ["t1ce", "ct", "t2"], "same-modality-t2": ["t2"] * 3,
        "modality-clients": ["t1ce", "t2", "flair"], "sequence-subsets-flair": ["flair"] * 3,
    }


def test_the_test_split_is_held_out(tmp_path):
    data = DataConfig(sites=2, cases=8, shape=(16, 16, 8), val_fraction=0.25, test_fraction=0.25)
    sites, summary = load_federation("cross-modality", data, 1, tmp_path, SegTask.from_dict(None))
    assert all((v["train_cases"], v["val_cases"], v["test_cases"]) == (4, 2, 2) for v in summary.values())
    assert all(len(d.test) == 2 for d in sites.values())


def test_cross_modality_matches_the_simulator_fallback_data(federations, tmp_path):
    from omnifm.data.site import load_site_data, simulator_config

    sites, _ = federations["cross-modality"]
    config = simulator_config("site-2", 4, (16, 16, 8), 0.25, 0)  # the FLARE executor's call: no test split
    flare = load_site_data(config, tmp_path, "site-2", SegTask.from_dict(None))
    assert [c["image"].tobytes() for c in flare.train] == [c["image"].tobytes() for c in sites["site-2"].train]


def test_dirichlet_sites_sum_to_the_budget_and_keep_tumours_in_val(federations):
    _, summary = federations["dirichlet"]
    assert sum(v["train_cases"] + v["val_cases"] for v in summary.values()) == 3 * 4
    assert all(v["val_tumour_cases"] >= 1 and v["train_tumour_cases"] >= 1 for v in summary.values())


def test_the_fusion_setting_gives_paired_sites_and_refuses_a_single_image_task(tmp_path):
    from omnifm.tasks.image_fusion import FusionTask

    data = DataConfig(sites=3, cases=4, shape=(16, 16, 8), min_cases=2, test_fraction=0.0)
    sites, summary = load_federation("fusion-pairs", data, 0, tmp_path, FusionTask())
    assert [summary[s]["modality"] for s in sorted(summary)] == ["ct+t1", "pet+t1", "spect+t1"]
    for site in sites.values():
        assert all(case["image"].shape[0] == 2 and case["present"].tolist() == [1, 1] for case in site.train + site.val)
    with pytest.raises(ValueError, match="fusion-pairs setting holds paired cases.*input slots"):
        load_federation("fusion-pairs", data, 0, tmp_path, SegTask.from_dict(None))
