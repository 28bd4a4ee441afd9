from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import make_reply
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants

from omnifm.algorithms import Upload, server_round
from omnifm.algorithms.server import AMPLITUDES, STATE
from omnifm.fl import wire
from omnifm.fl.aggregator import OmniFMAggregator
from omnifm.knowledge import KnowledgeBank

SHAPES = {"a": (2, 3), "b": (4,)}


def _ctx(bank: KnowledgeBank | None = None, current: int = 0, algorithm: str = "omnifm", shapes=SHAPES) -> FLContext:
    ctx = FLContext()
    weights = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    meta = {wire.SPEC: {"algorithm": algorithm}, wire.BANK: None if bank is None else bank.to_plain()}
    ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(weights, meta), private=True, sticky=False)
    ctx.set_prop(AppConstants.CURRENT_ROUND, current, private=True, sticky=False)
    return ctx


def _result(site: str, value: float, n: int = 10, round_of: int = 0, meta: dict | None = None, **overrides):
    weights = {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}
    weights.update(overrides)
    dxo = DXO(DataKind.WEIGHTS, data=weights, meta=dict(meta or {}))
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, n)
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_of)
    return shareable


def test_sample_weighted_average():
    agg, ctx = OmniFMAggregator(), _ctx()
    assert agg.accept(_result("site-1", 1.0, n=10), ctx)
    assert agg.accept(_result("site-2", 4.0, n=30), ctx)
    out = from_shareable(agg.aggregate(ctx))
    np.testing.assert_allclose(out.data["a"], np.full((2, 3), 3.25), rtol=1e-6)
    assert out.data["a"].dtype == np.float32


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: _result("site-1", np.nan), "NaN"),
        (lambda: _result("site-1", 1.0, a=np.full((2, 3), np.inf, np.float32)), "NaN or Inf"),
        (lambda: _result("site-1", 1.0, a=np.zeros((3, 2), np.float32)), "shape"),
        (lambda: _result("site-1", 1.0, c=np.zeros(1, np.float32)), "names differ"),
        (lambda: _result("site-1", 1.0, a=torch.zeros(2, 3)), "numpy"),
        (lambda: _result("site-1", 1.0, n=0), "n_samples"),
        (lambda: _result("site-1", 1.0, round_of=3), "round 3"),
        (lambda: make_reply(ReturnCode.EXECUTION_EXCEPTION), "returned"),
    ],
)
def test_bad_contribution_is_rejected_with_a_reason(make, reason, caplog):
    agg, ctx = OmniFMAggregator(), _ctx()
    assert not agg.accept(make(), ctx)
    assert reason in caplog.text
    assert agg.accept(_result("site-2", 2.0), ctx), "the round continues with the others"
    np.testing.assert_allclose(from_shareable(agg.aggregate(ctx)).data["b"], 2.0)


def test_second_result_from_the_same_site_is_rejected():
    agg, ctx = OmniFMAggregator(), _ctx()
    assert agg.accept(_result("site-1", 1.0), ctx)
    assert not agg.accept(_result("site-1", 9.0), ctx)


def test_nothing_accepted_fails_loudly():
    agg, ctx = OmniFMAggregator(), _ctx(current=4)
    assert not agg.accept(_result("site-1", np.nan), ctx)
    panics = []
    agg.system_panic = lambda reason, fl_ctx: panics.append(reason)
    with pytest.raises(RuntimeError, match="round 4: no site contribution was accepted"):
        agg.aggregate(ctx)
    assert panics and "nothing to aggregate" in panics[0]


def test_reset_forgets_the_round():
    agg, ctx = OmniFMAggregator(), _ctx()
    agg.accept(_result("site-1", 1.0), ctx)
    agg.reset(ctx)
    agg.system_panic = lambda reason, fl_ctx: None
    with pytest.raises(RuntimeError):
        agg.aggregate(ctx)


def test_bank_is_updated_from_uploaded_prototypes_and_retrievals():
    bank = KnowledgeBank(dim=4, delta=0.5, prune_window=1)
    bank.insert(torch.eye(4)[:2])
    agg, ctx = OmniFMAggregator(), _ctx(bank)
    uploads = {wire.PROTOTYPES: [[0.0, 0.0, 3.0, 0.0]], wire.PROTOTYPE_COUNTS: [12],
               wire.RETRIEVAL_IDS: [0], wire.RETRIEVAL_COUNTS: [20]}
    assert agg.accept(_result("site-1", 1.0, meta=uploads), ctx)
    meta = from_shareable(agg.aggregate(ctx)).meta
    new_bank = KnowledgeBank.from_plain(meta[wire.BANK])
    assert new_bank.version == 1
    assert new_bank.ids.tolist() == [0, 2], "id 1 was never retrieved and is pruned; the upload is inserted"
    assert new_bank.prototypes.norm(dim=1).max() <= 1.0, "the upload is projected onto the ball"
    assert meta[wire.SPEC] == {"algorithm": "omnifm"}, "the run spec is carried forward"


def test_malformed_prototypes_reject_the_contribution(caplog):
    agg, ctx = OmniFMAggregator(), _ctx(KnowledgeBank(dim=4))
    assert not agg.accept(_result("site-1", 1.0, meta={wire.PROTOTYPES: [[np.nan] * 4]}), ctx)
    assert not agg.accept(_result("site-2", 1.0, meta={wire.PROTOTYPES: [[1.0, 2.0, 3.0]]}), ctx)
    assert "NaN" in caplog.text and "prototypes[0] has 3 values, expected 4" in caplog.text


def test_accepted_aggregate_has_no_numpy_or_tensor_in_meta():
    agg, ctx = OmniFMAggregator(), _ctx(KnowledgeBank(dim=4))
    agg.accept(_result("site-1", 1.0, meta={wire.PROTOTYPES: [[1.0, 0.0, 0.0, 0.0]]}), ctx)
    meta = from_shareable(agg.aggregate(ctx)).meta
    assert _plain(meta)


def _plain(node) -> bool:
    if isinstance(node, dict):
        return all(_plain(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return all(_plain(v) for v in node)
    return node is None or isinstance(node, (str, int, float, bool))


def _amplitude_meta(values: list[float]) -> dict:
    return {wire.EXTRAS: {AMPLITUDES: [[[values]]]}}


def test_aggregate_is_the_core_server_round():
    """The FLARE aggregator adds checks only: its result equals server_round on the same uploads."""
    agg, ctx = OmniFMAggregator(), _ctx(algorithm="feddg")
    agg.accept(_result("site-2", 4.0, n=30, meta=_amplitude_meta([3.0, 4.0])), ctx)
    agg.accept(_result("site-1", 1.0, n=10, meta=_amplitude_meta([1.0, 2.0])), ctx)
    out = from_shareable(agg.aggregate(ctx))
    uploads = [
        Upload({k: np.full(s, v, np.float32) for k, s in SHAPES.items()}, n, extras={AMPLITUDES: [[[a]]]}, site=site)
        for site, v, n, a in [("site-1", 1.0, 10, [1.0, 2.0]), ("site-2", 4.0, 30, [3.0, 4.0])]
    ]
    global_model = ctx.get_prop(AppConstants.GLOBAL_MODEL)
    weights, meta = server_round({"algorithm": "feddg"}, global_model["weights"], dict(global_model["meta"]), uploads)
    assert out.data.keys() == weights.keys() and all(np.array_equal(out.data[k], weights[k]) for k in weights)
    assert out.meta[STATE] == meta[STATE] == {AMPLITUDES: [[[[1.0, 2.0]]], [[[3.0, 4.0]]]]}


def test_local_accepts_and_keeps_an_empty_model():
    agg, ctx = OmniFMAggregator(), _ctx(algorithm="local", shapes={})
    dxo = DXO(DataKind.WEIGHTS, data={}, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 7})
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    assert agg.accept(shareable, ctx)
    assert from_shareable(agg.aggregate(ctx)).data == {}


def test_empty_weights_are_refused_when_the_model_is_not_empty(caplog):
    agg, ctx = OmniFMAggregator(), _ctx()
    dxo = DXO(DataKind.WEIGHTS, data={}, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 7})
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    assert not agg.accept(shareable, ctx) and "no weights" in caplog.text


def test_extras_that_are_not_a_dict_are_refused(caplog):
    agg, ctx = OmniFMAggregator(), _ctx(algorithm="feddg")
    assert not agg.accept(_result("site-1", 1.0, meta={wire.EXTRAS: [1, 2]}), ctx)
    assert "extras must be a dict" in caplog.text


def test_uploads_the_rule_cannot_combine_fail_the_round():
    agg, ctx = OmniFMAggregator(), _ctx(algorithm="feddg")
    agg.accept(_result("site-1", 1.0, meta=_amplitude_meta([1.0, 2.0])), ctx)
    agg.accept(_result("site-2", 1.0, meta=_amplitude_meta([1.0, 2.0, 3.0])), ctx)
    panics = []
    agg.system_panic = lambda reason, fl_ctx: panics.append(reason)
    with pytest.raises(RuntimeError, match="cannot be combined"):
        agg.aggregate(ctx)
    assert panics and "feddg needs equal slice sizes" in panics[0]


# ------------------------------------------------------------------ malformed uploads (issue 13, items 4-7, 11)

RID, RCOUNT, PROTOS, PCOUNTS = wire.RETRIEVAL_IDS, wire.RETRIEVAL_COUNTS, wire.PROTOTYPES, wire.PROTOTYPE_COUNTS


def _spec_ctx(num_prototypes: int = 4, **kwargs) -> FLContext:
    """A global model whose meta has a bank of dimension 4 and a run spec allowing ``num_prototypes``."""
    ctx = _ctx(KnowledgeBank(dim=4), **kwargs)
    global_model = ctx.get_prop(AppConstants.GLOBAL_MODEL)
    global_model["meta"][wire.SPEC] = {"algorithm": "fedavg", "num_prototypes": num_prototypes}
    return ctx


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: _result("s", 1.0, a=np.array([[1, 2, 3], [4, 5, 6]], dtype=object)), "a has dtype object"),
        (lambda: _result("s", 1.0, a=np.full((2, 3), "x")), "a has dtype <U1"),
        (lambda: _result("s", 1.0, a=np.ones((2, 3), bool)), "a has dtype bool"),
        (lambda: _result("s", 1.0, meta={RID: ["abc"], RCOUNT: [1]}), "retrieval ids[0] must be an int"),
        (lambda: _result("s", 1.0, meta={RID: [float("nan")], RCOUNT: [1]}), "retrieval ids[0] must be an int"),
        (lambda: _result("s", 1.0, meta={RID: 7, RCOUNT: 1}), "retrieval ids must be a list of ints, got int"),
        (lambda: _result("s", 1.0, meta={RID: [0], RCOUNT: ["x"]}), "retrieval counts[0] must be an int"),
        (lambda: _result("s", 1.0, meta={RID: [0], RCOUNT: [None]}), "retrieval counts[0] must be an int"),
        (lambda: _result("s", 1.0, meta={RID: [0, 1], RCOUNT: [3]}), "retrieval counts has 1 entries, expected 2"),
        (lambda: _result("s", 1.0, meta={RID: [0, 0], RCOUNT: [3, 4]}), "retrieval ids repeat an id"),
        (lambda: _result("s", 1.0, meta={RID: [0], RCOUNT: [10**30]}), "retrieval counts[0] must be an int in [0, 1000000000]"),
        (lambda: _result("s", 1.0, meta={RID: [0], RCOUNT: [-5]}), "retrieval counts[0] must be an int"),
        (lambda: _result("s", 1.0, n=10**400), "n_samples must be an int in [1, 1000000000], got 1000000000"),
        (lambda: _result("s", 1.0, n=True), "n_samples must be an int in [1, 1000000000], got True"),
        (lambda: _result("s", 1.0, n=5.0), "n_samples must be an int"),
        (lambda: _result("s", 1.0, meta={wire.METRICS: {"loss": "low"}}), "metric 'loss' must be a number, got str"),
        (lambda: _result("s", 1.0, meta={wire.METRICS: {"loss": [0.1]}}), "metric 'loss' must be a number, got list"),
        (lambda: _result("s", 1.0, meta={wire.METRICS: [0.1]}), "metrics must be a dict"),
        (lambda: _result("s", 1.0, meta={PROTOS: [[0.1] * 2] * 2, PCOUNTS: [8, 8]}), "prototypes[0] has 2 values, expected 4"),
        (lambda: _result("s", 1.0, meta={PROTOS: [0.1] * 8}), "prototypes must be a list of 4-value lists"),
        (lambda: _result("s", 1.0, meta={PROTOS: [[0.1] * 8]}), "prototypes[0] has 8 values, expected 4"),
        (lambda: _result("s", 1.0, meta={PROTOS: [[[0.1] * 4]]}), "prototypes[0] has 1 values"),
        (lambda: _result("s", 1.0, meta={PROTOS: [["a"] * 4]}), "prototypes must hold only numbers"),
        (lambda: _result("s", 1.0, meta={PROTOS: [[10**400] * 4]}), "beyond the float32 range"),
        (lambda: _result("s", 1.0, meta={PROTOS: [[1e39] * 4]}), "NaN or Inf (or values beyond the float32 range)"),
        (lambda: _result("s", 1.0, meta={PROTOS: [[0.1] * 4] * 5}), "5 rows uploaded, at most 4 are allowed"),
        (lambda: _result("s", 1.0, meta={PROTOS: [[0.1] * 4], PCOUNTS: ["abc"]}), "prototype counts[0] must be an int"),
        (lambda: _result("s", 1.0, meta={PROTOS: [[0.1] * 4], PCOUNTS: [8, 8]}), "prototype counts has 2 entries, expected 1"),
        (lambda: _result("s", 1.0, meta={wire.EXTRAS: {AMPLITUDES: [[1.0, "x"]]}}), "amplitudes must be a rectangular list"),
        (lambda: _result("s", 1.0, meta={wire.EXTRAS: {AMPLITUDES: [1.0, 2.0]}}), "amplitudes must be finite (G, C, w, w)"),
    ],
)
def test_every_malformed_field_is_a_rejection_naming_the_site(make, reason, caplog):
    """Before, most of these raised out of accept() (one bad site aborted the job) or broke aggregate() for all."""
    agg, ctx = OmniFMAggregator(), _spec_ctx()
    shareable = make()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: "site-bad"})
    assert agg.accept(shareable, ctx) is False
    assert f"rejected contribution from site-bad: " in caplog.text and reason in caplog.text, caplog.text
    assert agg.accept(_result("site-2", 2.0, meta={wire.METRICS: {"loss": 0.5, "dice": float("nan")}}), ctx)
    out = from_shareable(agg.aggregate(ctx))
    np.testing.assert_allclose(out.data["b"], 2.0)


def test_a_contribution_that_cannot_be_read_at_all_is_still_only_a_rejection(monkeypatch, caplog):
    agg, ctx = OmniFMAggregator(), _ctx()
    monkeypatch.setattr(wire, "check_weights", lambda *a: 1 / 0)  # any unforeseen failure while reading
    assert agg.accept(_result("site-1", 1.0), ctx) is False
    assert "rejected contribution from site-1: the contribution cannot be read (ZeroDivisionError" in caplog.text


class _Engine:
    def __init__(self, sites):
        self.sites = [type("Client", (), {"name": s})() for s in sites]

    def get_clients(self):
        return self.sites

    def fire_event(self, *args, **kwargs):
        pass


def _error_reply(agg, ctx, site: str, code: str, round_of: int = 0, task: str = "train") -> None:
    """What FLARE's ServerRunner does before the workflow sees (and drops) an error reply."""
    reply = make_reply(code)
    reply.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    reply.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_of)
    ctx.set_prop(FLContextKey.TASK_NAME, task, private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_RESULT, reply, private=True, sticky=False)
    agg.handle_event(EventType.BEFORE_PROCESS_SUBMISSION, ctx)


def test_nothing_accepted_says_per_site_what_happened():
    agg, ctx = OmniFMAggregator(), _ctx(current=2)
    ctx.set_prop(ReservedKey.ENGINE, _Engine(["site-1", "site-2", "site-3", "site-4"]), private=True, sticky=False)
    agg.accept(_result("site-1", np.nan, round_of=2), ctx)
    _error_reply(agg, ctx, "site-2", ReturnCode.EXECUTION_EXCEPTION, round_of=2)
    _error_reply(agg, ctx, "site-4", ReturnCode.BAD_TASK_DATA, round_of=1)  # late reply to the previous round
    _error_reply(agg, ctx, "site-3", ReturnCode.BAD_TASK_DATA, round_of=2, task="validate")  # not a training reply
    panics = []
    agg.system_panic = lambda reason, fl_ctx: panics.append(reason)
    with pytest.raises(RuntimeError):
        agg.aggregate(ctx)
    message = panics[0]
    assert "round 2: no site contribution was accepted" in message
    assert "site-1 rejected: a contains NaN or Inf" in message
    assert "site-2 replied with error EXECUTION_EXCEPTION" in message
    assert "site-3 sent no result this round (no reply" in message and "site-4 sent no result" in message
    assert "warnings above" not in message


def test_the_per_site_record_is_forgotten_with_the_round():
    agg, ctx = OmniFMAggregator(), _ctx()
    _error_reply(agg, ctx, "site-2", ReturnCode.EXECUTION_EXCEPTION)
    agg.reset(ctx)
    agg.system_panic = lambda reason, fl_ctx: None
    with pytest.raises(RuntimeError, match="no site sent anything"):
        agg.aggregate(ctx)
