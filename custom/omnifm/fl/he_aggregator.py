"""Server aggregator for the HE job: sample-weighted mean of CKKS-encrypted weights + the plaintext bank rule."""

from __future__ import annotations

import time
from dataclasses import replace

import tenseal as ts
from nvflare.apis.dxo import DXO, MetaKey
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_opt.he import decomposers
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS
from nvflare.app_opt.he.homomorphic_encrypt import load_tenseal_context_from_workspace

from omnifm.algorithms import Upload, server_round
from omnifm.fl import he
from omnifm.fl.aggregator import OmniFMAggregator


class OmniFMHEAggregator(OmniFMAggregator):
    """Averages encrypted shared weights by sample count; updates the knowledge bank from plaintext meta.

    Sites encrypt their weights as they are, packed into one CKKS vector
    (:class:`~omnifm.fl.he_filters.OmniFMHEModelEncryptor`, FLARE's ``HEModelEncryptor`` without
    pre-weighting); this aggregator multiplies each site's ciphertexts by ``n_i / total samples``
    (``NUM_STEPS_CURRENT_ROUND``, plaintext) and adds them (:func:`omnifm.fl.he.encrypted_mean`).
    A contribution is rejected, with the reason logged, when it is an error result, from another
    round, a second result from the same site, not ``WEIGHTS``, not one packed CKKS vector (a
    plaintext contribution means a site's encryption filter is missing), has a packing layout
    (names, sizes) unlike the global model's, or has no positive sample count. NaN/Inf cannot be
    checked under encryption.
    :meth:`aggregate` fails the job (``system_panic``) when nothing was accepted.

    Args:
        tenseal_context_file: the server's TenSEAL context (no secret key) in its ``startup/`` folder,
            used to read ciphertexts that sites send as bytes (:class:`~omnifm.fl.he_filters.SerializeCiphertexts`).
    """

    def __init__(self, tenseal_context_file: str = he.SERVER_CONTEXT) -> None:
        super().__init__()
        self.tenseal_context_file = tenseal_context_file
        self._context: ts.Context | None = None
        decomposers.register()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)  # records error replies, as in the plain job
        if event_type == EventType.START_RUN:
            try:
                self._context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
            except ValueError as err:
                self.system_panic(f"{err}. The HE job needs {self.tenseal_context_file} in the server's startup/ "
                                  "folder: provision with provisioning/project_he.yml, or for the simulator/POC run "
                                  "`omnifm-he-context <workspace>/startup` first (docs/HE.md)", fl_ctx)
        elif event_type == EventType.END_RUN:
            self._context = None

    def _read_weights(self, dxo: DXO, global_model: dict) -> str | None:
        """Ciphertexts only: CKKS-encrypted by OmniFM's encryptor, readable, with the global model's sizes."""
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) != HE_ALGORITHM_CKKS:
            return ("weights are not CKKS-encrypted: add omnifm.fl.he_filters.OmniFMHEModelEncryptor to the site's "
                    "task_result_filters")
        if dxo.get_meta_prop(he.UNWEIGHTED) is not True:
            return ("weights were not encrypted by omnifm.fl.he_filters.OmniFMHEModelEncryptor (FLARE's "
                    "pre-weighting HEModelEncryptor would make the mean wrong); fix the site's task_result_filters")
        global_meta = global_model[ModelLearnableKey.META]
        if not global_meta.get(he.SHAPES):
            return f"the global model has no {he.SHAPES} meta: use omnifm.fl.he_persistor.OmniFMHEPersistor"
        try:
            dxo.data = he.from_ciphertext_bytes(dxo.data, self._context)
        except (ValueError, TypeError, RuntimeError) as err:
            return f"ciphertexts cannot be read with {self.tenseal_context_file} ({err})"
        return he.check_encrypted(dxo.data, global_meta[he.SHAPES], dxo.get_meta_prop(he.LAYOUT))

    def _combine(
        self, spec: dict, global_weights: dict, meta: dict, uploads: list[Upload], fl_ctx: FLContext
    ) -> tuple[dict, dict]:
        """Encrypted sample-weighted mean; bank and algorithm state by the core rule with the weights left out."""
        start = time.perf_counter()
        averaged = he.encrypted_mean([(u.weights, u.n_samples) for u in uploads])
        plain = [replace(u, weights={}) for u in uploads]
        _, meta = server_round(spec, {}, meta, plain)
        meta[MetaKey.PROCESSED_KEYS] = {he.PACKED: True}
        meta[MetaKey.PROCESSED_ALGORITHM] = HE_ALGORITHM_CKKS
        self.log_info(fl_ctx, f"encrypted mean of {len(uploads)} sites in {time.perf_counter() - start:.3f} s")
        return averaged, meta
