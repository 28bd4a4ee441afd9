"""A site's personal-state file: damaged, NaN or orphaned files (issue 13, items 8-10).

``SiteTrainer.load_personal`` raises ``ValueError`` naming the file and the fix; the FLARE
executor turns that into a ``BAD_TASK_DATA`` reply (tests/fl/test_executor_rules.py).
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from omnifm.algorithms import make_run_spec
from omnifm.checkpoint import TEMP_SUFFIX
from omnifm.engine import SiteTrainer, TrainConfig

SMALL = {"channels": [8, 16, 32], "strides": [2, 2]}


def _trainer() -> SiteTrainer:
    rng = np.random.default_rng(0)
    volumes = [{"image": rng.normal(size=(1, 32, 32, 4)).astype(np.float32), "label": np.zeros((1, 32, 32, 4), np.uint8)}]
    spec = make_run_spec("omnifm", model=SMALL, num_prototypes=2)
    return SiteTrainer(spec, TrainConfig(local_epochs=1, batch_size=4, min_prototype_count=2), volumes, volumes,
                       device=torch.device("cpu"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    trainer = _trainer()
    path = tmp_path_factory.mktemp("site") / "omnifm_personal" / "omnifm-0123456789.pt"
    trainer.save_personal(path, 2)
    return trainer, path, path.read_bytes()


def _poisoned(state: dict, which) -> dict:
    return {k: torch.full_like(v, float("nan")) if which(k) and v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p, s: torch.save({"personal": _poisoned(s, lambda k: True), "round": 2}, p), "holds non-finite values"),
        (lambda p, s: torch.save({"personal": _poisoned(s, lambda k: k == sorted(s)[0]), "round": 2}, p),
         r"in 1 tensor\(s\)"),
        (lambda p, s: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "cannot be read"),
        (lambda p, s: p.write_bytes(b""), "cannot be read \\(the file is empty\\)"),
        (lambda p, s: torch.save({"personal": {"x": torch.ones(1)}, "round": 2}, p), "does not match this job's model"),
    ],
    ids=["all-nan", "one-tensor-nan", "truncated", "empty", "other-model"],
)
def test_a_bad_personal_file_is_a_value_error_naming_the_file(saved, damage, match):
    trainer, path, good = saved
    path.write_bytes(good)
    damage(path, trainer.personal_state())
    with pytest.raises(ValueError, match=match) as err:
        trainer.load_personal(path)
    assert str(path) in str(err.value) and "move the file out of the folder" in str(err.value)
    path.write_bytes(good)
    assert trainer.load_personal(path) == 2


def test_optimizer_state_in_the_file_is_checked_too(saved):
    """Every tensor of the file is checked, not only the model's: the file also holds optim/ state."""
    trainer, path, good = saved
    path.write_bytes(good)
    payload = torch.load(path, weights_only=True)
    payload["optim/extra"] = {"exp_avg": torch.tensor([float("inf")])}
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"optim/extra/exp_avg"):
        trainer.load_personal(path)
    path.write_bytes(good)


def test_orphans_of_a_killed_save_are_removed_when_the_site_restarts(saved):
    trainer, path, good = saved
    path.write_bytes(good)
    (path.parent / f".{path.name}.{2**22 + 4321}.k1ll3d{TEMP_SUFFIX}").write_bytes(b"half a checkpoint")
    assert trainer.load_personal(path) == 2
    assert [p.name for p in path.parent.iterdir()] == [path.name]
