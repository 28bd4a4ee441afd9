"""Executor rules that need no running FLARE engine."""

from __future__ import annotations

import pytest

from omnifm.algorithms import ALGORITHMS, make_run_spec
from omnifm.fl.executor import _check_federated


def test_central_is_refused_with_a_pointer_to_the_benchmark():
    with pytest.raises(ValueError, match=r"'central' is not a federated algorithm .*omnifm-bench"):
        _check_federated(make_run_spec("central"))


@pytest.mark.parametrize("algorithm", sorted(a for a in ALGORITHMS if a != "central"))
def test_every_other_algorithm_runs_through_flare(algorithm):
    _check_federated(make_run_spec(algorithm))


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []


def _executor_with_log():
    from omnifm.fl.executor import OmniFMExecutor

    executor, log = OmniFMExecutor(), _Log()
    executor.log_info = lambda ctx, msg: log.lines.append(("info", msg))
    executor.log_warning = lambda ctx, msg: log.lines.append(("warning", msg))
    return executor, log


def _save(path, round_num: int) -> None:
    import torch

    from omnifm.checkpoint import atomic_torch_save

    atomic_torch_save({"personal": {"w": torch.zeros(1)}, "round": round_num}, path)


def test_a_personal_file_ahead_of_the_server_model_falls_back_to_the_previous_copy(tmp_path):
    """Server saved after round 1 and crashed; the site had saved after round 2: use round 1's copy."""
    from omnifm.engine.site import previous_personal_path

    path = tmp_path / "omnifm-abc.pt"
    _save(previous_personal_path(path), 1)
    _save(path, 2)
    executor, log = _executor_with_log()
    assert executor._restore_path(path, 2, None) == previous_personal_path(path)
    assert log.lines[0][0] == "warning" and "ahead of the global model (saved after round 1)" in log.lines[0][1]
    # the normal case: saved after round 1, the server's model for round 2 was saved after round 1
    executor, log = _executor_with_log()
    _save(path, 1)
    assert executor._restore_path(path, 2, None) == path and not log.lines
    # a site that missed rounds: behind, used, said
    assert executor._restore_path(path, 5, None) == path and "3 round(s) behind" in log.lines[0][1]
    assert executor._restore_path(tmp_path / "missing.pt", 2, None) is None


def test_saving_personal_state_keeps_one_previous_generation(tmp_path):
    import numpy as np
    import torch

    from omnifm.engine import SiteTrainer, TrainConfig
    from omnifm.engine.site import previous_personal_path, saved_round

    label = np.zeros((1, 16, 16, 2), np.uint8)
    label[0, 4:10, 4:10] = 1
    case = {"image": label.astype(np.float32), "label": label}
    trainer = SiteTrainer(make_run_spec("fedper", model={"channels": [8, 16], "strides": [2]}),
                          TrainConfig(local_epochs=1, batch_size=2), [case], [case], device=torch.device("cpu"))
    path = tmp_path / "p.pt"
    trainer.save_personal(path, 0)
    trainer.save_personal(path, 1)
    assert saved_round(path) == 1 and saved_round(previous_personal_path(path)) == 0
    assert saved_round(tmp_path / "none.pt") is None
