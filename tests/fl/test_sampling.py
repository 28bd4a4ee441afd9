"""The participation controller sends each round's train task to the sampled sites only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from nvflare.apis.impl.controller import Controller

from omnifm.algorithms.participation import participants
from omnifm.fl.sampling import SampledScatterAndGather

SITES = [f"site-{i}" for i in range(1, 6)]


def _controller(monkeypatch, participation: float, round_num: int):
    sent = {}

    def fake_broadcast(self, task, fl_ctx, targets=None, min_responses=1, wait=0, abort_signal=None):
        sent.update(task=task.name, targets=targets, min_responses=min_responses)

    monkeypatch.setattr(Controller, "broadcast_and_wait", fake_broadcast)
    sag = SampledScatterAndGather(participation=participation, sampling_seed=3, min_clients=3, num_rounds=5)
    sag._engine = SimpleNamespace(get_clients=lambda: [SimpleNamespace(name=s) for s in SITES])
    sag._current_round = round_num
    monkeypatch.setattr(sag, "log_info", lambda *a, **k: None)
    return sag, sent


@pytest.mark.parametrize("round_num", [0, 1, 4])
def test_the_train_task_goes_to_the_shared_rule_s_sites(monkeypatch, round_num):
    sag, sent = _controller(monkeypatch, 0.4, round_num)
    sag.broadcast_and_wait(SimpleNamespace(name="train"), fl_ctx=None, min_responses=3)
    assert sent["targets"] == participants(SITES, 0.4, round_num, seed=3) and len(sent["targets"]) == 2
    assert sent["min_responses"] == 2 and sag._current_num_targets == 2  # a round never waits for unsampled sites


def test_full_participation_and_other_tasks_are_untouched(monkeypatch):
    sag, sent = _controller(monkeypatch, 1.0, 0)
    sag.broadcast_and_wait(SimpleNamespace(name="train"), fl_ctx=None, min_responses=3)
    assert sent["targets"] is None and sent["min_responses"] == 3
    sag, sent = _controller(monkeypatch, 0.4, 0)
    sag.broadcast_and_wait(SimpleNamespace(name="validate"), fl_ctx=None, min_responses=3)
    assert sent["task"] == "validate" and sent["targets"] is None


def test_bad_participation_is_refused():
    with pytest.raises(ValueError, match="participation"):
        SampledScatterAndGather(participation=0.0, min_clients=1, num_rounds=1)
