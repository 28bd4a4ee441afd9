"""The FLARE executor under DP: epsilon in the train reply's metrics and in the validate reply
(cross_val_results.json); a spent budget is an EARLY_TERMINATION reply naming the budget."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from omnifm.algorithms import initial_global, make_run_spec
from omnifm.data.site import SiteData
from omnifm.fl import wire
from omnifm.fl.executor import OmniFMExecutor
from synthetic_cases import SMALL, FakeEngine as _Engine


def _volumes(n: int):
    rng = np.random.default_rng(0)
    label = np.zeros((1, 32, 32, 4), np.uint8)
    label[0, 8:20, 8:20, 1:3] = 1
    return [{"image": rng.normal(size=(1, 32, 32, 4)).astype(np.float32) + label, "label": label} for _ in range(n)]


def _site(tmp_path, monkeypatch, dp: dict):
    spec = make_run_spec("omnifm", model=SMALL, num_prototypes=2)
    executor = OmniFMExecutor(local_epochs=1, batch_size=4, min_prototype_count=2, dp=dp, analytic_sender_id="")
    data = SiteData(_volumes(4), _volumes(1), "test volumes", True, 0, [])
    monkeypatch.setattr(executor, "_site_data", lambda spec, fl_ctx: data)
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, _Engine(tmp_path), private=True, sticky=False)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=True, sticky=False)
    weights, meta = initial_global(spec)
    return executor, ctx, (weights, {**meta, wire.SPEC: spec})


def _task(global_model, current: int, rounds: int):
    weights, meta = global_model
    task = DXO(DataKind.WEIGHTS, data=weights, meta=meta).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, current)
    task.set_header(AppConstants.NUM_ROUNDS, rounds)
    return task


def test_dp_round_reports_epsilon_and_validate_returns_the_final_epsilon(tmp_path, monkeypatch):
    dp = {"target_epsilon": 6.0, "delta": 1e-3, "cases_per_step": 2, "slices_per_case": 2}
    executor, ctx, model = _site(tmp_path, monkeypatch, dp)
    reply = executor.execute("train", _task(model, 0, 2), ctx, Signal())
    assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK
    meta = from_shareable(reply).meta
    metrics = meta[wire.METRICS]
    assert 0 < metrics["dp_epsilon"] <= 6.0 and metrics["dp_noise_multiplier"] > 0
    assert metrics["dp_max_grad_norm"] == 1.0 and metrics["dp_sample_rate"] == 0.5
    executor._trainer = None  # the simulator rebuilds the executor: the accountant comes from the personal file
    scores = from_shareable(executor.execute("validate", _task(model, 0, 2), ctx, Signal())).data
    assert scores["dp_epsilon"] == pytest.approx(metrics["dp_epsilon"])


def test_a_spent_budget_is_an_early_termination_reply_naming_it(tmp_path, monkeypatch, caplog):
    dp = {"noise_multiplier": 0.5, "target_epsilon": 0.1, "delta": 1e-3, "cases_per_step": 2}
    executor, ctx, model = _site(tmp_path, monkeypatch, dp)
    with caplog.at_level(logging.WARNING):
        reply = executor.execute("train", _task(model, 0, 2), ctx, Signal())
    assert reply.get_return_code() == ReturnCode.EARLY_TERMINATION
    assert "DP budget exhausted" in caplog.text and "target_epsilon 0.1" in caplog.text
