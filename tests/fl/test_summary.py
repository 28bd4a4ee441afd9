"""OmniFMJobSummary: the end-of-job line (per-site metric, mean, where the results are), the final
evaluation handed to TensorBoard, and a formatter for GlobalModelEval (no "No formatter" warning)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import make_reply
from nvflare.app_common.abstract.formatter import Formatter
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver

from omnifm.fl.summary import SUMMARY_FILE, OmniFMJobSummary, summary_text


class _Engine:
    def __init__(self, run_dir, components):
        self.run_dir, self.components = run_dir, components

    def get_component(self, name):
        return self.components.get(name)

    def get_workspace(self):
        return SimpleNamespace(get_run_dir=lambda job_id: str(self.run_dir))


def _ctx(engine) -> FLContext:
    ctx = FLContext()
    ctx.get_engine = lambda: engine
    ctx.get_job_id = lambda: "job"
    return ctx


def _result(ctx, summary, site, result):
    ctx.set_prop(AppConstants.DATA_CLIENT, site, private=True, sticky=False)
    ctx.set_prop(AppConstants.VALIDATION_RESULT, result, private=True, sticky=False)
    summary.handle_event(AppEventType.VALIDATION_RESULT_RECEIVED, ctx)


def _metrics(dice):
    return DXO(DataKind.METRICS, data={"dice": dice, "dice_WT": dice + 0.1, "cases": 6}).to_shareable()


def _job(tmp_path, receiver=None):
    summary = OmniFMJobSummary()
    lines = []
    summary.log_info = lambda fl_ctx, msg, *a, **k: lines.append(msg)
    ctx = _ctx(_Engine(tmp_path, {"tb_receiver": receiver} if receiver else {}))
    summary.handle_event(EventType.START_RUN, ctx)
    for r in range(3):
        ctx.set_prop(AppConstants.CURRENT_ROUND, r, private=True, sticky=True)
        summary.handle_event(AppEventType.ROUND_STARTED, ctx)
    _result(ctx, summary, "site-2", _metrics(0.4))
    _result(ctx, summary, "site-1", _metrics(0.2))
    _result(ctx, summary, "site-3", make_reply(ReturnCode.EXECUTION_EXCEPTION))
    summary.handle_event(EventType.END_RUN, ctx)
    return summary, lines


def test_end_of_job_line_names_each_site_the_mean_and_where_results_are(tmp_path):
    summary, lines = _job(tmp_path)
    (line,) = [m for m in lines if m.startswith("job summary:")]
    assert "final global model dice per site: site-1 0.200, site-2 0.400; mean 0.300 over 2 site(s)" in line
    assert f"site-3: replied {ReturnCode.EXECUTION_EXCEPTION} (not in the mean)" in line
    assert f"results: {tmp_path / 'cross_site_val' / 'cross_val_results.json'}" in line
    saved = json.loads((tmp_path / "cross_site_val" / SUMMARY_FILE).read_text())
    assert saved["per_site"] == {"site-1": 0.2, "site-2": 0.4} and saved["mean"] == pytest.approx(0.3)
    assert saved["rounds"] == 3 and "site-3" in saved["failed"]


def test_final_evaluation_goes_to_tensorboard_under_each_site(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    receiver = TBAnalyticsReceiver(events=["fed.analytix_log_stats"])
    receiver.handle_event(EventType.START_RUN, _ctx(_Engine(tmp_path, {})))
    summary, lines = _job(tmp_path, receiver)
    receiver.handle_event(EventType.END_RUN, _ctx(_Engine(tmp_path, {})))
    assert f"TensorBoard: tensorboard --logdir {tmp_path / 'tb_events'}" in lines[-1]
    acc = EventAccumulator(str(tmp_path / "tb_events" / "site-1"))
    acc.Reload()
    (event,) = acc.Scalars("final_dice")
    assert event.step == 3 and event.value == pytest.approx(0.2)
    assert not (tmp_path / "tb_events" / "site-3").exists()


def test_is_the_formatter_of_global_model_eval():
    summary = OmniFMJobSummary()
    assert isinstance(summary, Formatter)
    assert "no site evaluated" in summary.format(FLContext())


def test_no_results_says_so():
    assert "no site evaluated the final global model" in summary_text({}, {})
    assert summary_text({"site-1": {"dice": float("nan")}}, {}).endswith("no dice to average")


@pytest.mark.parametrize("metric", ["", None, 3])
def test_bad_metric_is_refused(metric):
    with pytest.raises(ValueError, match="metric"):
        OmniFMJobSummary(metric=metric)
