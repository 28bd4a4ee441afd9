"""Server aggregator: checks site results and hands them to the core round rule (:func:`omnifm.algorithms.server_round`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants

from omnifm.algorithms import Upload, server_round
from omnifm.fl import wire
from omnifm.knowledge import KnowledgeBank


@dataclass
class _Contribution:
    upload: Upload
    metrics: dict[str, float] = field(default_factory=dict)


class OmniFMAggregator(Aggregator):
    """Accepts site results and combines them with the algorithm's server rule (the same code the
    in-process benchmark runs): weighted mean of the shared weights, bank update, algorithm state.

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
        if contribution is not None:
            contribution.upload.site = site
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
        reason = self._read_weights(dxo, global_model)
        if reason:
            return None, reason
        n_samples = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
        if not isinstance(n_samples, int) or n_samples <= 0:
            return None, f"n_samples must be an int >= 1, got {n_samples!r}"
        return self._with_bank_data(dxo, n_samples, global_model[ModelLearnableKey.META])

    def _read_weights(self, dxo: DXO, global_model: dict) -> str | None:
        """Check (and, in subclasses, decode) ``dxo.data`` in place; returns why it is unusable, or None."""
        expected = {k: np.shape(v) for k, v in global_model[ModelLearnableKey.WEIGHTS].items()}
        return wire.check_weights(dxo.data, expected)

    @staticmethod
    def _with_bank_data(dxo: DXO, n_samples: int, global_meta: dict) -> tuple[_Contribution | None, str]:
        bank_state = global_meta.get(wire.BANK)
        dim = bank_state["dim"] if bank_state else 0
        prototypes, reason = wire.read_prototypes(dxo.meta, dim) if bank_state else (torch.zeros(0, 0), None)
        if reason:
            return None, reason
        extras, reason = wire.read_extras(dxo.meta)
        if reason:
            return None, reason
        metrics = dxo.get_meta_prop(wire.METRICS) or {}
        upload = Upload(dxo.data, n_samples, prototypes, wire.read_retrievals(dxo.meta), extras)
        return _Contribution(upload, metrics), ""

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if not self._accepted:
            msg = (
                f"round {current}: no site contribution was accepted, so there is nothing to aggregate "
                "(see the 'rejected contribution' warnings above for each site's reason)"
            )
            self.system_panic(msg, fl_ctx)
            raise RuntimeError(msg)
        global_model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        meta = dict(global_model[ModelLearnableKey.META])
        uploads = [self._accepted[site].upload for site in sorted(self._accepted)]
        try:
            spec = meta.get(wire.SPEC)
            if not isinstance(spec, dict):
                raise ValueError(f"the global model's meta has no {wire.SPEC}: use an OmniFM persistor")
            weights, meta = self._combine(spec, global_model[ModelLearnableKey.WEIGHTS], meta, uploads, fl_ctx)
        except ValueError as err:
            msg = f"round {current}: the accepted contributions cannot be combined: {err}"
            self.system_panic(msg, fl_ctx)
            raise RuntimeError(msg) from err
        if meta.get(wire.BANK):
            bank = KnowledgeBank.from_plain(meta[wire.BANK])
            self.log_info(fl_ctx, f"round {current}: knowledge bank version {bank.version}, {len(bank)} prototypes")
        if meta.get(wire.STATE):
            sizes = {k: len(v) if isinstance(v, list) else v for k, v in meta[wire.STATE].items()}
            self.log_info(fl_ctx, f"round {current}: algorithm state for the next round {sizes}")
        self._log_sites(fl_ctx, current)
        return DXO(data_kind=DataKind.WEIGHTS, data=weights, meta=meta).to_shareable()

    def _combine(
        self, spec: dict, global_weights: dict, meta: dict, uploads: list[Upload], fl_ctx: FLContext
    ) -> tuple[dict, dict]:
        """The next global weights and meta (subclasses change how weights are combined)."""
        return server_round(spec, global_weights, meta, uploads)

    def _log_sites(self, fl_ctx: FLContext, current: int) -> None:
        for site in sorted(self._accepted):
            c = self._accepted[site]
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(c.metrics.items()))
            self.log_info(fl_ctx, f"round {current} {site}: n={c.upload.n_samples} {shown}")
