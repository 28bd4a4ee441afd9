"""Client participation in the FLARE job: a ScatterAndGather that trains a sampled share of sites per round.

Paper Table 1 compares 20 %, 50 % and 100 % of sites per round. This controller is FLARE's
``ScatterAndGather`` with one change: each round's ``train`` task goes only to the sites chosen by
:func:`omnifm.algorithms.participation.participants` (seeded by ``sampling_seed`` and the round,
the same rule the in-process benchmark uses), and the round needs ``min(min_clients, sampled)``
replies. Sites not sampled keep their personal state and train again when drawn; the final
evaluation (``GlobalModelEval``) still goes to every site. With ``participation`` 1.0 it is exactly
``ScatterAndGather``.

Job config (``config_fed_server.json``)::

    {"id": "scatter_and_gather", "path": "omnifm.fl.sampling.SampledScatterAndGather",
     "args": {..., "participation": 0.5, "sampling_seed": 0}}
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.controller_spec import Task
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from omnifm.algorithms.participation import participants
from omnifm.validation import check_int, check_range


class SampledScatterAndGather(ScatterAndGather):
    """``ScatterAndGather`` whose train task reaches a seeded ``participation`` share of the sites.

    Args:
        participation: share of the connected sites trained per round, in (0, 1].
        sampling_seed: seed of the per-round draw (with the round number).
        **kwargs: ``ScatterAndGather``'s arguments.
    """

    def __init__(self, participation: float = 1.0, sampling_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._participation = check_range("participation", participation, 0, 1, low_open=True)
        self._sampling_seed = check_int("sampling_seed", sampling_seed, 0)

    def sampled_sites(self, sites: list[str], round_num: int) -> list[str]:
        """The sites the train task of ``round_num`` goes to."""
        return participants(sites, self._participation, round_num, self._sampling_seed)

    def broadcast_and_wait(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets: Any = None,
        min_responses: int = 1,
        wait_time_after_min_received: int = 0,
        abort_signal: Any = None,
    ) -> None:
        if task.name == self.train_task_name and targets is None and self._participation < 1.0:
            sites = [client.name for client in self._engine.get_clients()]
            targets = self.sampled_sites(sites, int(self._current_round))
            min_responses = min(min_responses, len(targets))
            self._current_num_targets = len(targets)  # ScatterAndGather's error tolerance counts these
            self.log_info(fl_ctx, f"Round {self._current_round}: participation {self._participation:.0%}: "
                                  f"training {', '.join(targets)} ({len(targets)} of {len(sites)} sites)")
        return super().broadcast_and_wait(task, fl_ctx, targets, min_responses, wait_time_after_min_received,
                                          abort_signal)
