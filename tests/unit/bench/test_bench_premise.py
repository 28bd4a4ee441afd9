"""The premise measurement: same anatomy in several modalities, low-pass distances, 1-NN modality id."""

from __future__ import annotations

import json

import pytest

from omnifm.bench.cli import main
from omnifm.bench.premise import measure_premise, premise_markdown

SMALL = {"cases": 3, "shape": (32, 32, 8), "fractions": (0.25,)}


def _row(result: dict, variant: str) -> dict:
    return next(r for r in result["rows"] if r["variant"] == variant)


def test_one_modality_twice_differs_only_by_noise():
    result = measure_premise(("t2", "t2"), **SMALL)
    assert _row(result, "raw")["ratio"] < 0.5, "two renders of one modality are closer than two anatomies"


def test_different_modalities_are_told_apart_by_their_low_pass_spectrum():
    result = measure_premise(("t1ce", "ct", "pet"), **SMALL)
    raw = _row(result, "raw")
    assert raw["ratio"] > 1.0, premise_markdown(result)
    assert raw["nn_modality_accuracy"] > result["chance"] + 0.2, premise_markdown(result)
    assert result["slices_per_modality"] > 0 and len(result["rows"]) == 2


def test_premise_command_writes_json_and_markdown(tmp_path, capsys):
    args = ["premise", "--out", str(tmp_path), "--cases", "2", "--shape", "32", "32", "6", "--fractions", "0.1",
            "--modalities", "t2", "flair"]
    assert main(args) == 0
    data = json.loads((tmp_path / "premise.json").read_text())
    assert data["modalities"] == ["t2", "flair"] and "commit" in data["git"]
    assert "| raw | 0.1 |" in (tmp_path / "premise.md").read_text() and "1-NN" in capsys.readouterr().out


def test_premise_needs_two_of_each():
    with pytest.raises(ValueError, match="2 modalities"):
        measure_premise(("t2",), cases=3)
