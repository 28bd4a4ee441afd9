"""HE aggregation equals the plaintext rule: real FLARE filters and contexts, the wire in between (fobs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ts = pytest.importorskip("tenseal")

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable  # noqa: E402
from nvflare.apis.event_type import EventType  # noqa: E402
from nvflare.apis.fl_constant import FLContextKey, ReservedKey  # noqa: E402
from nvflare.apis.fl_context import FLContext  # noqa: E402
from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable  # noqa: E402
from nvflare.app_common.app_constant import AppConstants  # noqa: E402
from nvflare.app_common.decomposers import common_decomposers  # noqa: E402
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor  # noqa: E402
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor  # noqa: E402
from nvflare.app_opt.he.model_shareable_generator import HEModelShareableGenerator  # noqa: E402
from nvflare.fuel.sec.security_content_service import SecurityContentService  # noqa: E402
from nvflare.fuel.utils import fobs  # noqa: E402

from omnifm.algorithms import weighted_average  # noqa: E402
from omnifm.fl import he, wire  # noqa: E402
from omnifm.fl.aggregator import OmniFMAggregator  # noqa: E402
from omnifm.fl.he_aggregator import OmniFMHEAggregator  # noqa: E402
from omnifm.fl.he_filters import (  # noqa: E402
    OmniFMHEModelEncryptor,
    RefuseNonFinite,
    RestoreWeightShapes,
    SerializeCiphertexts,
)
from omnifm.fl.he_persistor import ENCRYPTED_MODEL_FILE, OmniFMHEModelLocator, OmniFMHEPersistor  # noqa: E402
from omnifm.knowledge import KnowledgeBank  # noqa: E402

pytestmark = pytest.mark.he

SHAPE_SETS = {
    "conv+bias": {"conv.weight": (16, 1, 3, 3), "conv.bias": (16,)},
    "mixed": {"a": (2, 3), "b": (4,), "c": (8, 8, 3, 3), "d": (1,), "e": (5000,)},
}
SAMPLES = [12, 7, 30]
DIM = 4


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    """Context files written by our tool's function, loaded through FLARE's own content service."""
    folder = tmp_path_factory.mktemp("startup")
    he.write_contexts(folder)
    SecurityContentService.security_content_manager = None  # the service is a process-wide singleton
    SecurityContentService.initialize(content_folder=str(folder))
    yield folder
    SecurityContentService.security_content_manager = None


def _ctx(site: str = "server", **props) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(FLContextKey.SECURE_MODE, False, private=True, sticky=False)
    for key, value in props.items():
        ctx.set_prop(key, value, private=True, sticky=False)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_peer_context(peer)
    return ctx


def _started(component, ctx: FLContext):
    component.handle_event(EventType.START_RUN, ctx)
    return component


def _bank() -> KnowledgeBank:
    bank = KnowledgeBank(dim=DIM, max_size=16)
    bank.update(torch.nn.functional.normalize(torch.randn(3, DIM), dim=1) * 0.5, {})
    return bank


def _site_results(shapes: dict, seed: int) -> list[tuple[str, dict[str, np.ndarray], dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(SAMPLES):
        weights = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}
        protos = torch.nn.functional.normalize(torch.randn(2, DIM), dim=1) * 0.8
        meta = {wire.PROTOTYPES: protos.tolist(), wire.PROTOTYPE_COUNTS: [9, 9], wire.RETRIEVAL_IDS: [0, 1],
                wire.RETRIEVAL_COUNTS: [i + 1, 2], wire.METRICS: {"loss": 1.0 + i}, MetaKey.NUM_STEPS_CURRENT_ROUND: n}
        out.append((f"site-{i + 1}", weights, meta))
    return out


def _shareable(site: str, weights: dict, meta: dict, round_of: int = 0):
    shareable = DXO(DataKind.WEIGHTS, data={k: v.copy() for k, v in weights.items()}, meta=dict(meta)).to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_of)
    return shareable


def _global(shapes: dict, bank: KnowledgeBank) -> FLContext:
    weights = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    meta = {wire.SPEC: {"algorithm": "omnifm"}, wire.BANK: bank.to_plain(), wire.STATE: {},
            he.SHAPES: he.shapes_of(weights)}
    return _ctx(**{AppConstants.GLOBAL_MODEL: make_model_learnable(weights, meta), AppConstants.CURRENT_ROUND: 0})


def _over_the_wire(shareable):
    common_decomposers.register()  # numpy arrays, as a FLARE process registers them
    return fobs.loads(fobs.dumps(shareable))


def _encrypt(site: str, weights: dict, meta: dict, as_bytes: bool = False, encryptor=None):
    """A site's result through its task_result_filters: the (FLARE) encryptor (+ our bytes filter)."""
    encryptor = _started(encryptor or OmniFMHEModelEncryptor(), _ctx(site))
    shareable = encryptor.process(_shareable(site, weights, meta), _ctx(site))
    assert all(isinstance(v, ts.CKKSVector) for v in from_shareable(shareable).data.values())
    assert set(from_shareable(shareable).data) == ({he.PACKED} if isinstance(encryptor, OmniFMHEModelEncryptor) else
                                                   set(weights))
    return SerializeCiphertexts().process(shareable, _ctx(site)) if as_bytes else shareable


@pytest.mark.parametrize("as_bytes", [False, True], ids=["vectors+context", "ciphertext-bytes"])
@pytest.mark.parametrize("shape_set", sorted(SHAPE_SETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_encrypted_aggregate_decrypts_to_the_plaintext_weighted_average(contexts, shape_set, seed, as_bytes):
    shapes = SHAPE_SETS[shape_set]
    results = _site_results(shapes, seed)
    bank = _bank()
    server_ctx = _global(shapes, bank)

    he_agg = _started(OmniFMHEAggregator(), server_ctx)
    for site, weights, meta in results:
        encrypted = _encrypt(site, weights, meta, as_bytes)
        assert he_agg.accept(_over_the_wire(encrypted), server_ctx), f"{site} rejected"
    aggregate = he_agg.aggregate(server_ctx)

    generator = _started(HEModelShareableGenerator(), server_ctx)
    learnable = generator.shareable_to_learnable(aggregate, server_ctx)
    next_task = _over_the_wire(generator.learnable_to_shareable(learnable, server_ctx))
    site_ctx = _ctx("site-1")
    for f in (_started(HEModelDecryptor(), site_ctx), RestoreWeightShapes()):
        next_task = f.process(next_task, site_ctx)
    decrypted = from_shareable(next_task)

    expected = weighted_average([(w, m[MetaKey.NUM_STEPS_CURRENT_ROUND]) for _, w, m in results])
    for name, value in expected.items():
        assert decrypted.data[name].shape == value.shape and decrypted.data[name].dtype == np.float32
        assert np.abs(decrypted.data[name] - value).max() < 1e-3, name

    plain_ctx = _global(shapes, bank)
    plain_agg = OmniFMAggregator()
    for site, weights, meta in results:
        assert plain_agg.accept(_shareable(site, weights, meta), plain_ctx)
    plain_bank = from_shareable(plain_agg.aggregate(plain_ctx)).get_meta_prop(wire.BANK)
    assert decrypted.get_meta_prop(wire.BANK) == plain_bank, "the bank must update exactly as in plaintext"
    assert KnowledgeBank.from_plain(plain_bank).version == bank.version + 1


def test_server_holds_no_plaintext_weights_and_cannot_decrypt(contexts):
    shapes = SHAPE_SETS["conv+bias"]
    server_ctx = _global(shapes, _bank())
    agg = _started(OmniFMHEAggregator(), server_ctx)
    for site, weights, meta in _site_results(shapes, 0)[:2]:
        assert agg.accept(_over_the_wire(_encrypt(site, weights, meta, as_bytes=True)), server_ctx)
    averaged = from_shareable(agg.aggregate(server_ctx)).data
    server_context = ts.context_from((contexts / he.SERVER_CONTEXT).read_bytes())
    assert not server_context.has_secret_key()
    with pytest.raises(ValueError):
        averaged[he.PACKED].decrypt()  # the vector's own (public) context has no secret key either


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda w, m: (w, m), "not CKKS-encrypted"),  # the site forgot its encryption filter
        (lambda w, m: (w, {**m, MetaKey.NUM_STEPS_CURRENT_ROUND: 0}), "n_samples"),
    ],
)
def test_bad_contribution_is_rejected_with_a_reason(contexts, change, reason, caplog):
    shapes = SHAPE_SETS["conv+bias"]
    site, weights, meta = _site_results(shapes, 0)[0]
    weights, meta = change(weights, meta)
    shareable = _shareable(site, weights, meta)
    if reason != "not CKKS-encrypted":
        shareable = _encrypt(site, weights, meta)
    assert not OmniFMHEAggregator().accept(_over_the_wire(shareable), _global(shapes, _bank()))
    assert reason in caplog.text


def test_wrong_size_tensor_in_the_pack_is_rejected(contexts, caplog):
    shapes = SHAPE_SETS["conv+bias"]
    site, weights, meta = _site_results(shapes, 0)[0]
    weights = {**weights, "conv.bias": np.zeros(15, np.float32)}
    encrypted = _encrypt(site, weights, meta, as_bytes=True)
    ctx = _global(shapes, _bank())
    assert not _started(OmniFMHEAggregator(), ctx).accept(_over_the_wire(encrypted), ctx)
    assert "packed layout differs from the global model's: conv.bias has 15 values, expected 16" in caplog.text


@pytest.mark.parametrize(
    "tamper, reason",
    [
        (lambda d: d.set_meta_prop(he.LAYOUT, None), "no packing layout"),
        (lambda d: d.set_meta_prop(he.LAYOUT, [["conv.bias", 16], ["conv.weightX", 144]]), "parameter names differ"),
        (lambda d: d.data.update({"extra": d.data[he.PACKED]}), "expected one packed CKKS vector"),
    ],
)
def test_a_packed_result_with_a_wrong_layout_is_rejected(contexts, caplog, tamper, reason):
    shapes = SHAPE_SETS["conv+bias"]
    dxo = from_shareable(_encrypt(*_site_results(shapes, 0)[0]))
    tamper(dxo)
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    ctx = _global(shapes, _bank())
    assert not _started(OmniFMHEAggregator(), ctx).accept(shareable, ctx)
    assert reason in caplog.text


def test_a_per_tensor_encrypted_result_is_rejected(contexts, caplog):
    """FLARE's stock encryptor (one vector per tensor), even with the marker set, is not the packed format."""
    shapes = SHAPE_SETS["mixed"]
    dxo = from_shareable(_encrypt(*_site_results(shapes, 0)[0], encryptor=HEModelEncryptor(weigh_by_local_iter=False)))
    dxo.set_meta_prop(he.UNWEIGHTED, True)
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    ctx = _global(shapes, _bank())
    assert not _started(OmniFMHEAggregator(), ctx).accept(shareable, ctx)
    assert "encrypts each tensor separately" in caplog.text


def test_packing_uses_as_few_ciphertexts_as_the_slots_allow(contexts):
    shapes = SHAPE_SETS["mixed"]  # 6 + 4 + 576 + 1 + 5000 = 5587 values: 2 ciphertexts of 4096 slots, not 6
    site, weights, meta = _site_results(shapes, 0)[0]
    packed = from_shareable(_encrypt(site, weights, meta)).data
    assert len(packed[he.PACKED].ciphertext()) == 2
    per_tensor = from_shareable(_encrypt(site, weights, meta, encryptor=HEModelEncryptor(weigh_by_local_iter=False)))
    assert sum(len(v.ciphertext()) for v in per_tensor.data.values()) == 6
    packed_bytes = len(fobs.dumps(_encrypt(site, weights, meta, as_bytes=True)))
    per_tensor_bytes = len(fobs.dumps(SerializeCiphertexts().process(per_tensor.to_shareable(), _ctx(site))))
    assert packed_bytes < per_tensor_bytes / 2.5


def test_results_of_the_pre_weighting_stock_encryptor_are_rejected(contexts, caplog):
    shapes = SHAPE_SETS["conv+bias"]
    encrypted = _encrypt(*_site_results(shapes, 0)[0], encryptor=HEModelEncryptor(weigh_by_local_iter=True))
    ctx = _global(shapes, _bank())
    assert not _started(OmniFMHEAggregator(), ctx).accept(_over_the_wire(encrypted), ctx)
    assert "OmniFMHEModelEncryptor" in caplog.text


def test_mean_stays_exact_with_large_and_unequal_sample_counts(contexts):
    shapes = {"w": (64,)}
    results = [(s, {"w": np.full(64, 5.0 * (i + 1), np.float32)}, {**m, MetaKey.NUM_STEPS_CURRENT_ROUND: n})
               for i, ((s, _, m), n) in enumerate(zip(_site_results(shapes, 0), [2_000_000, 1_000_000, 3_000_000]))]
    server_ctx = _global(shapes, _bank())
    agg = _started(OmniFMHEAggregator(), server_ctx)
    for site, weights, meta in results:
        assert agg.accept(_over_the_wire(_encrypt(site, weights, meta, as_bytes=True)), server_ctx)
    averaged = from_shareable(agg.aggregate(server_ctx)).data[he.PACKED]
    client = ts.context_from((contexts / he.CLIENT_CONTEXT).read_bytes())
    expected = weighted_average([(w, m[MetaKey.NUM_STEPS_CURRENT_ROUND]) for _, w, m in results])["w"]
    assert np.abs(np.array(ts.ckks_vector_from(client, averaged.serialize()).decrypt()) - expected).max() < 1e-3


def test_ciphertext_bytes_without_a_server_context_are_rejected(contexts, caplog):
    shapes = SHAPE_SETS["conv+bias"]
    encrypted = _encrypt(*_site_results(shapes, 0)[0], as_bytes=True)
    assert not OmniFMHEAggregator().accept(_over_the_wire(encrypted), _global(shapes, _bank()))
    assert "no TenSEAL context is loaded" in caplog.text


def test_bytes_are_far_smaller_on_the_wire_than_vectors_with_their_context(contexts):
    site, weights, meta = _site_results(SHAPE_SETS["mixed"], 0)[0]
    with_context = len(fobs.dumps(_encrypt(site, weights, meta)))
    bare = len(fobs.dumps(_encrypt(site, weights, meta, as_bytes=True)))
    assert bare < with_context / 2


@pytest.mark.parametrize("algorithm", ["omnifm", "fedavg", "fedprox", "fedper", "fedrep", "fedper-fusion"])
def test_weighted_mean_algorithms_are_accepted(algorithm):
    assert he.check_he_algorithm(algorithm) == algorithm
    assert OmniFMHEPersistor(algorithm=algorithm).spec["algorithm"] == algorithm


@pytest.mark.parametrize("algorithm, reason", [("scaffold", "control variates"), ("feddyn", "FedDyn's next model"),
                                               ("local", "nothing is shared"),
                                               ("central", "not a federation"), ("nope", "unknown algorithm")])
def test_other_algorithms_are_refused_when_the_job_is_configured(algorithm, reason):
    with pytest.raises(ValueError, match=reason):
        OmniFMHEPersistor(algorithm=algorithm)


def test_a_site_refuses_to_encrypt_nan_weights():
    site, weights, meta = _site_results(SHAPE_SETS["conv+bias"], 0)[0]
    weights["conv.bias"][3] = np.nan
    with pytest.raises(ValueError, match=r"\['conv.bias'\] contain NaN or Inf"):
        RefuseNonFinite().process(_shareable(site, weights, meta), _ctx(site))


def test_restore_shapes_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError, match="5 decrypted values do not fit the 6 values"):
        he.unflatten({he.PACKED: [0.0] * 5}, {"a": [2, 3]})
    with pytest.raises(ValueError, match="expected the packed vector"):
        he.unflatten({"a": [0.0] * 6}, {"a": [2, 3]})


def test_the_plaintext_initial_model_passes_the_site_filters_unchanged(contexts):
    """Round 0: the persistor's model is not encrypted; the decryptor and the unpacker leave it as it is."""
    persistor = OmniFMHEPersistor(**_spec_args())
    initial = persistor.load_model(_ctx(**{FLContextKey.APP_ROOT: "/tmp", AppConstants.CURRENT_ROUND: 0}))
    task = _over_the_wire(DXO(DataKind.WEIGHTS, initial[ModelLearnableKey.WEIGHTS],
                              initial[ModelLearnableKey.META]).to_shareable())
    site_ctx = _ctx("site-1")
    for f in (_started(HEModelDecryptor(), site_ctx), RestoreWeightShapes()):
        task = f.process(task, site_ctx)
    received = from_shareable(task).data
    assert set(received) == set(initial[ModelLearnableKey.WEIGHTS])
    for name, value in initial[ModelLearnableKey.WEIGHTS].items():
        assert np.array_equal(received[name], value)


def test_pack_and_unflatten_restore_every_shape_in_any_name_order():
    rng = np.random.default_rng(3)
    weights = {"z": rng.normal(size=(2, 3)), "a": rng.normal(size=4), "m": rng.normal(size=(1, 2, 2))}
    flat, layout = he.pack(weights)
    assert layout == [["a", 4], ["m", 4], ["z", 6]] and flat.dtype == np.float32
    restored = he.unflatten({he.PACKED: flat.tolist()}, he.shapes_of(dict(reversed(list(weights.items())))))
    for name, value in weights.items():
        assert restored[name].shape == value.shape and np.allclose(restored[name], value, atol=1e-6)


def test_encrypted_mean_refuses_empty_input():
    with pytest.raises(ValueError, match="no contributions"):
        he.encrypted_mean([])


def _spec_args() -> dict:
    return {"algorithm": "fedavg", "model": {"spatial_dims": 2, "in_channels": 1, "channels": [4, 8], "strides": [2],
                                             "num_res_units": 0}}


def test_encrypted_model_is_saved_weights_only_and_resumed_and_located(contexts, tmp_path):
    persistor = OmniFMHEPersistor(**_spec_args())
    ctx = _ctx(**{FLContextKey.APP_ROOT: str(tmp_path), AppConstants.CURRENT_ROUND: 3})
    initial = persistor.load_model(ctx)
    shapes = initial[ModelLearnableKey.META][he.SHAPES]
    assert shapes == he.shapes_of(initial[ModelLearnableKey.WEIGHTS])
    client = ts.context_from((contexts / he.CLIENT_CONTEXT).read_bytes())
    plain = {k: np.asarray(v, np.float32) for k, v in initial[ModelLearnableKey.WEIGHTS].items()}
    encrypted = {he.PACKED: ts.ckks_vector(client, he.pack(plain)[0])}
    meta = {**initial[ModelLearnableKey.META], MetaKey.PROCESSED_KEYS: {he.PACKED: True}}
    persistor.save_model(make_model_learnable(encrypted, meta), ctx)

    assert not (tmp_path / "FL_global_model.pt").exists(), "no plaintext model on the server"
    saved = torch.load(tmp_path / ENCRYPTED_MODEL_FILE, weights_only=True)
    assert saved["round"] == 3 and saved["shapes"] == shapes

    resumed = OmniFMHEPersistor(**_spec_args(), source_dir=str(tmp_path)).load_model(ctx)
    located = OmniFMHEModelLocator().locate_model("FL_global_model", ctx)
    for dxo in (DXO(DataKind.WEIGHTS, resumed[ModelLearnableKey.WEIGHTS], resumed[ModelLearnableKey.META]), located):
        assert all(isinstance(v, bytes) for v in dxo.data.values()), "handed out still encrypted"
        task = dxo.to_shareable()
        site_ctx = _ctx("site-1")
        for f in (_started(HEModelDecryptor(), site_ctx), RestoreWeightShapes()):
            task = f.process(task, site_ctx)
        for name, value in from_shareable(task).data.items():
            assert value.shape == plain[name].shape and np.abs(value - plain[name]).max() < 1e-4


def test_resume_refuses_a_model_of_another_spec(contexts, tmp_path):
    persistor = OmniFMHEPersistor(**_spec_args())
    ctx = _ctx(**{FLContextKey.APP_ROOT: str(tmp_path), AppConstants.CURRENT_ROUND: 1})
    initial = persistor.load_model(ctx)
    client = ts.context_from((contexts / he.CLIENT_CONTEXT).read_bytes())
    encrypted = {he.PACKED: ts.ckks_vector(client, he.pack(initial[ModelLearnableKey.WEIGHTS])[0])}
    meta = {**initial[ModelLearnableKey.META], MetaKey.PROCESSED_KEYS: {he.PACKED: True}}
    persistor.save_model(make_model_learnable(encrypted, meta), ctx)
    other = {**_spec_args(), "model": {**_spec_args()["model"], "channels": [4, 16]}}
    with pytest.raises(ValueError, match="does not fit this job's spec"):
        OmniFMHEPersistor(**other, source_dir=str(tmp_path)).load_model(ctx)


def test_a_checkpoint_encrypted_per_tensor_is_refused_on_resume(contexts, tmp_path):
    from omnifm.fl.he_persistor import save_encrypted

    ctx = _ctx(**{FLContextKey.APP_ROOT: str(tmp_path), AppConstants.CURRENT_ROUND: 1})
    initial = OmniFMHEPersistor(**_spec_args()).load_model(ctx)
    client = ts.context_from((contexts / he.CLIENT_CONTEXT).read_bytes())
    per_tensor = {k: ts.ckks_vector(client, np.ravel(v)) for k, v in initial[ModelLearnableKey.WEIGHTS].items()}
    save_encrypted(tmp_path, per_tensor, initial[ModelLearnableKey.META][he.SHAPES], {}, 1)
    with pytest.raises(ValueError, match="holds one ciphertext per tensor"):
        OmniFMHEPersistor(**_spec_args(), source_dir=str(tmp_path)).load_model(ctx)


def test_the_site_encryptor_refuses_a_job_that_also_quantizes(contexts, monkeypatch):
    from types import SimpleNamespace

    from omnifm.fl import combinations
    from omnifm.fl.quantize import QuantizeWeights

    encryptor = OmniFMHEModelEncryptor()
    runner = SimpleNamespace(task_data_filters={}, task_result_filters={"train": [QuantizeWeights(), encryptor]})
    reasons = []
    monkeypatch.setattr(encryptor, "system_panic", lambda reason, fl_ctx: reasons.append(reason))
    encryptor.handle_event(EventType.START_RUN, _ctx("site-1", **{FLContextKey.RUNNER: runner}))
    assert reasons == [f"OmniFMHEModelEncryptor: {combinations.HE_INT8}"]
    assert encryptor.tenseal_context is not None, "FLARE's own START_RUN handling still runs"
