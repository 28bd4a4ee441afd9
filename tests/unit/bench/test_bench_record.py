"""Provenance, payload sizes, JSON and CSV of benchmark runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from omnifm.bench.record import csv_fields, git_info, machine_info, payload_bytes, read_runs, write_csv, write_json


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.zeros((3, 4), dtype=np.float32), 48),
        (torch.zeros(2, 5), 40),
        ({"a": [1, 2.0], "b": "text", "c": None, "d": True}, 8),
        ({"bank": {"prototypes": [[0.1, 0.2], [0.3, 0.4]], "next_id": 2}}, 20),
        ([], 0),
    ],
)
def test_payload_bytes_counts_4_bytes_per_number(value, expected):
    assert payload_bytes(value) == expected


def test_payload_bytes_refuses_unknown_objects():
    with pytest.raises(ValueError, match="cannot size a object payload"):
        payload_bytes(object())


def test_git_and_machine_info_are_recorded():
    info = git_info()
    assert info["commit"] is None or len(info["commit"]) == 40
    assert machine_info()["cpu_count"] >= 1


def _run(run_id: str, rounds: int = 2) -> dict:
    site = {"dice": 0.5, "dice_WT": 0.6, "dice_TC": 0.5, "dice_ET": 0.4, "dice_local": 0.55, "bytes_up": 8,
            "bytes_down": 16, "train_s": 1.0, "eval_s": 0.1, "step_ms": 10.0}
    return {
        "run_id": run_id,
        "config": {"label": "fedavg", "group": "main", "algorithm": "fedavg", "setting": "cross-modality", "seed": 0},
        "rounds": [{"round": r, "aggregate_s": 0.01, "round_s": 2.0, "sites": {"site-1": dict(site), "site-2": dict(site)}}
                   for r in range(rounds)],
        "wall_s": 5.0,
    }


def test_json_and_csv_round_trip(tmp_path):
    write_json(tmp_path / "runs" / "b.json", _run("b"))
    write_json(tmp_path / "runs" / "a.json", _run("a", rounds=3))
    runs = read_runs(tmp_path)
    assert [r["run_id"] for r in runs] == ["a", "b"]
    path = write_csv(tmp_path / "results.csv", runs)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == (3 + 2) * 2 and list(rows[0]) == csv_fields(runs)
    assert list(rows[0])[8:13] == ["dice", "dice_WT", "dice_TC", "dice_ET", "dice_local"], "a record without a task: segmentation"
    assert rows[0]["run"] == "a" and float(rows[0]["dice_WT"]) == 0.6
    assert not list(tmp_path.glob("runs/.*.tmp")), "atomic write leaves no temporary file"
    assert json.loads((tmp_path / "runs" / "a.json").read_text())["wall_s"] == 5.0


def test_read_runs_says_how_to_make_results(tmp_path):
    with pytest.raises(ValueError, match="run `omnifm-bench --out"):
        read_runs(tmp_path)


def test_csv_columns_follow_each_runs_task(tmp_path):
    seg = _run("a")
    cls = {**_run("b"), "task": {"name": "classification", "headline": "accuracy", "metrics": ["accuracy", "auc"]}}
    for rnd in cls["rounds"]:
        rnd["sites"] = {s: {"accuracy": 0.7, "auc": 0.8, "accuracy_local": 0.6, "bytes_up": 8, "bytes_down": 8,
                            "train_s": 1.0, "eval_s": 0.1} for s in rnd["sites"]}
    rows = list(csv.DictReader(write_csv(tmp_path / "results.csv", [seg, cls]).open()))
    assert {"dice", "accuracy", "auc", "accuracy_local"} <= set(rows[0])
    assert rows[-1]["accuracy"] == "0.7" and rows[-1]["dice"] == "" and rows[0]["accuracy"] == ""
