"""Server aggregator: checks site results and hands them to the core round rule (:func:`omnifm.algorithms.server_round`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.widgets.info_collector import InfoCollector

from omnifm.algorithms import Upload, server_round
from omnifm.fl import wire
from omnifm.fl.metrics_record import STATS_GROUP, MetricsRecorder
from omnifm.knowledge import KnowledgeBank


@dataclass
class _Contribution:
    upload: Upload
    metrics: dict[str, float] = field(default_factory=dict)


class OmniFMAggregator(Aggregator):
    """Accepts site results and combines them with the algorithm's server rule (the same code the
    in-process benchmark runs): weighted mean of the shared weights, bank update, algorithm state.

    This is the gate for untrusted input: a contribution is rejected, with a warning naming the
    site and the reason, when it is an error result, from another round, a second result from the
    same site, not ``WEIGHTS``, has names/shapes unlike the global model, weights that are not
    finite floating-point arrays, ``n_samples`` that is not an int in ``[1, MAX_COUNT]``,
    prototypes that are not ``(P, d)`` finite numbers with ``P <= num_prototypes`` of the run spec,
    retrieval ids/counts or prototype counts that are not lists of ints in ``[0, MAX_COUNT]``,
    metrics that are not numbers, or malformed extras; anything else that cannot be read is also a
    rejection, never an exception. The round continues with the others.

    :meth:`aggregate` fails the job (``system_panic``) when nothing was accepted, instead of
    silently keeping the old model, and says per site what happened: rejected (with the reason),
    an error reply (with its return code), or no result at all.

    After each aggregated round it logs one ``round R site: n=N metric=value ...`` line per accepted
    site and appends the same to the metrics record ``app_server/omnifm_metrics.jsonl``, whose latest
    lines it also publishes in ``show_stats`` (:mod:`omnifm.fl.metrics_record`; what
    ``omnifm-admin monitor`` shows).

    Args:
        train_task_name: the workflow's training task (error replies to it are recorded).
    """

    def __init__(self, train_task_name: str = AppConstants.TASK_TRAIN) -> None:
        super().__init__()
        self.train_task_name = train_task_name
        self._accepted: dict[str, _Contribution] = {}
        self._outcomes: dict[str, tuple[int | None, str]] = {}  # site -> (round, what happened)
        self._record = MetricsRecorder()

    def reset(self, fl_ctx: FLContext) -> None:
        self._accepted = {}
        self._outcomes = {}

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Record error replies (the workflow does not pass them to :meth:`accept`); publish the metrics record."""
        if event_type == InfoCollector.EVENT_TYPE_GET_STATS:
            collector = fl_ctx.get_prop(InfoCollector.CTX_KEY_STATS_COLLECTOR, None)
            if collector is not None:
                collector.add_info(group_name=STATS_GROUP, info=self._record.stats_info())
            return
        if event_type != EventType.BEFORE_PROCESS_SUBMISSION:
            return
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        if fl_ctx.get_prop(FLContextKey.TASK_NAME) != self.train_task_name or not isinstance(result, Shareable):
            return
        code = result.get_return_code(ReturnCode.OK)
        if code != ReturnCode.OK:
            peer = fl_ctx.get_peer_context()
            site = peer.get_identity_name() if peer is not None else result.get_peer_prop(ReservedKey.IDENTITY_NAME, "?")
            round_of = result.get_cookie(AppConstants.CONTRIBUTION_ROUND)
            self._outcomes[site] = (round_of, f"replied with error {code} (see that site's log)")

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        site = shareable.get_peer_prop(ReservedKey.IDENTITY_NAME, "?")
        try:
            contribution, reason = self._parse(site, shareable, fl_ctx)
        except Exception as err:  # noqa: BLE001 - an upload is untrusted input: reject it, keep the round
            contribution, reason = None, f"the contribution cannot be read ({type(err).__name__}: {str(err)[:200]})"
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if contribution is None:
            self.log_warning(fl_ctx, f"rejected contribution from {site}: {reason}")
            if site not in self._accepted:
                self._outcomes[site] = (current, f"rejected: {reason}")
            return False
        contribution.upload.site = site
        self._accepted[site] = contribution
        self._outcomes[site] = (current, "accepted")
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
        n_samples, reason = wire.read_n_samples(dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND))
        if reason:
            return None, reason
        return self._with_bank_data(dxo, n_samples, global_model[ModelLearnableKey.META])

    def _read_weights(self, dxo: DXO, global_model: dict) -> str | None:
        """Check (and, in subclasses, decode) ``dxo.data`` in place; returns why it is unusable, or None."""
        expected = {k: np.shape(v) for k, v in global_model[ModelLearnableKey.WEIGHTS].items()}
        return wire.check_weights(dxo.data, expected)

    @staticmethod
    def _with_bank_data(dxo: DXO, n_samples: int, global_meta: dict) -> tuple[_Contribution | None, str]:
        if not isinstance(dxo.meta, dict):
            return None, f"meta must be a dict, got {type(dxo.meta).__name__}"
        bank_state = global_meta.get(wire.BANK)
        (prototypes, values, counts), reason = (torch.zeros(0, 0), None, None), None
        if bank_state:
            spec = global_meta.get(wire.SPEC) or {}
            limit = spec.get("num_prototypes", wire.MAX_ROWS) if isinstance(spec, dict) else wire.MAX_ROWS
            (prototypes, values, counts), reason = wire.read_bank_upload(dxo.meta, bank_state, min(int(limit), wire.MAX_ROWS))
        if reason:
            return None, reason
        retrievals, reason = wire.read_retrievals(dxo.meta)
        if reason:
            return None, reason
        extras, reason = wire.read_extras(dxo.meta)
        if reason:
            return None, reason
        metrics, reason = wire.read_metrics(dxo.meta)
        if reason:
            return None, reason
        upload = Upload(dxo.data, n_samples, prototypes, retrievals, extras, values=values, counts=counts)
        return _Contribution(upload, metrics), ""

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if not self._accepted:
            msg = (
                f"round {current}: no site contribution was accepted, so there is nothing to aggregate. "
                + self._what_happened(fl_ctx, current)
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

    def _what_happened(self, fl_ctx: FLContext, current: int) -> str:
        """``"site-1 rejected: ...; site-2 replied with error ...; site-3 sent no result ..."``."""
        engine = fl_ctx.get_engine()
        clients = engine.get_clients() if engine is not None and hasattr(engine, "get_clients") else []
        sites = sorted({getattr(c, "name", str(c)) for c in clients or []} | set(self._outcomes))
        parts = []
        for site in sites:
            round_of, what = self._outcomes.get(site, (current, ""))
            if not what or round_of != current:
                what = "sent no result this round (no reply before the task ended: site down, disconnected or slower than train_timeout)"
            parts.append(f"{site} {what}")
        return "Per site: " + ("; ".join(parts) if parts else "no site sent anything") + "."

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
        sites = {site: (c.upload.n_samples, c.metrics) for site, c in self._accepted.items()}
        problem = self._record.record(fl_ctx.get_prop(FLContextKey.APP_ROOT), current, sites)
        if problem:
            self.log_warning(fl_ctx, f"round {current}: {problem}")
