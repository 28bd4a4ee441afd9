"""Server aggregator: sample-weighted FedAvg of the shared weights + the spectral knowledge bank."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants

from omnifm.algorithms import update_bank, weighted_average
from omnifm.fl import wire
from omnifm.knowledge import KnowledgeBank


@dataclass
class _Contribution:
    weights: dict[str, np.ndarray]
    n_samples: int
    prototypes: torch.Tensor
    retrievals: dict[int, int]
    metrics: dict[str, float]


class OmniFMAggregator(Aggregator):
    """Accepts site results, averages shared weights by sample count and updates the bank.

    A contribution is rejected, with the reason logged, when it is an error result, from another
    round, a second result from the same site, not ``WEIGHTS``, has names/shapes unlike the
    global model, contains NaN/Inf, or has no positive sample count; the round continues with
    the others. :meth:`aggregate` fails the job (``system_panic``) when nothing was accepted,
    instead of silently keeping the old model.
    """

    def __init__(self) -> None:
        super().__init__()
        self._accepted: dict[str, _Contribution] = {}

    def reset(self, fl_ctx: FLContext) -> None:
        self._accepted = {}

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        site = shareable.get_peer_prop(ReservedKey.IDENTITY_NAME, "?")
        contribution, reason = self._parse(site, shareable, fl_ctx)
        if contribution is None:
            self.log_warning(fl_ctx, f"rejected contribution from {site}: {reason}")
            return False
        self._accepted[site] = contribution
        return True

    def _parse(self, site: str, shareable: Shareable, fl_ctx: FLContext) -> tuple[_Contribution | None, str]:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return None, f"site returned {shareable.get_return_code()}"
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        round_of = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        if round_of != current:
            return None, f"result is for round {round_of}, current round is {current}"
        if site in self._accepted:
            return None, "a result from this site was already accepted this round"
        try:
            dxo = from_shareable(shareable)
        except ValueError as err:
            return None, f"not a DXO ({err})"
        if dxo.data_kind != DataKind.WEIGHTS:
            return None, f"data kind {dxo.data_kind}, expected {DataKind.WEIGHTS}"
        global_model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        expected = {k: np.shape(v) for k, v in global_model[ModelLearnableKey.WEIGHTS].items()}
        reason = wire.check_weights(dxo.data, expected)
        if reason:
            return None, reason
        n_samples = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
        if not isinstance(n_samples, int) or n_samples <= 0:
            return None, f"n_samples must be an int >= 1, got {n_samples!r}"
        return self._with_bank_data(dxo, n_samples, global_model[ModelLearnableKey.META])

    @staticmethod
    def _with_bank_data(dxo: DXO, n_samples: int, global_meta: dict) -> tuple[_Contribution | None, str]:
        bank_state = global_meta.get(wire.BANK)
        dim = bank_state["dim"] if bank_state else 0
        prototypes, reason = wire.read_prototypes(dxo.meta, dim) if bank_state else (torch.zeros(0, 0), None)
        if reason:
            return None, reason
        metrics = dxo.get_meta_prop(wire.METRICS) or {}
        return _Contribution(dxo.data, n_samples, prototypes, wire.read_retrievals(dxo.meta), metrics), ""

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if not self._accepted:
            msg = (
                f"round {current}: no site contribution was accepted, so there is nothing to aggregate "
                "(see the 'rejected contribution' warnings above for each site's reason)"
            )
            self.system_panic(msg, fl_ctx)
            raise RuntimeError(msg)
        contributions = list(self._accepted.values())
        averaged = weighted_average([(c.weights, c.n_samples) for c in contributions])
        meta = dict(fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)[ModelLearnableKey.META])
        if meta.get(wire.BANK):
            bank = KnowledgeBank.from_plain(meta[wire.BANK])
            summary = update_bank(bank, [c.prototypes for c in contributions], [c.retrievals for c in contributions])
            meta[wire.BANK] = bank.to_plain()
            self.log_info(fl_ctx, f"round {current}: knowledge bank {summary}")
        self._log_sites(fl_ctx, current)
        return DXO(data_kind=DataKind.WEIGHTS, data=averaged, meta=meta).to_shareable()

    def _log_sites(self, fl_ctx: FLContext, current: int) -> None:
        for site in sorted(self._accepted):
            c = self._accepted[site]
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(c.metrics.items()))
            self.log_info(fl_ctx, f"round {current} {site}: n={c.n_samples} {shown}")
