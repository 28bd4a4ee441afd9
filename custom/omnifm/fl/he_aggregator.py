"""Server aggregator for the HE job: sample-weighted mean of CKKS-encrypted weights + the plaintext bank rule."""

from __future__ import annotations

import time
from dataclasses import dataclass

import tenseal as ts
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.he import decomposers
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS
from nvflare.app_opt.he.homomorphic_encrypt import load_tenseal_context_from_workspace

from omnifm.algorithms import Upload, server_round
from omnifm.fl import he, wire
from omnifm.knowledge import KnowledgeBank


@dataclass
class _Contribution:
    weights: dict[str, ts.CKKSVector]
    n_samples: int
    prototypes: torch.Tensor
    retrievals: dict[int, int]
    metrics: dict[str, float]


class OmniFMHEAggregator(Aggregator):
    """Averages encrypted shared weights by sample count; updates the knowledge bank from plaintext meta.

    Sites encrypt their weights as they are (:class:`~omnifm.fl.he_filters.OmniFMHEModelEncryptor`,
    FLARE's ``HEModelEncryptor`` without pre-weighting); this aggregator multiplies each site's
    ciphertexts by ``n_i / total samples`` (``NUM_STEPS_CURRENT_ROUND``, plaintext) and adds them
    (:func:`omnifm.fl.he.encrypted_mean`).
    A contribution is rejected, with the reason logged, when it is an error result, from another
    round, a second result from the same site, not ``WEIGHTS``, not CKKS-encrypted in every tensor
    (a plaintext contribution means a site's encryption filter is missing), has names/sizes unlike
    the global model, or has no positive sample count. NaN/Inf cannot be checked under encryption.
    :meth:`aggregate` fails the job (``system_panic``) when nothing was accepted.

    Args:
        tenseal_context_file: the server's TenSEAL context (no secret key) in its ``startup/`` folder,
            used to read ciphertexts that sites send as bytes (:class:`~omnifm.fl.he_filters.SerializeCiphertexts`).
    """

    def __init__(self, tenseal_context_file: str = he.SERVER_CONTEXT) -> None:
        super().__init__()
        self.tenseal_context_file = tenseal_context_file
        self._context: ts.Context | None = None
        self._accepted: dict[str, _Contribution] = {}
        decomposers.register()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            try:
                self._context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
            except ValueError as err:
                self.system_panic(f"{err}. The HE job needs {self.tenseal_context_file} in the server's startup/ "
                                  "folder: provision with provisioning/project_he.yml, or for the simulator/POC run "
                                  "`omnifm-he-context <workspace>/startup` first (docs/HE.md)", fl_ctx)
        elif event_type == EventType.END_RUN:
            self._context = None

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
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) != HE_ALGORITHM_CKKS:
            return None, ("weights are not CKKS-encrypted: add omnifm.fl.he_filters.OmniFMHEModelEncryptor to the site's "
                          "task_result_filters")
        global_meta = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)[ModelLearnableKey.META]
        if dxo.get_meta_prop(he.UNWEIGHTED) is not True:
            return None, ("weights were not encrypted by omnifm.fl.he_filters.OmniFMHEModelEncryptor (FLARE's "
                          "pre-weighting HEModelEncryptor would make the mean wrong); fix the site's task_result_filters")
        if not global_meta.get(he.SHAPES):
            return None, f"the global model has no {he.SHAPES} meta: use omnifm.fl.he_persistor.OmniFMHEPersistor"
        try:
            dxo.data = he.from_ciphertext_bytes(dxo.data, self._context)
        except (ValueError, TypeError, RuntimeError) as err:
            return None, f"ciphertexts cannot be read with {self.tenseal_context_file} ({err})"
        reason = he.check_encrypted(dxo.data, global_meta[he.SHAPES])
        if reason:
            return None, reason
        n_samples = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
        if not isinstance(n_samples, int) or n_samples <= 0:
            return None, f"n_samples must be an int >= 1, got {n_samples!r}"
        return self._with_bank_data(dxo, n_samples, global_meta)

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
        sites = sorted(self._accepted)
        contributions = [self._accepted[s] for s in sites]
        start = time.perf_counter()
        try:
            averaged = he.encrypted_mean([(c.weights, c.n_samples) for c in contributions])
            meta = self._next_meta(fl_ctx, current, sites)
        except ValueError as err:
            msg = f"round {current}: the accepted contributions cannot be combined: {err}"
            self.system_panic(msg, fl_ctx)
            raise RuntimeError(msg) from err
        self.log_info(fl_ctx, f"round {current}: encrypted mean of {len(contributions)} sites in "
                      f"{time.perf_counter() - start:.3f} s")
        self._log_sites(fl_ctx, current)
        return DXO(data_kind=DataKind.WEIGHTS, data=averaged, meta=meta).to_shareable()

    def _next_meta(self, fl_ctx: FLContext, current: int, sites: list[str]) -> dict:
        """Bank and algorithm state by the core round rule (the plain job's code), weights left out."""
        meta = dict(fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)[ModelLearnableKey.META])
        accepted = [(s, self._accepted[s]) for s in sites]
        uploads = [Upload({}, c.n_samples, c.prototypes, c.retrievals, site=s) for s, c in accepted]
        _, meta = server_round(meta[wire.SPEC], {}, meta, uploads)
        if meta.get(wire.BANK):
            bank = KnowledgeBank.from_plain(meta[wire.BANK])
            self.log_info(fl_ctx, f"round {current}: knowledge bank version {bank.version}, {len(bank)} prototypes")
        meta[MetaKey.PROCESSED_KEYS] = {name: True for name in meta[he.SHAPES]}
        meta[MetaKey.PROCESSED_ALGORITHM] = HE_ALGORITHM_CKKS
        return meta

    def _log_sites(self, fl_ctx: FLContext, current: int) -> None:
        for site in sorted(self._accepted):
            c = self._accepted[site]
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(c.metrics.items()))
            self.log_info(fl_ctx, f"round {current} {site}: n={c.n_samples} {shown}")
