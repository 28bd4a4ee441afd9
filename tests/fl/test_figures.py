"""A task's picture of the final model: the executor sends it with the final metrics, the job summary writes it
next to the results (``cross_site_val/<site>_<name>``); a task that draws none (the default ``figure``) sends none."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from omnifm.fl.executor import OmniFMExecutor
from omnifm.fl.summary import FIGURES, OmniFMJobSummary

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 8


class _Engine:
    def __init__(self, run_dir):
        self.run_dir = run_dir

    def get_component(self, name):
        return None

    def get_workspace(self):
        return SimpleNamespace(get_run_dir=lambda job_id: str(self.run_dir))


def _ctx(engine=None, site="site-1") -> FLContext:
    ctx = FLContext()
    ctx.get_engine = lambda: engine
    ctx.get_job_id = lambda: "job"
    ctx.get_identity_name = lambda: site
    return ctx


class _Task:
    name = "toy"

    def __init__(self, draws: bool):
        self.seen = []
        if draws:
            self.figure = self._figure

    def _figure(self, cases, predict, title):
        self.seen = [predict(c) for c in cases]
        return PNG

    def figure(self, cases, predict, title):  # the protocol's default (omnifm.tasks.Task.figure): no picture
        return None


def _trainer(task):
    return SimpleNamespace(task=task, personal_model=None, model="model", device=torch.device("cpu"),
                           val_volumes=[{"x": 1}], test_volumes=[], _retriever=lambda bank, seed: None)


def test_the_executor_sends_a_drawing_tasks_picture_and_nothing_for_other_tasks(monkeypatch):
    import omnifm.fl.executor as executor

    monkeypatch.setattr(executor, "predict_case", lambda model, case, device, retriever, task: (model, case))
    drawing = _Task(draws=True)
    assert OmniFMExecutor()._figures(_trainer(drawing), None, "val", _ctx()) == {"toy_val.png": PNG}
    assert drawing.seen == [("model", {"x": 1})]  # the evaluated model on the split's cases
    assert OmniFMExecutor()._figures(_trainer(_Task(draws=False)), None, "val", _ctx()) == {}


def test_a_failing_picture_is_a_warning_not_a_failed_evaluation():
    task = _Task(draws=True)
    task.figure = lambda cases, predict, title: 1 / 0
    ex = OmniFMExecutor()
    warnings = []
    ex.log_warning = lambda fl_ctx, msg, *a, **k: warnings.append(msg)
    assert ex._figures(_trainer(task), None, "val", _ctx()) == {}
    assert "site-1: no toy picture (ZeroDivisionError" in warnings[0]


def test_the_job_summary_writes_each_sites_picture_next_to_the_results(tmp_path):
    summary = OmniFMJobSummary(metric="ssim_w")
    warnings = []
    summary.log_info = lambda fl_ctx, msg, *a, **k: None
    summary.log_warning = lambda fl_ctx, msg, *a, **k: warnings.append(msg)
    ctx = _ctx(_Engine(tmp_path))
    summary.handle_event(EventType.START_RUN, ctx)
    for site, figures in (("site-1", {"image_fusion_val.png": PNG}), ("site-2", {"../evil.png": PNG, "x.png": "no"})):
        reply = DXO(DataKind.METRICS, data={"ssim_w": 0.8, "cases": 2}, meta={FIGURES: figures}).to_shareable()
        assert from_shareable(reply).get_meta_prop(FIGURES) == figures
        ctx.set_prop(AppConstants.DATA_CLIENT, site, private=True, sticky=False)
        ctx.set_prop(AppConstants.VALIDATION_RESULT, reply, private=True, sticky=False)
        summary.handle_event(AppEventType.VALIDATION_RESULT_RECEIVED, ctx)
    assert (tmp_path / "cross_site_val" / "site-1_image_fusion_val.png").read_bytes() == PNG
    assert sorted(p.name for p in (tmp_path / "cross_site_val").iterdir()) == ["site-1_image_fusion_val.png"]
    assert len(warnings) == 2 and summary.results["site-2"]["ssim_w"] == 0.8  # bad figures ignored, metrics kept
