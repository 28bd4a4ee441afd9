"""Presets, grid building and the command line of omnifm-bench."""

from __future__ import annotations

import json

import pytest

from omnifm.bench.cli import main
from omnifm.bench.presets import ABLATIONS, HARD_CASE_ALGORITHMS, LR_GRID, SENSITIVITY, build_grid, customize, get_preset, tuning_grid
from omnifm.bench.runner import RunConfig
from omnifm.bench.settings import SETTINGS
from omnifm.tasks import get_task


def test_every_run_of_a_grid_gets_the_same_budget():
    preset = get_preset("full")
    rates = {a: 0.03 if a == "fedavg" else 0.01 for a in preset.algorithms}
    grid = build_grid(preset, rates)
    assert len({(r.rounds, r.train["local_epochs"], r.train["batch_size"], r.data) for r in grid}) == 1
    assert len({r.run_id for r in grid}) == len(grid), "run ids are unique"
    assert all(r.train["learning_rate"] == (0.03 if r.algorithm == "fedavg" else 0.01) for r in grid)
    main = [r for r in grid if r.group == "main"]
    assert {r.seed for r in main} == {0, 1, 2, 3, 4}
    assert {r.setting for r in main} <= set(SETTINGS) and "cross-modality+t1" in {r.setting for r in main}
    assert {r.algorithm for r in main if r.setting == "cross-modality+t1"} == set(HARD_CASE_ALGORITHMS)
    assert {r.algorithm for r in main if r.setting == "cross-modality"} == set(preset.algorithms)
    assert {r.algorithm for r in grid if r.group == "ablation"} == set(ABLATIONS)
    assert len([r for r in grid if r.group == "sensitivity"]) == len(SENSITIVITY) * len(get_preset("full").sensitivity_seeds)


def test_quick_preset_is_small():
    grid = build_grid(get_preset("quick"))
    assert len(grid) <= 4 and all(r.setting == "cross-modality" for r in grid)


def test_customize_overrides():
    preset = customize(get_preset("full"), ["omnifm", "fedavg"], ["same-modality"], [5, 6], 2, ["main"])
    grid = build_grid(preset)
    assert [(r.algorithm, r.seed, r.rounds) for r in grid] == [("omnifm", 5, 2), ("fedavg", 5, 2), ("omnifm", 6, 2), ("fedavg", 6, 2)]
    assert [r.group for r in build_grid(get_preset("full"))][:30] == ["main"] * 30, "main cross-modality first"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: get_preset("huge"), "unknown preset 'huge'"),
        (lambda: customize(get_preset("quick"), groups=["extra"]), "unknown groups"),
        (lambda: customize(get_preset("quick"), settings=["iid"]), "unknown setting"),
        (lambda: RunConfig("fedsgd", "cross-modality", 0, 1), "unknown algorithm 'fedsgd'"),
        (lambda: RunConfig("fedavg", "cross-modality", 0, 0), "rounds must be >= 1"),
    ],
)
def test_bad_choices_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_report_subcommand_needs_results(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no run results"):
        main(["report", str(tmp_path)])


def test_overrides_reach_every_run_and_its_label():
    preset = customize(get_preset("quick"), spec_overrides={"top_k": 3}, bank_overrides={"max_size": 256},
                       train_overrides={"learning_rate": 0.003})
    grid = build_grid(preset)
    assert all(r.spec_args["top_k"] == 3 and r.bank_args["max_size"] == 256 for r in grid)
    assert grid[0].label == "omnifm learning_rate=0.003 max_size=256 top_k=3"
    assert grid[0].train_config().learning_rate == 0.003
    assert grid[0].spec()["top_k"] == 3


def test_cli_key_value_pairs():
    from omnifm.bench.cli import _pairs

    assert _pairs(["a=1", "b=[2, 3]", "c=word"]) == {"a": 1, "b": [2, 3], "c": "word"}
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        _pairs(["oops"])


def test_full_preset_tunes_every_algorithm_on_separate_seeds():
    preset = get_preset("full")
    tuning = tuning_grid(preset)
    assert len(tuning) == len(preset.algorithms) * len(preset.lr_grid) * len(preset.tuning_seeds)
    assert {r.seed for r in tuning}.isdisjoint(preset.seeds) and {r.group for r in tuning} == {"tuning"}
    assert {r.train["learning_rate"] for r in tuning} == set(LR_GRID) == {3e-2, 1e-1, 3e-1}
    assert {"fedper-fusion", "omnifm-placebo", "fedrep", "feddyn", "fedper", "central", "local"} <= set(preset.algorithms)
    assert tuning_grid(customize(preset, train_overrides={"learning_rate": 0.02})) == [], "a fixed lr switches tuning off"


def test_a_missing_algorithm_name_fails_loudly():
    with pytest.raises(ValueError, match=r"\['fedmagic'\] are not in omnifm.algorithms.ALGORITHMS"):
        customize(get_preset("full"), algorithms=["omnifm", "fedmagic"])
    with pytest.raises(ValueError, match="overlap"):
        customize(get_preset("full"), tuning_seeds=[0])


def test_tuning_picks_the_best_validation_learning_rate():
    from omnifm.bench.tune import select_learning_rates, tuning_markdown

    def run(algorithm, lr, seed, curve):
        return {"config": {"algorithm": algorithm, "group": "tuning", "seed": seed, "train": {"learning_rate": lr}},
                "rounds": [{"sites": {"a": {"dice": d}, "b": {"dice": float("nan")}}} for d in curve]}

    runs = [run("fedavg", 0.01, 0, [0.9, 0.2, 0.2]), run("fedavg", 0.03, 0, [0.0, 0.3, 0.3]),
            run("local", 0.01, 0, [0.1, 0.4, 0.4]), run("local", 0.01, 1, [0.1, 0.0, 0.0]),
            run("local", 0.003, 0, [0.1, 0.3, 0.3]), run("local", 0.003, 1, [0.1, 0.3, 0.3])]
    assert select_learning_rates(runs, last_k=2) == {"fedavg": 0.03, "local": 0.003}, "last rounds, mean over seeds"
    assert select_learning_rates(runs, last_k=3)["fedavg"] == 0.01
    assert "**0.300**" in tuning_markdown(runs, last_k=2)


def test_full_preset_runs_the_hard_case_on_fewer_seeds_and_a_seed_override_runs_every_setting():
    preset = get_preset("full")
    seeds = {(r.setting, r.seed) for r in build_grid(preset) if r.group == "main"}
    assert {s for setting, s in seeds if setting == "cross-modality"} == set(preset.seeds)
    assert {s for setting, s in seeds if setting == "cross-modality+t1"} == {0, 1, 2}
    custom = customize(preset, seeds=[7, 8])
    assert {(r.setting, r.seed) for r in build_grid(custom) if r.group == "main"} == {
        (setting, s) for setting in preset.settings for s in (7, 8)
    }


def test_class_skew_preset_is_cls_quick_at_every_skew_with_five_seeds():
    """cls-skew: the issue's Dirichlet(0.1) and (0.5) and no skew, 5 seeds, cls-quick's task, training and tuning."""
    quick, skew = get_preset("cls-quick"), get_preset("cls-skew")
    grid = build_grid(skew, {a: 0.03 for a in skew.algorithms})
    assert {r.spec_args["task"]["class_skew"] for r in grid} == {0.1, 0.5, 0.0}
    assert {r.seed for r in grid} == {0, 1, 2, 3, 4} and {r.participation for r in grid} == {1.0}
    assert {r.algorithm for r in grid} == set(quick.algorithms)
    same = ("settings", "rounds", "data", "train", "spec_args", "lr_grid", "tuning_seeds", "last_k", "tuning_task")
    assert all(getattr(skew, f) == getattr(quick, f) for f in same)
    assert [r.run_id for r in tuning_grid(skew)] == [r.run_id for r in tuning_grid(quick)], "the same tuning runs"


def test_classification_preset_crosses_class_skew_and_participation():
    preset = get_preset("cls-quick")
    rates = {a: 0.03 for a in preset.algorithms}
    grid, tuning = build_grid(preset, rates), tuning_grid(preset)
    assert len({r.run_id for r in grid + tuning}) == len(grid) + len(tuning), "run ids are unique"
    assert {get_task(r.spec()["task"]).name for r in grid + tuning} == {"classification"}
    assert {r.spec_args["task"]["class_skew"] for r in grid} == set(preset.task_variants[i]["class_skew"]
                                                                     for i in range(len(preset.task_variants)))
    assert {r.participation for r in grid} == {1.0, 0.5} and {r.participation for r in tuning} == {1.0}
    assert {r.algorithm for r in grid if r.participation < 1} == {"omnifm", "omnifm-placebo", "fedper", "fedbn", "fedavg"}
    assert {"local", "central", "fedavg", "fedper", "fedbn", "omnifm", "omnifm-placebo"} <= {r.algorithm for r in grid}
    assert {r.seed for r in tuning}.isdisjoint({r.seed for r in grid})
    assert all(r.train["learning_rate"] == 0.03 for r in grid)
    assert set(customize(preset, participations=[0.2]).participations) == {0.2}



def _assert_preset_runs_the_job(preset_name: str, job_name: str) -> dict:
    """The preset's task, network, OmniFM sizes and training are the job's; returns the job's executor args."""
    from pathlib import Path

    job = Path(__file__).resolve().parents[3] / "jobs" / job_name / "app" / "config"
    server = json.loads((job / "config_fed_server.json").read_text())
    persistor = next(c for c in server["components"] if c["id"] == "persistor")["args"]
    executor = json.loads((job / "config_fed_client.json").read_text())["executors"][0]["executor"]["args"]
    preset = get_preset(preset_name)
    assert get_task(preset.spec_args["task"]) == get_task(persistor["task"])
    assert preset.spec_args["model"] == persistor["model"] and preset.spec_args["omnifm"] == persistor["omnifm"]
    assert {k: executor[k] for k in preset.train} == preset.train
    assert tuple(executor["phantom_shape"]) == preset.data.shape
    assert not set(preset.tuning_seeds) & set(preset.seeds)
    return executor


def test_the_fusion_preset_runs_the_fusion_job_as_shipped():
    """fusion-quick is jobs/omnifm_fusion (no drift between the two), with paper Table 7's methods."""
    from omnifm.bench.metrics import section
    from omnifm.bench.presets import FUSION_ALGORITHMS

    _assert_preset_runs_the_job("fusion-quick", "omnifm_fusion")
    preset = get_preset("fusion-quick")
    grid = build_grid(preset, {a: 3e-3 for a in preset.algorithms})
    assert {r.setting for r in grid} == {"fusion-pairs"} and {r.algorithm for r in grid} == set(FUSION_ALGORITHMS)
    assert {"fedavg", "fedprox", "ditto", "feddyn", "moon", "omnifm"} <= set(FUSION_ALGORITHMS), "paper Table 7's methods"
    assert {section(r.to_dict()) for r in grid} == {"fusion-pairs [image_fusion, temperature=4]"}, "short section names"


def test_the_vqa_preset_runs_the_vqa_job_as_shipped():
    """vqa-quick is jobs/omnifm_vqa, one site per modality, with the issue's VQA methods."""
    from omnifm.bench.presets import VQA_ALGORITHMS
    from omnifm.bench.settings import MODALITY_CLIENTS

    executor = _assert_preset_runs_the_job("vqa-quick", "omnifm_vqa")
    preset = get_preset("vqa-quick")
    assert [executor["phantom_modalities"][f"site-{i + 1}"] for i in range(6)] == [[m] for m in MODALITY_CLIENTS]
    assert preset.data.sites == len(MODALITY_CLIENTS) and preset.settings == ("modality-clients",)
    assert {"fedavg", "fedprox", "feddyn", "fedper", "omnifm"} <= set(VQA_ALGORITHMS), "the issue's VQA methods"
