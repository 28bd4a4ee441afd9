"""Blockwise int8 filters: per-block error bound, NaN/Inf and ciphertexts refused, both directions over FOBS."""

from __future__ import annotations

import json
from math import ceil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import make_copy
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import common_decomposers
from nvflare.fuel.utils import fobs

from omnifm.algorithms import initial_global, make_run_spec
from omnifm.fl import combinations, quantize, wire
from omnifm.fl.aggregator import OmniFMAggregator
from omnifm.fl.quantize import DequantizeWeights, QuantizeWeights
from omnifm.tools.build_job import add_compression

JOBS = Path(__file__).resolve().parents[2] / "jobs"
RNG = np.random.default_rng(0)
ARRAYS = {
    "normal": RNG.normal(0, 0.5, 5000),
    "heavy-tailed": RNG.standard_cauchy(3001),
    "tiny": RNG.normal(0, 1e-30, 700),
    "huge": RNG.normal(0, 1e6, 700),
    "constant": np.full(300, -0.75),
    "zeros": np.zeros(513),
    "one value": np.array([3.0]),
}


def _ctx(site: str = "server", **props) -> FLContext:
    ctx = FLContext()
    for key, value in props.items():
        ctx.set_prop(key, value, private=True, sticky=False)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_peer_context(peer)
    return ctx


def _wire(shareable):
    common_decomposers.register()
    return fobs.loads(fobs.dumps(shareable))


@pytest.mark.parametrize("block", [1, 7, 64, 256, 4096])
@pytest.mark.parametrize("kind", sorted(ARRAYS))
def test_round_trip_error_is_at_most_half_a_scale_in_every_block(kind, block):
    x = ARRAYS[kind].astype(np.float32)
    q, scales = quantize.quantize_blockwise(x, block)
    assert q.dtype == torch.int8 and q.numel() == x.size and scales.numel() == ceil(x.size / block)
    padded = np.pad(np.abs(x), (0, scales.numel() * block - x.size)).reshape(-1, block)
    np.testing.assert_allclose(scales.numpy(), padded.max(axis=1) / 127, rtol=1e-6)  # absmax scale, not a loose one
    restored = quantize.dequantize_blockwise(q, scales, block).numpy()
    per_value_scale = np.repeat(scales.numpy(), block)[: x.size]
    assert (np.abs(x - restored) <= per_value_scale / 2 * (1 + 1e-6)).all()
    q_blocks = np.pad(np.abs(q.numpy().astype(int)), (0, scales.numel() * block - x.size)).reshape(-1, block)
    assert (q_blocks.max(axis=1)[scales.numpy() > 0] == 127).all(), "every non-zero block uses the full int8 range"


def test_blocks_do_not_span_tensors():
    weights = {"big": np.array([100.0, -50.0], np.float32), "small": np.array([1e-3, 2e-3], np.float32)}
    data, layout = quantize.compress(weights, block_size=256)
    restored = quantize.decompress(data, layout)
    assert np.abs(restored["small"] - weights["small"]).max() <= 2e-3 / 127 / 2 * (1 + 1e-6)
    assert data[quantize.SCALES].size == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_with_the_tensor_named(bad):
    weights = {"a": np.ones(10, np.float32), "b": np.ones(10, np.float32)}
    weights["b"][4] = bad
    with pytest.raises(ValueError, match="cannot quantize b: values contain NaN or Inf"):
        quantize.compress(weights)
    shareable = DXO(DataKind.WEIGHTS, data=weights).to_shareable()
    with pytest.raises(ValueError, match="cannot quantize b"):
        QuantizeWeights().process(shareable, _ctx("site-1"))


@pytest.mark.parametrize("value", [b"\x00ciphertext", "text", np.arange(4)], ids=["bytes", "str", "int-array"])
def test_non_float_values_are_refused(value):
    with pytest.raises(ValueError, match="(not a float array|only float values)"):
        quantize.compress({"w": value})


def test_ckks_marked_weights_are_refused_with_the_reason():
    dxo = DXO(DataKind.WEIGHTS, data={"w": b"ciphertext"}, meta={MetaKey.PROCESSED_ALGORITHM: "CKKS",
                                                                   MetaKey.PROCESSED_KEYS: {"w": True}})
    with pytest.raises(ValueError, match="CKKS ciphertexts cannot be int8-quantized"):
        QuantizeWeights().process(dxo.to_shareable(), _ctx("site-1"))


def _spec() -> dict:
    server = json.loads((JOBS / "omnifm_seg/app/config/config_fed_server.json").read_text())
    args = next(c["args"] for c in server["components"] if c["id"] == "persistor")
    keep = ("task", "model", "omnifm", "top_k", "align_weight", "num_prototypes", "prox_mu", "seed")
    return make_run_spec(algorithm=server["algorithm"], **{k: args[k] for k in keep if k in args})


def _check_close(restored: dict, original: dict, block: int = 256) -> None:
    for name, value in original.items():
        assert restored[name].dtype == np.float32 and restored[name].shape == value.shape, name
        bound = np.abs(value).max() / 127 / 2 * (1 + 1e-6) if value.size else 0
        assert np.abs(restored[name] - value).max(initial=0) <= bound, name


def test_global_model_task_round_trips_through_fobs_and_shrinks_to_a_quarter():
    """Server -> site: the job's real model and the task meta (spec, bank) as the persistor makes them."""
    spec = _spec()
    weights, meta = initial_global(spec)
    task_meta = {**meta, wire.SPEC: spec}
    task = DXO(DataKind.WEIGHTS, data=weights, meta=task_meta).to_shareable()
    common_decomposers.register()
    plain_bytes = len(fobs.dumps(task))

    sent = QuantizeWeights().process(make_copy(task), _ctx())  # FLARE hands each site a shallow copy
    untouched = from_shareable(task)
    assert untouched.data_kind == DataKind.WEIGHTS and untouched.data is weights and untouched.meta == task_meta
    assert all(v.dtype == np.float32 for v in weights.values()), "the task data shared by all sites must not change"
    on_wire = fobs.dumps(sent)
    received = DequantizeWeights().process(fobs.loads(on_wire), _ctx("site-1"))
    dxo = from_shareable(received)
    assert dxo.data_kind == DataKind.WEIGHTS
    _check_close(dxo.data, weights)
    assert dxo.get_meta_prop(wire.SPEC) == spec and dxo.get_meta_prop(wire.BANK) == task_meta[wire.BANK]
    assert quantize.LAYOUT not in dxo.meta
    fp32 = 4 * sum(v.size for v in weights.values())
    assert len(on_wire) < 0.27 * fp32 < 0.27 * plain_bytes


def test_site_result_round_trips_and_the_server_accepts_it():
    """Site -> server: a result with prototypes, counts and metrics, through FOBS, into the real aggregator."""
    shapes = {"conv.weight": (16, 1, 3, 3), "conv.bias": (16,), "fc": (300, 7)}
    weights = {k: RNG.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}
    meta = {wire.PROTOTYPES: [[0.1, 0.2], [0.3, 0.4]], wire.PROTOTYPE_COUNTS: [9, 9], wire.RETRIEVAL_IDS: [0],
            wire.RETRIEVAL_COUNTS: [3], wire.METRICS: {"loss": 0.5}, MetaKey.NUM_STEPS_CURRENT_ROUND: 12}
    result = DXO(DataKind.WEIGHTS, data={k: v.copy() for k, v in weights.items()}, meta=dict(meta)).to_shareable()
    result = _wire(QuantizeWeights(block_size=64).process(result, _ctx("site-1")))
    result.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    result.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    global_model = make_model_learnable({k: np.zeros(s, np.float32) for k, s in shapes.items()},
                                        {wire.SPEC: {"algorithm": "fedavg"}, wire.BANK: None, wire.STATE: {}})
    server_ctx = _ctx(**{AppConstants.GLOBAL_MODEL: global_model, AppConstants.CURRENT_ROUND: 0})

    assert not OmniFMAggregator().accept(result, server_ctx), "int8 data must never be averaged as weights"
    restored = DequantizeWeights().process(result, server_ctx)
    dxo = from_shareable(restored)
    _check_close(dxo.data, weights, block=64)
    assert {k: dxo.meta[k] for k in meta} == meta
    assert OmniFMAggregator().accept(restored, server_ctx)


def test_without_the_dequantizer_the_aggregator_names_the_data_kind(caplog):
    result = QuantizeWeights().process(DXO(DataKind.WEIGHTS, data={"w": np.ones(10, np.float32)},
                                           meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 3}).to_shareable(), _ctx("site-1"))
    result.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    result.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    global_model = make_model_learnable({"w": np.zeros(10, np.float32)}, {wire.SPEC: {}, wire.BANK: None})
    ctx = _ctx(**{AppConstants.GLOBAL_MODEL: global_model, AppConstants.CURRENT_ROUND: 0})
    assert not OmniFMAggregator().accept(result, ctx)
    assert f"data kind {quantize.Q8_WEIGHTS}, expected {DataKind.WEIGHTS}" in caplog.text


def test_uncompressed_weights_pass_the_dequantizer_unchanged(caplog):
    weights = {"w": np.arange(5, dtype=np.float32)}
    out = DequantizeWeights().process(DXO(DataKind.WEIGHTS, data=weights).to_shareable(), _ctx("site-1"))
    assert from_shareable(out).data["w"] is weights["w"]
    assert "arrived uncompressed" in caplog.text


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d, lay: (d, {**lay, "block_size": 0}), "block_size must be an int >= 1"),
        (lambda d, lay: (d, {**lay, "names": lay["names"][:1]}), "same length"),
        (lambda d, lay: ({**d, quantize.VALUES: d[quantize.VALUES][:-1]}, lay), "do not fit the layout"),
        (lambda d, lay: ({**d, quantize.SCALES: d[quantize.SCALES].astype(np.float16)}, lay), "float32 scales"),
        (lambda d, lay: ({"x": 1}, lay), "must hold exactly"),
        (lambda d, lay: (d, None), "must hold block_size, names and shapes"),
    ],
)
def test_malformed_quantized_data_is_refused(change, message):
    data, layout = quantize.compress({"a": np.ones((3, 4), np.float32), "b": np.ones(5, np.float32)}, block_size=4)
    data, layout = change(data, layout)
    with pytest.raises(ValueError, match=message):
        quantize.decompress(data, layout)


@pytest.mark.parametrize("block_size", [0, -1, 2.5])
def test_bad_block_size_is_refused_when_the_job_is_configured(block_size):
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        QuantizeWeights(block_size=block_size)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernels_give_the_cpu_result():
    x = torch.as_tensor(ARRAYS["normal"], dtype=torch.float32)
    q_cpu, s_cpu = quantize.quantize_blockwise(x, 256)
    q_gpu, s_gpu = quantize.quantize_blockwise(x.cuda(), 256)
    assert q_gpu.is_cuda and torch.equal(q_gpu.cpu(), q_cpu) and torch.allclose(s_gpu.cpu(), s_cpu)
    assert torch.allclose(quantize.dequantize_blockwise(q_gpu, s_gpu, 256).cpu(), quantize.dequantize_blockwise(q_cpu, s_cpu, 256))


# ---- jobs and combinations --------------------------------------------------------------------------------
def _config(job: str, side: str) -> dict:
    return json.loads((JOBS / job / "app/config" / f"config_fed_{side}.json").read_text())


@pytest.mark.parametrize("side", ["server", "client"])
def test_the_q8_job_is_the_default_job_plus_the_filter_pair(side):
    expected = _config("omnifm_seg", side)
    add_compression(expected, side)
    assert _config("omnifm_seg_q8", side) == expected, (
        "jobs/omnifm_seg_q8 drifted from jobs/omnifm_seg: rebuild it (jobs/omnifm_seg_q8/app/custom/README.md)")


def _instances(config: dict) -> list:
    import importlib

    out = []
    for section in ("task_data_filters", "task_result_filters"):
        for entry in config.get(section, []):
            for f in entry["filters"]:
                module, _, name = f["path"].rpartition(".")
                out.append(getattr(importlib.import_module(module), name)(**f.get("args", {})))
    return out


def test_mechanisms_are_recognised_from_the_job_filters():
    pytest.importorskip("tenseal")
    q8 = _instances(_config("omnifm_seg_q8", "client")) + _instances(_config("omnifm_seg_q8", "server"))
    he_site = _instances(_config("omnifm_seg_he", "client"))
    assert combinations.mechanisms(q8) == {combinations.INT8}
    assert combinations.mechanisms(he_site) == {combinations.HE}
    assert combinations.refusal({combinations.INT8}) is None and combinations.refusal({combinations.HE}) is None
    assert combinations.refusal(combinations.mechanisms(q8 + he_site)) == combinations.HE_INT8


class _Panicked(Exception):
    pass


@pytest.mark.parametrize("where", ["server", "site"])
def test_a_job_with_he_and_int8_is_refused_at_start_run(where, monkeypatch):
    """The filter finds the HE components in FLARE's runner (server: runner.config; site: runner) and panics."""
    pytest.importorskip("tenseal")
    from nvflare.app_opt.he.model_decryptor import HEModelDecryptor

    quantizer = QuantizeWeights()
    tables = {"task_data_filters": {"train": [HEModelDecryptor()]}, "task_result_filters": {"train": [quantizer]}}
    runner = SimpleNamespace(config=SimpleNamespace(**tables, components={})) if where == "server" else \
        SimpleNamespace(**tables)
    reasons = []
    monkeypatch.setattr(quantizer, "system_panic", lambda reason, fl_ctx: reasons.append(reason))
    ctx = _ctx(**{FLContextKey.RUNNER: runner})
    assert combinations.refuse_at_start(quantizer, ctx)
    assert reasons == [f"QuantizeWeights: {combinations.HE_INT8}"]

    alone = SimpleNamespace(task_data_filters={"train": [DequantizeWeights()]}, task_result_filters={"train": [quantizer]})
    assert not combinations.refuse_at_start(quantizer, _ctx(**{FLContextKey.RUNNER: alone}))


def test_build_job_refuses_int8_for_an_he_job():
    with pytest.raises(ValueError, match="CKKS ciphertexts cannot be int8-quantized"):
        add_compression(_config("omnifm_seg_he", "server"), "server")
    with pytest.raises(ValueError, match="already has the int8 filters"):
        add_compression(_config("omnifm_seg_q8", "client"), "client")


def test_build_job_cli_adds_the_pair_to_both_sides(tmp_path):
    from omnifm.tools.build_job import main

    assert main([str(JOBS / "omnifm_seg"), "--out",
                 str(tmp_path), "--mode", "installed", "--compress", "int8"]) == 0
    built = tmp_path / "omnifm_seg" / "app" / "config"
    server, client = (json.loads((built / f"config_fed_{s}.json").read_text()) for s in ("server", "client"))
    assert server["task_data_filters"][-1]["filters"][-1]["path"].endswith("QuantizeWeights")
    assert server["task_result_filters"][0]["filters"][0]["path"].endswith("DequantizeWeights")
    assert client["task_result_filters"][-1]["filters"][-1]["path"].endswith("QuantizeWeights")
    assert client["task_data_filters"][0]["filters"][0]["path"].endswith("DequantizeWeights")
    assert main([str(JOBS / "omnifm_seg_he"), "--out", str(tmp_path / "he"), "--mode", "installed",
                 "--compress", "int8"]) == 2


def test_long_float_lists_in_meta_travel_as_float32_and_come_back_as_lists():
    """The bank's keys/values are plain lists in meta (9 bytes per float on the wire); they travel as float32."""
    bank = {"keys": RNG.normal(size=(64, 32)).tolist(), "values": RNG.normal(size=(64, 260)).tolist(),
            "ids": list(range(64)), "counts": [3] * 64, "version": 7, "short": [0.5, 0.25], "mixed": [1, 2.5] * 20,
            "ragged": [[0.1] * 20, [0.2] * 19], "name": "bank"}
    meta = {wire.BANK: bank, wire.PROTOTYPES: RNG.normal(size=(4, 32)).tolist(), MetaKey.NUM_STEPS_CURRENT_ROUND: 5}
    weights = {"w": RNG.normal(size=1000).astype(np.float32)}
    task = DXO(DataKind.WEIGHTS, data=weights, meta=meta).to_shareable()
    common_decomposers.register()
    sent = QuantizeWeights().process(make_copy(task), _ctx())
    assert from_shareable(task).meta[wire.BANK] is bank, "the shared task meta is not modified"
    restored = from_shareable(DequantizeWeights().process(_wire(sent), _ctx("site-1"))).meta
    for key in ("ids", "counts", "version", "short", "mixed", "name"):
        assert restored[wire.BANK][key] == bank[key], key
    for got, want in zip(restored[wire.BANK]["ragged"], bank["ragged"]):  # a ragged list is packed row by row
        assert isinstance(got, list) and np.allclose(got, want, rtol=1e-7)
    for got, want in ((restored[wire.BANK]["keys"], bank["keys"]), (restored[wire.BANK]["values"], bank["values"]),
                      (restored[wire.PROTOTYPES], meta[wire.PROTOTYPES])):
        assert isinstance(got, list) and isinstance(got[0], list) and isinstance(got[0][0], float)
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-7, atol=1e-30)
    assert restored[MetaKey.NUM_STEPS_CURRENT_ROUND] == 5 and quantize.LAYOUT not in restored
    plain_meta = len(fobs.dumps(DXO(DataKind.WEIGHTS, data={}, meta=meta).to_shareable()))
    packed_meta = len(fobs.dumps(DXO(DataKind.WEIGHTS, data={}, meta=quantize.pack_floats(meta)).to_shareable()))
    assert packed_meta < 0.5 * plain_meta
