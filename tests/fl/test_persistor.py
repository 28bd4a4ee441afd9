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


def _values(bank: KnowledgeBank, n: int):
    """Bank values for ``n`` uploaded prototypes (a bank with values needs one row per prototype)."""
    return torch.zeros(n, bank.value_dim) if bank.value_dim else None


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
    bank.update(torch.eye(bank.dim)[:2], {}, _values(bank, 2))
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
    bank.update(torch.eye(bank.dim)[:3], {}, _values(bank, 3))
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


# ------------------------------------------------------------------ resuming from damaged or foreign files (issue 13, items 8, 10)


def _saved(folder):
    persistor = OmniFMPersistor("omnifm", model=SMALL)
    persistor.save_model(persistor.load_model(_ctx(folder)), _ctx(folder, current=4))


def _resume(tmp_path):
    return OmniFMPersistor("omnifm", model=SMALL, source_dir=str(tmp_path / "job1")).load_model(_ctx(tmp_path / "job2"))


class _Opaque:  # a pickled class reference, which weights_only loading refuses
    pass


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "file", "cause"),
    [
        (lambda f: _truncate(f / MODEL_FILE), MODEL_FILE, "cannot be read"),
        (lambda f: (f / MODEL_FILE).write_bytes(b""), MODEL_FILE, "cannot be read (the file is empty)"),
        (lambda f: (f / MODEL_FILE).write_text("hello"), MODEL_FILE, "cannot be read"),
        (lambda f: torch.save({"model": _Opaque()}, f / MODEL_FILE), MODEL_FILE, "objects other than tensors"),
        (lambda f: torch.save({"round": 3}, f / MODEL_FILE), MODEL_FILE, "has no 'model' dict of tensors"),
        (lambda f: torch.save({"model": {}, "spec": "{"}, f / MODEL_FILE), MODEL_FILE, "has no readable 'spec'"),
        (lambda f: torch.save([1, 2], f / MODEL_FILE), MODEL_FILE, "holds a list"),
        (lambda f: _truncate(f / BANK_FILE), BANK_FILE, "cannot be read"),
        (lambda f: torch.save({"round": 1}, f / BANK_FILE), BANK_FILE, "has no 'bank' state"),
    ],
    ids=["truncated", "empty", "text", "pickled-object", "no-model", "bad-spec", "not-a-dict", "bank-truncated",
         "bank-no-state"],
)
def test_a_damaged_saved_file_is_an_error_naming_the_file_and_the_fix(tmp_path, damage, file, cause):
    """Before: EOFError with no text, OSError [Errno 22], KeyError, PyTorch's weights_only advice."""
    _saved(tmp_path / "job1")
    damage(tmp_path / "job1")
    with pytest.raises(ValueError) as err:
        _resume(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "job1" / file) in message and cause in message, message
    assert "—" in message and ("source_dir" in message or "backup" in message), "the message says what to do"


def test_resuming_refuses_a_bank_of_another_dimension(tmp_path):
    _saved(tmp_path / "job1")
    torch.save({"bank": KnowledgeBank(dim=16).state_dict(), "round": 4}, tmp_path / "job1" / BANK_FILE)
    with pytest.raises(ValueError, match=r"knowledge_bank.pt holds prototypes of dimension 16, but this job's"):
        _resume(tmp_path)


def test_a_missing_bank_file_is_a_warning_naming_the_path(tmp_path, caplog):
    _saved(tmp_path / "job1")
    (tmp_path / "job1" / BANK_FILE).unlink()
    resumed = _resume(tmp_path)
    assert len(KnowledgeBank.from_plain(resumed[ModelLearnableKey.META][wire.BANK])) == 0
    warning = [r for r in caplog.records if r.levelname == "WARNING" and "EMPTY knowledge bank" in r.getMessage()]
    assert warning and str(tmp_path / "job1" / BANK_FILE) in warning[0].getMessage()


def test_temporary_files_of_a_killed_save_are_removed_when_the_model_is_loaded(tmp_path, caplog):
    from omnifm.checkpoint import TEMP_SUFFIX

    _saved(tmp_path / "job1")
    (tmp_path / "job1" / f".{MODEL_FILE}.{2**22 + 4321}.k1ll3d{TEMP_SUFFIX}").write_bytes(b"half a checkpoint")
    (tmp_path / "job1" / "notes.tmp").write_text("not ours")
    _resume(tmp_path)  # the resumed job loads from job1: it cleans job1 and its own folder
    assert sorted(p.name for p in (tmp_path / "job1").iterdir()) == sorted([MODEL_FILE, BANK_FILE, "notes.tmp"])
    assert "removed 1 temporary file(s)" in caplog.text
