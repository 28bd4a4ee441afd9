"""Presets, grid building and the command line of omnifm-bench."""

from __future__ import annotations

import json

import pytest

from omnifm.bench.cli import main
from omnifm.bench.presets import ABLATIONS, SENSITIVITY, build_grid, customize, get_preset
from omnifm.bench.runner import RunConfig
from omnifm.bench.settings import SETTINGS


def test_every_run_of_a_grid_gets_the_same_budget():
    grid = build_grid(get_preset("full"))
    assert len({(r.rounds, json.dumps(r.train, sort_keys=True), r.data) for r in grid}) == 1
    assert len({r.run_id for r in grid}) == len(grid), "run ids are unique"
    main = [r for r in grid if r.group == "main"]
    assert {r.seed for r in main} >= {0, 1, 2}
    assert {r.setting for r in main} == set(SETTINGS)
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
