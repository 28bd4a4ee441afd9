"""Final-round statistics, markdown tables and plots of the benchmark report."""

from __future__ import annotations

import math

import pytest

from omnifm.bench.record import write_json
from omnifm.bench.report import ablation_table, fmt, main_table, markdown, run_stats, summarize, write_report


def _run(label: str, seed: int, final: list[float], group: str = "main", setting: str = "cross-modality") -> dict:
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
        "config": {"label": label, "group": group, "algorithm": label.split()[0], "setting": setting, "seed": seed},
        "rounds": [
            {"round": 0, "aggregate_s": 0.01, "round_s": 2.0, "sites": sites(first)},
            {"round": 1, "aggregate_s": 0.03, "round_s": 4.0, "sites": sites(final)},
        ],
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


def test_main_table_sorts_by_dice_and_shows_bytes():
    runs = [_run("fedavg", 0, [0.1, 0.2]), _run("omnifm", 0, [0.5, 0.7]), _run("local", 0, [0.3, 0.3])]
    table = main_table(summarize(runs), "cross-modality").splitlines()
    assert table[0].startswith("| algorithm | Dice")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["omnifm", "local", "fedavg"]
    assert "| 0.600 | 0.700 | 0.600 | 0.500 | 0.500 | 1 | 2 |" in table[2]


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
    summary = write_report(tmp_path)
    text = summary.read_text()
    assert "### cross-modality" in text and "### same-modality" in text and "### Ablations" in text
    assert (tmp_path / "results.csv").is_file()
    for name in ("dice_cross-modality.png", "dice_same-modality.png", "dice_ablation.png"):
        assert (tmp_path / name).stat().st_size > 1000 and f"]({name})" in text
    assert "retrieval" in markdown(runs)


def test_main_table_can_show_paired_differences_to_omnifm():
    from omnifm.bench.report import _final_dice_by_seed

    runs = [_run("omnifm", s, [d, d]) for s, d in ((0, 0.5), (1, 0.2))] + [_run("local", s, [d, d]) for s, d in ((0, 0.4), (1, 0.1))]
    table = main_table(summarize(runs), "cross-modality", _final_dice_by_seed(runs, "cross-modality"))
    assert "Δ Dice vs omnifm (paired)" in table
    assert "| -0.100 ± 0.000 |" in table.splitlines()[3]
