"""The per-site metrics record: what the aggregator writes per round, and how monitor reads it back."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.widgets.info_collector import GroupInfoCollector, InfoCollector

from omnifm.fl import wire
from omnifm.fl.aggregator import OmniFMAggregator
from omnifm.fl.metrics_record import (
    RECORD_FILE,
    STATS_GROUP,
    MetricsRecorder,
    append_rows,
    make_row,
    read_rows,
    rows_from_result,
    rows_from_stats,
)

SHAPES = {"a": (2, 3)}


def _ctx(app_dir: Path | None, current: int = 0) -> FLContext:
    ctx = FLContext()
    weights = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    meta = {wire.SPEC: {"algorithm": "omnifm"}, wire.BANK: None}
    ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(weights, meta), private=True, sticky=False)
    ctx.set_prop(AppConstants.CURRENT_ROUND, current, private=True, sticky=False)
    if app_dir is not None:
        ctx.set_prop(FLContextKey.APP_ROOT, str(app_dir), private=True, sticky=True)
    return ctx


def _result(site: str, n: int, metrics: dict, round_of: int = 0):
    dxo = DXO(DataKind.WEIGHTS, data={k: np.ones(s, np.float32) for k, s in SHAPES.items()},
              meta={wire.METRICS: metrics})
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, n)
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_of)
    return shareable


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _round(agg: OmniFMAggregator, app: Path | None, current: int, sites: dict) -> None:
    ctx = _ctx(app, current)
    for site, (n, metrics) in sites.items():
        assert agg.accept(_result(site, n, metrics, current), ctx)
    agg.aggregate(ctx)
    agg.reset(ctx)


def test_the_aggregator_appends_one_line_per_round_and_accepted_site(tmp_path):
    agg = OmniFMAggregator()
    _round(agg, tmp_path, 0, {"site-2": (30, {"loss": 1.5, "dice": float("nan")}), "site-1": (10, {"loss": 2.0})})
    _round(agg, tmp_path, 1, {"site-1": (10, {"loss": 1.0})})
    lines = _lines(tmp_path / RECORD_FILE)
    assert [(r["round"], r["site"], r["n"]) for r in lines] == [(0, "site-1", 10), (0, "site-2", 30), (1, "site-1", 10)]
    assert lines[1]["metrics"] == {"dice": None, "loss": 1.5}, "NaN is written as null"
    assert set(lines[0]) == {"schema", "round", "site", "n", "time", "metrics"} and lines[0]["schema"] == 1


def test_the_aggregator_publishes_the_record_in_show_stats(tmp_path):
    agg = OmniFMAggregator()
    _round(agg, tmp_path, 0, {"site-1": (10, {"loss": 2.0})})
    ctx, collector = FLContext(), GroupInfoCollector()
    ctx.set_prop(InfoCollector.CTX_KEY_STATS_COLLECTOR, collector, private=True, sticky=False)
    agg.handle_event(InfoCollector.EVENT_TYPE_GET_STATS, ctx)
    published = collector.info[STATS_GROUP]
    assert published["file"] == RECORD_FILE and published["written"] == 1
    assert rows_from_stats({"server": collector.info}) == {(0, "site-1"): {"n": 10.0, "loss": 2.0}}
    json.dumps(collector.info, allow_nan=False)  # the reply travels as JSON


def test_a_record_that_cannot_be_written_is_a_warning_and_the_round_goes_on(tmp_path, caplog):
    agg = OmniFMAggregator()
    _round(agg, None, 0, {"site-1": (10, {"loss": 2.0})})
    assert f"round 0: {RECORD_FILE} not written: the server has no app folder" in caplog.text
    (tmp_path / "file").write_text("")
    _round(agg, tmp_path / "file", 1, {"site-1": (10, {"loss": 1.0})})
    assert f"round 1: {RECORD_FILE} not written" in caplog.text
    assert sorted(agg._record.stats_info()["rows"][i]["round"] for i in range(2)) == [0, 1], "still published"


@pytest.mark.parametrize(
    "value, written",
    [(0.5, 0.5), (3, 3.0), (float("nan"), None), (float("inf"), None), (-float("inf"), None), (10**400, None),
     ("0.5", "skip"), (True, "skip"), ([1.0], "skip"), (None, "skip"), ({"x": 1}, "skip")],
)
def test_malformed_metric_values_are_left_out_not_an_error(value, written):
    row = make_row(0, "site-1", 5, {"m": value, "ok": 1.0}, now=0.0)
    assert row["metrics"] == ({"ok": 1.0} if written == "skip" else {"m": written, "ok": 1.0})
    json.dumps(row, allow_nan=False)


@pytest.mark.parametrize("name", ["", "a b", "../x", "x" * 65, 3, "/data/case_001"])
def test_metric_names_that_are_not_plain_names_are_left_out(name):
    assert make_row(0, "site-1", 5, {name: 1.0}, now=0.0)["metrics"] == {}


@pytest.mark.parametrize("args", [(-1, "s", 1), (True, "s", 1), (0.0, "s", 1), (0, "a/b", 1), (0, None, 1), (0, "s", 1.5)])
def test_unusable_round_site_or_count_is_no_row(args):
    assert make_row(*args, {"loss": 1.0}) is None


def test_appends_survive_a_restart_and_a_torn_last_line(tmp_path):
    path = tmp_path / RECORD_FILE
    first = MetricsRecorder()
    assert first.record(tmp_path, 0, {"site-1": (10, {"loss": 2.0})}) is None
    with open(path, "a") as handle:  # the server killed in the middle of a write
        handle.write('{"schema": 1, "round": 1, "site": "site-1", "n": 1')
    restarted = MetricsRecorder()
    assert restarted.record(tmp_path, 1, {"site-1": (10, {"loss": 1.0}), "site-2": (5, {"loss": 3.0})}) is None
    text = path.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 4
    rows = read_rows(text.splitlines())
    assert rows == {(0, "site-1"): {"n": 10.0, "loss": 2.0}, (1, "site-1"): {"n": 10.0, "loss": 1.0},
                    (1, "site-2"): {"n": 5.0, "loss": 3.0}}
    assert append_rows(path, []) == 0 and path.read_text() == text


def test_the_reader_skips_what_is_not_a_record_line():
    good = {**make_row(2, "site-1", 4, {"dice": float("nan"), "loss": 1.0}, now=0.0)}
    assert good["metrics"] == {"dice": None, "loss": 1.0}
    lines = [
        json.dumps(good), "", "not json", "[1, 2]", json.dumps({**good, "schema": 2}),
        json.dumps({**good, "round": "2"}), json.dumps({**good, "metrics": [1]}),
        json.dumps({**good, "site": "site-3", "metrics": {"loss": "high", "x y": 1, "ok": 2}}),
    ]
    rows = read_rows(lines)
    assert sorted(rows) == [(2, "site-1"), (2, "site-3")]
    assert math.isnan(rows[(2, "site-1")]["dice"]) and rows[(2, "site-1")]["loss"] == 1.0
    assert rows[(2, "site-3")] == {"n": 4.0, "ok": 2.0}


@pytest.mark.parametrize("stats", [None, {}, {"server": {}}, {"server": {STATS_GROUP: "x"}},
                                   {"server": {STATS_GROUP: {"rows": "x"}}}])
def test_stats_without_a_record_give_no_rows(stats):
    assert rows_from_stats(stats) == {}


@pytest.mark.parametrize("zipped", [False, True])
def test_the_record_is_read_from_a_downloaded_job_result(tmp_path, zipped):
    line = json.dumps(make_row(0, "site-1", 3, {"loss": 1.0}, now=0.0)) + "\n"
    job = tmp_path / "download" / "job-1"
    if zipped:
        job.mkdir(parents=True)
        with zipfile.ZipFile(job / "workspace", "w") as archive:
            archive.writestr(f"app_server/{RECORD_FILE}", line)
    else:
        (job / "workspace" / "app_server").mkdir(parents=True)
        (job / "workspace" / "app_server" / RECORD_FILE).write_text(line)
    assert rows_from_result(tmp_path / "download") == {(0, "site-1"): {"n": 3.0, "loss": 1.0}}
    assert rows_from_result(tmp_path / "empty") == {}
