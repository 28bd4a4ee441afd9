from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants

from omnifm.fl import wire
from omnifm.fl.persistor import BANK_FILE, MODEL_FILE, OmniFMPersistor, load_checkpoint
from omnifm.knowledge import KnowledgeBank

SMALL = {"channels": [8, 16, 32], "strides": [2, 2]}


def _ctx(app_root, current: int = 0) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(FLContextKey.APP_ROOT, str(app_root), private=True, sticky=False)
    ctx.set_prop(AppConstants.CURRENT_ROUND, current, private=True, sticky=False)
    return ctx


@pytest.mark.parametrize("algorithm, has_bank", [("omnifm", True), ("fedavg", False)])
def test_initial_model_holds_shared_weights_spec_and_bank(tmp_path, algorithm, has_bank):
    learnable = OmniFMPersistor(algorithm, model=SMALL).load_model(_ctx(tmp_path))
    weights, meta = learnable[ModelLearnableKey.WEIGHTS], learnable[ModelLearnableKey.META]
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in weights.values())
    assert meta[wire.SPEC]["algorithm"] == algorithm
    assert (meta[wire.BANK] is not None) == has_bank
    assert ("prompt.suffix" in weights) is False, "personal parameters are never global"


def test_every_round_writes_model_and_bank_loadable_with_weights_only(tmp_path):
    persistor = OmniFMPersistor("omnifm", model=SMALL, bank={"rho": 0.5})
    learnable = persistor.load_model(_ctx(tmp_path))
    bank = KnowledgeBank.from_plain(learnable[ModelLearnableKey.META][wire.BANK])
    bank.update(torch.ones(2, bank.dim), {})
    learnable[ModelLearnableKey.META][wire.BANK] = bank.to_plain()
    persistor.save_model(learnable, _ctx(tmp_path, current=3))

    ckpt = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    assert ckpt["round"] == 3 and "bank" not in ckpt and wire.BANK not in ckpt["spec"]
    saved_bank = KnowledgeBank.from_state_dict(torch.load(tmp_path / BANK_FILE, weights_only=True)["bank"])
    assert len(saved_bank) == 2 and saved_bank.rho == 0.5
    assert saved_bank.prototypes.norm(dim=1).max() <= 0.5
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temporary files"


def test_a_job_can_start_from_a_previous_jobs_model_and_bank(tmp_path):
    first = OmniFMPersistor("omnifm", model=SMALL)
    learnable = first.load_model(_ctx(tmp_path / "job1"))
    weights = learnable[ModelLearnableKey.WEIGHTS]
    name = next(iter(weights))
    weights[name] = weights[name] + 1.5
    bank = KnowledgeBank.from_plain(learnable[ModelLearnableKey.META][wire.BANK])
    bank.update(torch.eye(bank.dim)[:3], {})
    learnable[ModelLearnableKey.META][wire.BANK] = bank.to_plain()
    first.save_model(learnable, _ctx(tmp_path / "job1", current=9))

    second = OmniFMPersistor("omnifm", model=SMALL, source_dir=str(tmp_path / "job1"))
    resumed = second.load_model(_ctx(tmp_path / "job2"))
    np.testing.assert_array_equal(resumed[ModelLearnableKey.WEIGHTS][name], weights[name])
    resumed_bank = KnowledgeBank.from_plain(resumed[ModelLearnableKey.META][wire.BANK])
    assert len(resumed_bank) == 3 and resumed_bank.version == 1


def test_resuming_with_another_architecture_fails_with_a_clear_error(tmp_path):
    first = OmniFMPersistor("omnifm", model=SMALL)
    first.save_model(first.load_model(_ctx(tmp_path)), _ctx(tmp_path))
    other = OmniFMPersistor("omnifm", model={"channels": [8, 16, 64], "strides": [2, 2]}, source_dir=str(tmp_path))
    with pytest.raises(ValueError, match="does not fit this job's spec"):
        other.load_model(_ctx(tmp_path / "job2"))


def test_missing_source_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=MODEL_FILE):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"algorithm": "fedsgd"}, "unknown algorithm 'fedsgd'"),
        ({"top_k": 0}, "top_k must be an int >= 1"),
        ({"align_weight": -1.0}, "align_weight must be >= 0"),
        ({"num_prototypes": 0}, "num_prototypes must be an int >= 1"),
        ({"bank": {"rho": -1.0}}, "rho"),
        ({"bank": {"radius": 1.0}}, "bad bank arguments"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OmniFMPersistor(**kwargs)
