"""Final-round statistics, markdown tables and plots of the benchmark report."""

from __future__ import annotations

import math

import pytest

from omnifm.bench.record import write_json
from omnifm.bench.report import (
    ablation_table,
    comparisons,
    diagnostics_table,
    fmt,
    headroom,
    main_table,
    markdown,
    modality_table,
    run_stats,
    summarize,
    write_report,
)


def _run(label: str, seed: int, final: list[float], group: str = "main", setting: str = "cross-modality",
         test: list[float] | None = None, diagnostics: list | None = None) -> dict:
    def sites(values: list[float]) -> dict:
        return {
            f"site-{i + 1}": {"dice": d, "dice_WT": d + 0.1, "dice_TC": d, "dice_ET": d - 0.1, "dice_local": d,
                              "bytes_up": 1024.0, "bytes_down": 2048.0, "train_s": 1.0, "eval_s": 0.1, "step_ms": 20.0,
                              **({"retrieval_ms": 0.5} if label.startswith("omnifm") else {})}
            for i, d in enumerate(values)
        }

    first = [0.0] * len(final)
    return {
        "run_id": f"{group}-{label}-{setting}-{seed}",
        "config": {"label": label, "group": group, "algorithm": label.split()[0], "setting": setting, "seed": seed,
                   "train": {"learning_rate": 0.01}},
        "sites": {f"site-{i + 1}": {"modality": m} for i, m in zip(range(len(final)), ("t1ce", "ct", "t2"))},
        "rounds": [
            {"round": 0, "aggregate_s": 0.01, "round_s": 2.0, "sites": sites(first)},
            {"round": 1, "aggregate_s": 0.03, "round_s": 4.0, "sites": sites(final)},
        ],
        "test": {f"site-{i + 1}": {"dice": d, "dice_WT": d, "dice_TC": d, "dice_ET": d} for i, d in enumerate(test or [])},
        "diagnostics": diagnostics or [],
        "wall_s": 10.0 + seed,
    }


def test_run_stats_use_the_final_round_and_the_worst_site():
    stats = run_stats(_run("fedavg", 0, [0.2, 0.6, 0.4]))
    assert stats["dice"] == pytest.approx(0.4)
    assert stats["dice_WT"] == pytest.approx(0.5)
    assert stats["worst"] == pytest.approx(0.2)
    assert stats["up_kb"] == pytest.approx(1.0) and stats["down_kb"] == pytest.approx(2.0)
    assert stats["aggregate_s"] == pytest.approx(0.02)


def test_nan_sites_are_left_out():
    stats = run_stats(_run("fedavg", 0, [math.nan, 0.6]))
    assert stats["dice"] == pytest.approx(0.6) and stats["worst"] == pytest.approx(0.6)


def test_summary_is_mean_and_sample_std_over_seeds():
    runs = [_run("omnifm", s, [d, d]) for s, d in enumerate([0.2, 0.4, 0.6])]
    summary = summarize(runs)
    mean, std = summary[("main", "omnifm", "cross-modality")]["dice"]
    assert mean == pytest.approx(0.4) and std == pytest.approx(0.2)
    assert summary[("main", "omnifm", "cross-modality")]["n"] == 3


@pytest.mark.parametrize(
    "pair, text", [((0.41234, 0.0312), "0.412 ± 0.031"), ((0.5, math.nan), "0.500"), ((math.nan, math.nan), "n/a")]
)
def test_fmt(pair, text):
    assert fmt(pair) == text


def test_main_table_ranks_by_test_dice_and_shows_validation_and_bytes():
    runs = [_run("fedavg", 0, [0.1, 0.2], test=[0.9, 0.9]), _run("omnifm", 0, [0.5, 0.7], test=[0.4, 0.6]),
            _run("local", 0, [0.3, 0.3], test=[0.1, 0.1])]
    table = main_table(summarize(runs, last_k=2), "cross-modality", last_k=2).splitlines()
    assert table[0].startswith("| algorithm | lr | test Dice") and "mean of last 2" in table[0]
    assert [row.split("|")[1].strip() for row in table[2:]] == ["fedavg", "omnifm", "local"], "ranked by test Dice"
    assert "| omnifm | 0.01 | 0.500 | 0.500 | 0.500 | 0.500 | 0.400 | 0.600 | 0.300 | 1 | 2 |" in table[3]


def test_test_split_is_used_when_present_and_validation_otherwise():
    with_test, without = run_stats(_run("fedavg", 0, [0.2, 0.6], test=[0.1, 0.3])), run_stats(_run("fedavg", 0, [0.2, 0.6]))
    assert with_test["test_dice"] == pytest.approx(0.2) and with_test["dice"] == pytest.approx(0.4)
    assert without["test_dice"] == pytest.approx(0.4) and without["has_test"] == 0.0
    assert with_test["lastk"] == pytest.approx(0.2), "mean over the last 3 (= both) rounds of the site-mean Dice"


def test_ablation_table_compares_with_omnifm_on_the_same_seeds():
    runs = [_run("omnifm", 0, [0.5, 0.5]), _run("omnifm", 1, [0.1, 0.1]), _run("omnifm-noeca", 0, [0.4, 0.4], group="ablation")]
    table = ablation_table(runs, "ablation")
    assert "| omnifm-noeca | 0.400 |" in table
    assert table.rstrip().endswith("| 0 | 0.500 | -0.100 |"), "paired with omnifm's seed 0 only, not its 2-seed mean"


def test_write_report_makes_csv_markdown_and_plots(tmp_path):
    runs = [_run(a, s, [0.3 + 0.1 * s, 0.5]) for a in ("omnifm", "fedavg") for s in range(2)]
    runs += [_run("omnifm", 0, [0.2, 0.2], setting="same-modality"), _run("omnifm-noalign", 0, [0.4, 0.4], group="ablation")]
    for run in runs:
        write_json(tmp_path / "runs" / f"{run['run_id']}.json", run)
    summary = write_report(tmp_path, last_k=2)
    text = summary.read_text()
    assert "### cross-modality" in text and "### same-modality" in text and "### Ablations" in text
    assert (tmp_path / "results.csv").is_file()
    for name in ("dice_cross-modality.png", "dice_same-modality.png", "dice_ablation.png"):
        assert (tmp_path / name).stat().st_size > 1000 and f"]({name})" in text
    assert "retrieval" in markdown(runs)


def test_paired_comparisons_use_seed_and_cell_units_with_holm():
    seeds = range(5)
    runs = [_run("omnifm", s, [0.5, 0.5], test=[0.5 + 0.01 * s, 0.4]) for s in seeds]
    runs += [_run("local", s, [0.5, 0.5], test=[0.3 + 0.01 * s, 0.3 - 0.01 * s]) for s in seeds]
    runs += [_run("fedper", s, [0.5, 0.5], test=[0.5 + 0.01 * s, 0.4]) for s in seeds]
    rows = {r["label"]: r for r in comparisons(runs, "cross-modality")}
    assert set(rows) == {"local", "fedper"}
    local = rows["local"]
    assert local["seed"]["n"] == 5 and local["cell"]["n"] == 10
    assert local["seed"]["mean"] == pytest.approx(-0.16) and local["seed"]["ci_high"] < 0
    assert local["seed"]["p_wilcoxon"] == pytest.approx(0.0625) and local["cell"]["p_wilcoxon"] < 0.01
    assert local["seed"]["p_holm"] == pytest.approx(0.125), "two comparisons; fedper's p is 1"
    assert rows["fedper"]["seed"]["p_wilcoxon"] == 1.0 and rows["fedper"]["seed"]["mean"] == 0.0


def test_per_site_table_and_headroom():
    runs = [_run("central", 0, [0.5, 0.5], test=[0.6, 0.4]), _run("local", 0, [0.3, 0.3], test=[0.3, 0.3])]
    table = modality_table(runs, "cross-modality")
    assert "site-1 (t1ce)" in table and "| central | 0.600 | 0.400 |" in table
    room = headroom(summarize(runs), "cross-modality")
    assert room["test"] == pytest.approx(0.2) and room["lastk"] == pytest.approx(0.1)


def test_diagnostics_table_is_final_round_means_and_skips_algorithms_without():
    diag = [{"round": 0, "bank": {"size": 4}, "sites": {"site-1": {"token_cos_within": 0.1}}},
            {"round": 1, "bank": {"size": 8, "pruned": 1}, "sites": {"site-1": {"token_cos_within": 0.5, "token_cos_across": 0.2},
                                                                     "site-2": {"token_cos_within": 0.7}}}]
    runs = [_run("omnifm", s, [0.5, 0.5], diagnostics=diag) for s in (0, 1)] + [_run("fedavg", 0, [0.5, 0.5])]
    table = diagnostics_table(runs).splitlines()
    assert table[0] == "| algorithm | token_cos_within | token_cos_across | bank_size | bank_pruned |"
    assert table[2] == "| omnifm | 0.6 | 0.2 | 8 | 1 |" and len(table) == 3


def test_report_without_matplotlib_still_writes_the_tables(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    for run in [_run("omnifm", 0, [0.3, 0.5])]:
        write_json(tmp_path / "runs" / f"{run['run_id']}.json", run)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    text = write_report(tmp_path).read_text()
    assert "### cross-modality" in text and "![" not in text
    assert "pip install" in capsys.readouterr().out


def _cls_run(label: str, seed: int, test: list[float], participation: float = 1.0) -> dict:
    """A classification record: its task named, accuracy / macro-F1 / AUC (+ per-class recall) per site."""
    def sites(values: list[float]) -> dict:
        return {f"site-{i + 1}": {"accuracy": a, "macro_f1": a - 0.1, "auc": a + 0.1, "acc_no_tumour": 0.0,
                                  "accuracy_local": a, "bytes_up": 1024.0, "bytes_down": 1024.0, "train_s": 1.0,
                                  "eval_s": 0.1, "step_ms": 20.0} for i, a in enumerate(values)}

    run = _run(label, seed, [0.5, 0.5])
    task = {"name": "classification", "class_skew": 0.5}
    run["config"].update(spec_args={"task": task}, **({"participation": participation} if participation < 1 else {}))
    run["task"] = {"name": "classification", "headline": "accuracy",
                   "metrics": ["accuracy", "macro_f1", "auc", "acc_no_tumour"]}
    run["rounds"] = [{**r, "sites": sites([0.3, 0.4])} for r in run["rounds"]]
    run["test"] = {s: {k: v for k, v in m.items() if k in run["task"]["metrics"]} for s, m in sites(test).items()}
    run["diagnostics"] = [{"round": 1, "bank": {}, "sites": {"site-1": {"placebo_accuracy_delta": 0.02}}}]
    run["run_id"] += f"-p{participation}"
    return run


def test_a_classification_report_has_the_classification_columns(tmp_path):
    runs = [_cls_run(a, s, [0.6 + 0.1 * (a == "omnifm"), 0.5]) for a in ("omnifm", "fedavg") for s in range(3)]
    runs += [_cls_run("omnifm", 0, [0.2, 0.2], participation=0.5)]
    full = "cross-modality [classification, class_skew=0.5]"
    table = main_table(summarize(runs), full).splitlines()
    assert table[0].startswith("| algorithm | lr | test accuracy | test macro-F1 | test AUC | worst site (test) "
                               "| val accuracy, final round |")
    assert "acc_no_tumour" not in table[0] and "Dice" not in table[0], "per-class recall stays in the JSON and CSV"
    assert table[2].startswith("| omnifm | 0.01 | 0.600 ± 0.000 | 0.500 ± 0.000 | 0.700 ± 0.000 | 0.500 ± 0.000 | 0.350 ± 0.000 |")
    text = markdown(runs)
    assert f"### {full}: test accuracy (once, after the last round)" in text
    assert "### cross-modality [classification, class_skew=0.5, participation=0.5]" in text
    assert "Δ test accuracy [95 % CI] (seed unit)" in text and "| fedavg | 3 | -0.050" in text
    assert "placebo_accuracy_delta" in text and "Dice" not in text
    for run in runs:
        write_json(tmp_path / "runs" / f"{run['run_id']}.json", run)
    write_report(tmp_path)
    assert (tmp_path / "accuracy_cross-modality_classification_class_skew=0.5.png").is_file()
