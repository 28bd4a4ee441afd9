"""fedunetmm-quick: FedUNetMM on the job's sequence subsets vs the single-sequence (FLAIR) UNet on the same cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omnifm.bench.metrics import section
from omnifm.bench.presets import (
    FEDUNETMM_ALGORITHMS,
    FEDUNETMM_SPEC_ARGS,
    UNET_SPEC_ARGS,
    build_grid,
    customize,
    get_preset,
    tuning_grid,
)
from omnifm.bench.report import baseline_comparisons, markdown
from omnifm.bench.settings import (
    BASELINE_SETTINGS,
    SEQUENCE_BASELINE,
    SEQUENCE_SUBSETS,
    DataConfig,
    load_federation,
    sequence_subset,
)
from omnifm.bench.tune import select_learning_rates, tuning_key
from omnifm.tasks import get_task

JOBS = Path(__file__).resolve().parents[3] / "jobs"
PAIRED, FLAIR = "sequence-subsets", "sequence-subsets-flair"
ARM = {"sequence-subsets [inputs=t1+t1ce+t2+flair]": "fedunetmm", FLAIR: "unet"}


def _job(name: str) -> tuple[dict, dict]:
    """(persistor args, executor args) of a shipped job."""
    config = JOBS / name / "app" / "config"
    server = json.loads((config / "config_fed_server.json").read_text())
    persistor = next(c for c in server["components"] if c["id"] == "persistor")["args"]
    client = json.loads((config / "config_fed_client.json").read_text())
    return persistor, client["executors"][0]["executor"]["args"]


def test_the_sites_hold_the_fedunetmm_jobs_sequence_subsets_and_every_subset_has_the_baseline():
    _, executor = _job("omnifm_seg_fedunetmm")
    job = executor["phantom_modalities"]
    assert [list(sequence_subset(i)) for i in range(len(job))] == [job[f"site-{i + 1}"] for i in range(len(job))]
    assert list(SEQUENCE_SUBSETS) == [tuple(job[f"site-{i + 1}"]) for i in range(len(job))]
    assert all(SEQUENCE_BASELINE in subset for subset in SEQUENCE_SUBSETS)
    assert get_preset("fedunetmm-quick").data.sites == len(job)


def test_the_fedunetmm_arm_is_the_job_as_shipped():
    persistor, executor = _job("omnifm_seg_fedunetmm")
    preset = get_preset("fedunetmm-quick")
    spec_args = dict(preset.setting_spec_args).get(PAIRED, preset.spec_args)
    assert spec_args == FEDUNETMM_SPEC_ARGS
    assert get_task(spec_args["task"]) == get_task(persistor["task"])
    assert spec_args["model"] == persistor["model"] and spec_args["omnifm"] == persistor["omnifm"]
    assert {k: spec_args[k] for k in ("top_k", "align_weight", "num_prototypes", "prox_mu")} == {
        k: persistor[k] for k in ("top_k", "align_weight", "num_prototypes", "prox_mu")}
    assert preset.bank_args == persistor["bank"]
    assert {k: executor[k] for k in preset.train} == preset.train
    assert tuple(executor["phantom_shape"]) == preset.data.shape


def test_the_unet_arm_is_the_default_segmentation_jobs_unet_without_input_slots():
    persistor, _ = _job("omnifm_seg")
    assert UNET_SPEC_ARGS["model"] == persistor["model"]
    assert get_task(UNET_SPEC_ARGS["task"]) == get_task(persistor["task"])
    assert get_task(UNET_SPEC_ARGS["task"]).input_slots is None
    assert {k: v for k, v in UNET_SPEC_ARGS.items() if k not in ("task", "model")} == {
        k: v for k, v in FEDUNETMM_SPEC_ARGS.items() if k not in ("task", "model")}, "same OmniFM sizes"


def test_both_arms_run_the_same_methods_budget_seeds_and_data_with_their_own_network():
    preset = get_preset("fedunetmm-quick")
    rates = {tuning_key(a, s): 0.01 if s == PAIRED else 0.03 for a in FEDUNETMM_ALGORITHMS for s in preset.settings}
    grid = build_grid(preset, rates)
    arms = {PAIRED: FEDUNETMM_ALGORITHMS, FLAIR: FEDUNETMM_ALGORITHMS}
    assert len({r.run_id for r in grid}) == len(grid) == sum(map(len, arms.values())) * len(preset.seeds)
    assert len({(r.rounds, r.train["local_epochs"], r.train["batch_size"], r.data) for r in grid}) == 1
    assert {"fedavg", "omnifm", "local", "central"} == set(FEDUNETMM_ALGORITHMS)
    for setting in preset.settings:
        mine = [r for r in grid if r.setting == setting]
        assert {(r.algorithm, r.seed) for r in mine} == {(a, s) for a in arms[setting] for s in preset.seeds}
        assert all(r.train["learning_rate"] == (0.01 if setting == PAIRED else 0.03) for r in mine)
    every = build_grid(customize(preset, algorithms=FEDUNETMM_ALGORITHMS))
    assert {(r.setting, r.algorithm) for r in every} == {(s, a) for s in preset.settings for a in FEDUNETMM_ALGORITHMS}
    kinds = {r.setting: r.spec()["model"].get("kind", "unet") for r in grid}
    assert kinds == {PAIRED: "fedunetmm", FLAIR: "unet"}
    assert {ARM[section(r.to_dict())] for r in grid} == {"fedunetmm", "unet"}, "one report section per arm"
    assert [r.seed for r in grid] == sorted(r.seed for r in grid), "seed by seed: a cut-short grid stays paired"
    assert BASELINE_SETTINGS[PAIRED] == FLAIR


def test_tuning_covers_both_arms_and_chooses_per_algorithm_and_setting():
    preset = get_preset("fedunetmm-quick")
    tuning = tuning_grid(preset)
    assert {(r.setting, r.algorithm) for r in tuning} == {(r.setting, r.algorithm) for r in build_grid(preset)}
    assert {r.seed for r in tuning}.isdisjoint(preset.seeds)
    assert len(tuning) == len({(r.setting, r.algorithm) for r in tuning}) * len(preset.lr_grid)

    def run(algorithm, setting, lr, dice):
        return {"config": {"algorithm": algorithm, "setting": setting, "group": "tuning", "seed": 100,
                           "train": {"learning_rate": lr}}, "rounds": [{"sites": {"a": {"dice": dice}}}]}

    runs = [run("fedavg", PAIRED, 0.003, 0.5), run("fedavg", PAIRED, 0.03, 0.1),
            run("fedavg", FLAIR, 0.003, 0.1), run("fedavg", FLAIR, 0.03, 0.4)]
    assert select_learning_rates(runs, 1) == {"fedavg@sequence-subsets": 0.003, "fedavg@sequence-subsets-flair": 0.03}
    assert select_learning_rates(runs[:2], 1) == {"fedavg": 0.003}, "one setting: the old per-algorithm keys"
    only = customize(preset, settings=[FLAIR])
    assert {r.setting for r in tuning_grid(only)} == {FLAIR}


def test_a_spec_override_reaches_both_arms():
    preset = customize(get_preset("fedunetmm-quick"), spec_overrides={"top_k": 3})
    assert {r.spec()["top_k"] for r in build_grid(preset)} == {3}
    assert {r.spec()["model"].get("kind", "unet") for r in build_grid(preset)} == {"fedunetmm", "unet"}


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedunetmm_bench")
    data = DataConfig(sites=3, cases=6, shape=(16, 16, 8), val_fraction=0.2, test_fraction=0.34, min_cases=2)
    paired = load_federation(PAIRED, data, 0, root, get_task(FEDUNETMM_SPEC_ARGS["task"]))
    flair = load_federation(FLAIR, data, 0, root, get_task(UNET_SPEC_ARGS["task"]))
    return paired, flair


def test_the_unet_arm_reads_only_flair_of_the_very_same_cases(arms):
    (paired, paired_summary), (flair, flair_summary) = arms
    assert [paired_summary[s]["modality"] for s in sorted(paired_summary)] == ["+".join(m) for m in SEQUENCE_SUBSETS]
    assert [flair_summary[s]["modality"] for s in sorted(flair_summary)] == [SEQUENCE_BASELINE] * 3
    slot = [name for name, _ in get_task(FEDUNETMM_SPEC_ARGS["task"]).input_slots].index(SEQUENCE_BASELINE)
    for site in paired:
        for split in ("train", "val", "test"):
            mine, theirs = getattr(paired[site], split), getattr(flair[site], split)
            assert len(mine) == len(theirs) > 0, (site, split)
            for multi, single in zip(mine, theirs):
                assert single["image"].shape[0] == 1 and "present" not in single, "one image, no slots"
                assert np.array_equal(multi["label"], single["label"]), "same case, same split"
                np.testing.assert_array_equal(multi["image"][slot], single["image"][0])


def test_the_fedunetmm_arm_sees_each_sites_subset_and_nothing_else(arms):
    (paired, _), _ = arms
    names = [name for name, _ in get_task(FEDUNETMM_SPEC_ARGS["task"]).input_slots]
    for i, site in enumerate(sorted(paired)):
        expected = [int(n in sequence_subset(i)) for n in names]
        cases = paired[site].train + paired[site].val + paired[site].test
        assert all(case["present"].tolist() == expected for case in cases)
        assert all(not case["image"][j].any() for case in cases for j, p in enumerate(expected) if not p)


def test_the_paired_setting_refuses_a_single_image_task(tmp_path):
    data = DataConfig(sites=1, cases=4, shape=(16, 16, 8), min_cases=2, test_fraction=0.0)
    with pytest.raises(ValueError, match="sequence-subsets setting holds paired cases.*input slots"):
        load_federation(PAIRED, data, 0, tmp_path, get_task(UNET_SPEC_ARGS["task"]))


def _record(label: str, setting: str, seed: int, test: list[float]) -> dict:
    spec_args = FEDUNETMM_SPEC_ARGS if setting == PAIRED else UNET_SPEC_ARGS
    sites = {f"site-{i + 1}": {"dice": d, "dice_WT": d + 0.2, "dice_TC": d, "dice_ET": d - 0.1, "dice_local": d,
                               "bytes_up": 0.0, "bytes_down": 0.0, "train_s": 1.0, "eval_s": 0.1, "step_ms": 1.0}
             for i, d in enumerate(test)}
    config = {"label": label, "group": "main", "algorithm": label, "setting": setting, "seed": seed,
              "spec_args": spec_args, "train": {"learning_rate": 0.01}}
    return {"run_id": f"{label}-{setting}-{seed}", "config": config,
            "task": {"name": "segmentation", "headline": "dice", "metrics": ["dice", "dice_WT", "dice_TC", "dice_ET"]},
            "sites": {s: {"modality": "x"} for s in sites}, "rounds": [{"round": 0, "aggregate_s": 0.0, "round_s": 1.0,
                                                                        "sites": sites}],
            "test": {s: {k: v for k, v in m.items() if k.startswith("dice") and k != "dice_local"} for s, m in sites.items()},
            "diagnostics": [], "wall_s": 1.0}


def test_the_report_pairs_each_method_across_the_arms():
    runs = [_record(a, s, seed, [base + seed * 0.01 + (0.1 if s == PAIRED else 0.0)] * 3)
            for a, base in (("omnifm", 0.3), ("fedavg", 0.2)) for s in (PAIRED, FLAIR) for seed in range(3)]
    paired = "sequence-subsets [inputs=t1+t1ce+t2+flair]"
    rows = {r["label"]: r for r in baseline_comparisons(runs, paired, FLAIR)}
    assert set(rows) == {"omnifm", "fedavg"}
    assert rows["fedavg"]["seed"]["mean"] == pytest.approx(0.1) and rows["fedavg"]["seed"]["n"] == 3
    assert rows["omnifm"]["cell"]["n"] == 9
    text = markdown(runs, last_k=1)
    assert f"### {paired} vs {FLAIR}" in text and "Δ ET [95 % CI] (cells), p Holm" in text
    assert text.count("### Diagnostics") == 0 and f"### {FLAIR}: test Dice" in text


def test_the_report_writes_the_arms_bar_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from omnifm.bench.record import write_json
    from omnifm.bench.report import write_report

    for seed in range(2):
        for setting in (PAIRED, FLAIR):
            record = _record("fedavg", setting, seed, [0.3 + 0.1 * (setting == PAIRED)] * 3)
            write_json(tmp_path / "runs" / f"{record['run_id']}.json", record)
    summary = write_report(tmp_path, last_k=1).read_text()
    assert (tmp_path / "dice_sequence-subsets_vs_sequence-subsets-flair.png").is_file()
    assert "dice_sequence-subsets_vs_sequence-subsets-flair.png" in summary


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", FEDUNETMM_ALGORITHMS)
def test_every_run_of_the_preset_runs_on_a_tiny_federation(algorithm, tmp_path):
    """One round of each algorithm in each arm, on 32 x 32 x 8 cases: a record with test scores per site."""
    import dataclasses

    from omnifm.bench.runner import run_one

    preset = customize(get_preset("fedunetmm-quick"), rounds=1,
                       data_overrides={"cases": 4, "shape": [32, 32, 8], "val_fraction": 0.25, "test_fraction": 0.25})
    for config in [r for r in build_grid(preset) if r.seed == 0 and r.algorithm == algorithm]:
        config = dataclasses.replace(config, train={**config.train, "batch_size": 8})
        record = run_one(config, tmp_path)
        assert set(record["test"]) == {"site-1", "site-2", "site-3"}
        assert all(0.0 <= m["dice"] <= 1.0 and {"dice_WT", "dice_TC", "dice_ET"} <= set(m) for m in record["test"].values())
