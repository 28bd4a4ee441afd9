"""Site-side filters of the HE job: check and encrypt weights, ship bare ciphertexts, restore shapes."""

from __future__ import annotations

import logging
import time

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor

from omnifm.fl import combinations, he


class OmniFMHEModelEncryptor(HEModelEncryptor):
    """FLARE's ``HEModelEncryptor`` on the packed weights, without pre-weighting, marking its output as such.

    **Packing.** FLARE's encryptor makes one CKKS vector per tensor, and each vector takes at least
    one ciphertext (4,096 slots at poly modulus 8192), so small tensors waste most of theirs. This
    encryptor first packs all shared tensors into one flat vector in sorted name order
    (:func:`omnifm.fl.he.pack`, name ``omnifm_he_packed``, layout ``[[name, size], ...]`` in meta
    ``omnifm_he_layout``); TenSEAL splits it into ``ceil(values / 4096)`` ciphertexts. The server
    checks the layout against the global model's shapes; the site's
    :class:`RestoreWeightShapes` unpacks the decrypted vector by the task's ``omnifm_shapes``.

    FLARE's encryptor either pre-multiplies by ``n_i`` (``weigh_by_local_iter=True``, its default)
    or not, and nothing on the wire says which: a site configured differently from the server
    would silently skew the mean, and the server cannot decrypt to notice. This encryptor always
    sends ``enc(w_i)`` and sets ``omnifm_he_unweighted`` in meta;
    :class:`~omnifm.fl.he_aggregator.OmniFMHEAggregator` weights by ``n_i / sum n`` itself and
    rejects results without the marker (e.g. from the stock encryptor).

    Args:
        tenseal_context_file: the site's TenSEAL context (with the secret key) in its ``startup/`` folder.

    At START_RUN it stops the run (system panic) if the site's job also uses int8 compression
    (:mod:`omnifm.fl.combinations`: CKKS ciphertexts cannot be quantized).
    """

    def __init__(self, tenseal_context_file: str = he.CLIENT_CONTEXT):
        super().__init__(tenseal_context_file, None, aggregation_weights=None, weigh_by_local_iter=False,
                         data_kinds=[DataKind.WEIGHTS])

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.START_RUN:
            combinations.refuse_at_start(self, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        flat, layout = he.pack(dxo.data)
        packed = DXO(data_kind=dxo.data_kind, data={he.PACKED: flat}, meta=dxo.meta)
        start = time.perf_counter()
        level = self.logger.level  # the stock encryptor logs five INFO lines per round: keep one (below)
        self.logger.setLevel(max(logging.WARNING, level))
        try:
            encrypted = super().process_dxo(packed, shareable, fl_ctx)
        finally:
            self.logger.setLevel(level)
        self.log_info(fl_ctx, f"encrypted {len(layout)} tensors ({flat.size} values) as one packed CKKS vector "
                      f"in {time.perf_counter() - start:.2f} s")
        encrypted.set_meta_prop(he.LAYOUT, layout)
        encrypted.set_meta_prop(he.UNWEIGHTED, True)
        return encrypted


class RestoreWeightShapes(DXOFilter):
    """Unpacks the vector FLARE's ``HEModelDecryptor`` decrypted into float32 arrays of the global shapes.

    The global model is one packed CKKS vector (see :class:`OmniFMHEModelEncryptor`), so decryption
    yields one flat list; the shapes travel in DXO meta
    (``omnifm_shapes``, plaintext, set by :class:`~omnifm.fl.he_persistor.OmniFMHEPersistor`).
    Place this filter *after* ``HEModelDecryptor`` in ``task_data_filters``.

    Raises:
        ValueError: (while filtering) weights still encrypted (the decryptor is missing or runs
            after this filter), or a tensor whose size does not fit its shape.
    """

    def __init__(self) -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        shapes = dxo.get_meta_prop(he.SHAPES)
        if not shapes:
            self.log_warning(fl_ctx, f"no {he.SHAPES} in the task meta: weights left as they are")
            return None
        if dxo.get_meta_prop(MetaKey.PROCESSED_KEYS):
            raise ValueError("weights are still encrypted: put HEModelDecryptor before RestoreWeightShapes "
                             "in the site's task_data_filters")
        if he.PACKED not in dxo.data:
            return None  # the plaintext initial model (round 0): float arrays of their shapes already
        dxo.data = he.unflatten(dxo.data, shapes)
        return dxo


class SerializeCiphertexts(DXOFilter):
    """Replaces a site's CKKS vectors by their bytes before they are sent (after ``HEModelEncryptor``).

    FLARE's FOBS decomposer for ``CKKSVector`` ships every vector together with its serialized
    context (about 0.66 MB of relinearisation keys with the default parameters), once per tensor.
    Sending the bare ciphertext bytes, as FLARE's own ``HEModelShareableGenerator`` does for the
    server -> site direction, cuts an OmniFM upload about threefold (measured in ``docs/HE.md``);
    :class:`~omnifm.fl.he_aggregator.OmniFMHEAggregator` reads them back with the server context.
    The bytes are the same ciphertexts: nothing extra is revealed.
    """

    def __init__(self) -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        if not dxo.get_meta_prop(MetaKey.PROCESSED_KEYS):
            raise ValueError("weights are not encrypted: put HEModelEncryptor before SerializeCiphertexts "
                             "in the site's task_result_filters")
        dxo.data = {name: he.to_ciphertext_bytes(value) for name, value in dxo.data.items()}
        return dxo


class RefuseNonFinite(DXOFilter):
    """Fails a site's result whose weights contain NaN or Inf, *before* ``HEModelEncryptor`` hides them.

    The plain job's server rejects such weights; under encryption it cannot see them, so the site
    checks its own upload (the server then logs the site's filter error as the rejection reason).
    A site that removes this filter can still poison the encrypted mean: see ``docs/HE.md``.
    """

    def __init__(self) -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        bad = sorted(name for name, value in dxo.data.items() if not np.isfinite(np.asarray(value)).all())
        if bad:
            raise ValueError(f"weights {bad[:3]} contain NaN or Inf: not sending them (the server cannot check "
                             "encrypted weights)")
        return None
