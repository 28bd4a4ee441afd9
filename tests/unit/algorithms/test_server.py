"""The server rule of the round protocol, hand-checked on small arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifm.algorithms import BANK, STATE, Upload, initial_global, make_run_spec, server_round, to_plain
from omnifm.algorithms.server import AMPLITUDES, CONTROL_PREFIX
from omnifm.knowledge import KnowledgeBank

SMALL = {"channels": [8, 16, 32], "strides": [2, 2]}
C = CONTROL_PREFIX


def _spec(algorithm: str) -> dict:
    return make_run_spec(algorithm, model=SMALL)


def _up(site: str, value: float, n: int, **extra) -> Upload:
    return Upload({"w": np.full(2, value, np.float32)}, n, site=site, **extra)


def test_weighted_average_and_meta_carried_forward():
    meta = {BANK: None, STATE: {}, "omnifm_spec": {"algorithm": "fedavg"}}
    weights, out = server_round(_spec("fedavg"), {"w": np.zeros(2, np.float32)}, meta, [_up("a", 1.0, 1), _up("b", 3.0, 3)])
    np.testing.assert_array_equal(weights["w"], [2.5, 2.5])  # (1*1 + 3*3) / 4
    assert weights["w"].dtype == np.float32
    assert out["omnifm_spec"] == {"algorithm": "fedavg"} and out[STATE] == {}


def test_upload_order_does_not_change_a_bit():
    rng = np.random.default_rng(0)
    ups = [Upload({"w": rng.normal(size=100).astype(np.float32)}, int(n), site=f"site-{i}") for i, n in enumerate([3, 7, 11])]
    a, _ = server_round(_spec("fedavg"), {"w": np.zeros(100, np.float32)}, {BANK: None}, ups)
    b, _ = server_round(_spec("fedavg"), {"w": np.zeros(100, np.float32)}, {BANK: None}, ups[::-1])
    np.testing.assert_array_equal(a["w"], b["w"])


def test_local_keeps_the_empty_model():
    weights, meta = initial_global(_spec("local"))
    assert weights == {}
    out, _ = server_round(_spec("local"), weights, meta, [Upload({}, 5, site="a"), Upload({}, 2, site="b")])
    assert out == {}


def test_scaffold_server_control_is_c_plus_the_mean_delta():
    """SCAFFOLD: c <- c + mean_i(delta c_i), unweighted; the model itself is the weighted mean."""
    glob = {"w": np.zeros(1, np.float32), C + "w": np.array([1.0], np.float32)}
    ups = [Upload({"w": np.array([2.0], np.float32), C + "w": np.array([0.5], np.float32)}, 1, site="a"),
           Upload({"w": np.array([4.0], np.float32), C + "w": np.array([-1.5], np.float32)}, 3, site="b")]
    out, _ = server_round(_spec("scaffold"), glob, {BANK: None}, ups)
    np.testing.assert_allclose(out["w"], [3.5])  # (2 + 12) / 4
    np.testing.assert_allclose(out[C + "w"], [0.5])  # 1 + (0.5 - 1.5) / 2


def test_scaffold_initial_global_has_zero_controls_for_every_shared_weight():
    weights, _ = initial_global(_spec("scaffold"))
    model_names = [k for k in weights if not k.startswith(C)]
    assert model_names and {C + k for k in model_names} == {k for k in weights if k.startswith(C)}
    assert all(not weights[C + k].any() for k in model_names)


def test_feddg_pools_the_amplitude_groups_into_the_state():
    a = [[[[1.0, 2.0]]]]  # (G=1, C=1, 1, 2)
    b = [[[[3.0, 4.0]]], [[[5.0, 6.0]]]]
    ups = [_up("b", 1.0, 1, extras={AMPLITUDES: b}), _up("a", 1.0, 1, extras={AMPLITUDES: a})]
    _, meta = server_round(_spec("feddg"), {"w": np.zeros(2, np.float32)}, {BANK: None, STATE: {AMPLITUDES: [[[[9.0]]]]}}, ups)
    assert meta[STATE][AMPLITUDES] == a + b, "sorted by site, previous round's bank replaced"


@pytest.mark.parametrize(
    "amps, match",
    [([[[[1.0, 2.0, 3.0]]]], r"\(C, w, w\) = \(1, 1, 2\)"), ([1.0, 2.0], "expected finite"), ([[[[np.nan, 1.0]]]], "finite")],
)
def test_feddg_refuses_amplitudes_it_cannot_pool(amps, match):
    ups = [_up("a", 1.0, 1, extras={AMPLITUDES: [[[[1.0, 2.0]]]]}), _up("b", 1.0, 1, extras={AMPLITUDES: amps})]
    with pytest.raises(ValueError, match=match):
        server_round(_spec("feddg"), {"w": np.zeros(2, np.float32)}, {BANK: None}, ups)


def test_bank_rule_runs_on_the_uploads():
    bank = KnowledgeBank(dim=4)
    ups = [Upload({}, 3, torch.tensor([[0.0, 0.0, 3.0, 0.0]]), {}, site="a")]
    _, meta = server_round(_spec("omnifm"), {}, {BANK: bank.to_plain()}, ups)
    new = KnowledgeBank.from_plain(meta[BANK])
    assert new.version == 1 and len(new) == 1 and new.prototypes.norm() <= new.rho


def test_no_upload_is_an_error():
    with pytest.raises(ValueError, match="at least one upload"):
        server_round(_spec("fedavg"), {}, {}, [])


def test_to_plain_leaves_no_tensor_or_numpy():
    plain = to_plain({"t": torch.ones(2), "a": np.zeros((1, 2), np.float32), "n": np.int64(3), "l": (torch.zeros(1),)})
    assert plain == {"t": [1.0, 1.0], "a": [[0.0, 0.0]], "n": 3, "l": [[0.0]]} and type(plain["n"]) is int
