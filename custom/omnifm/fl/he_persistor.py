"""HE job's server persistor and model locator: the global model is kept and handed out encrypted.

The server never holds plaintext weights after round 1, so the HE job does not write
``FL_global_model.pt``. It writes ``FL_global_model_encrypted.pt`` instead: serialized CKKS
ciphertexts as uint8 tensors plus shapes, spec and round, which loads with
``torch.load(weights_only=True)``; only a site's ``client_context.tenseal`` can decrypt it. The
bank is plaintext and goes to ``knowledge_bank.pt`` exactly as in the plain job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.dxo import MetaKey
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.he import decomposers
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS

from omnifm.checkpoint import CheckpointError, atomic_torch_save, load_torch_file
from omnifm.fl import he, wire
from omnifm.fl.model_locator import OmniFMModelLocator, plain_bank
from omnifm.fl.persistor import BANK_FILE, OmniFMPersistor, read_bank_file
from omnifm.knowledge import KnowledgeBank

ENCRYPTED_MODEL_FILE = "FL_global_model_encrypted.pt"


def save_encrypted(folder: str | Path, weights: dict[str, Any], shapes: dict, spec: dict, current: int) -> Path:
    """Write the encrypted global model (ciphertext bytes as uint8 tensors) atomically; returns its path."""
    blobs = {name: torch.frombuffer(bytearray(he.to_ciphertext_bytes(v)), dtype=torch.uint8) for name, v in weights.items()}
    payload = {"encrypted": blobs, "shapes": shapes, "spec": json.dumps(spec, sort_keys=True), "round": current,
               "scheme": HE_ALGORITHM_CKKS}
    path = Path(folder) / ENCRYPTED_MODEL_FILE
    atomic_torch_save(payload, path)
    return path


def load_encrypted(folder: str | Path) -> tuple[dict[str, bytes], dict[str, list[int]], dict, dict | None]:
    """Read an encrypted global model (+ bank if present): (ciphertext bytes, shapes, spec, bank state)."""
    folder = Path(folder)
    path = folder / ENCRYPTED_MODEL_FILE
    if not path.is_file():
        raise ValueError(f"no {ENCRYPTED_MODEL_FILE} in {folder}; point source_dir at a finished HE job's app_server folder")
    fix = "point source_dir at the app_server folder of an HE job that saved its model (a backup copy of it works)"
    ckpt = load_torch_file(path, "saved encrypted global model", fix)
    encrypted, shapes = ckpt.get("encrypted"), ckpt.get("shapes")
    if not isinstance(encrypted, dict) or not all(isinstance(t, torch.Tensor) for t in encrypted.values()):
        raise CheckpointError(f"saved encrypted global model {path} has no 'encrypted' dict of tensors — {fix}")
    try:
        spec = json.loads(ckpt.get("spec"))
    except (TypeError, ValueError):
        raise CheckpointError(f"saved encrypted global model {path} has no readable 'spec' — {fix}") from None
    if not isinstance(shapes, dict):
        raise CheckpointError(f"saved encrypted global model {path} has no 'shapes' — {fix}")
    blobs = {name: t.numpy().tobytes() for name, t in encrypted.items()}
    return blobs, shapes, spec, read_bank_file(folder / BANK_FILE)


def encrypted_meta(meta: dict, shapes: dict[str, list[int]]) -> dict:
    """``meta`` plus the markers that make a site's ``HEModelDecryptor`` decrypt every shared tensor."""
    return {**meta, he.SHAPES: shapes, MetaKey.PROCESSED_KEYS: {he.PACKED: True},
            MetaKey.PROCESSED_ALGORITHM: HE_ALGORITHM_CKKS}


class OmniFMHEPersistor(OmniFMPersistor):
    """:class:`~omnifm.fl.persistor.OmniFMPersistor` for encrypted global models.

    Same arguments. The initial model is plaintext (random initial weights reveal nothing); it
    carries the shapes of the shared tensors in meta (``omnifm_shapes``) because CKKS vectors are
    flat. Every aggregated model is saved as ciphertext. ``source_dir`` must hold a previous HE
    job's ``FL_global_model_encrypted.pt``; the sites decrypt it in the first round.

    Raises:
        ValueError: an algorithm whose rule is not a weighted mean (see :func:`omnifm.fl.he.he_algorithms`).
    """

    def __init__(self, algorithm: str = "omnifm", source_dir: str = "", **kwargs: Any) -> None:
        super().__init__(algorithm=he.check_he_algorithm(algorithm), source_dir="", **kwargs)
        self.encrypted_source_dir = source_dir
        decomposers.register()

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        learnable = super().load_model(fl_ctx)
        shapes = he.shapes_of(learnable[ModelLearnableKey.WEIGHTS])
        meta = {**learnable[ModelLearnableKey.META], he.SHAPES: shapes}
        if not self.encrypted_source_dir:
            return make_model_learnable(learnable[ModelLearnableKey.WEIGHTS], meta)
        folder = self._source_folder(fl_ctx, self.encrypted_source_dir)
        self._clean_temps(fl_ctx, folder)
        blobs, saved_shapes, spec, bank_state = load_encrypted(folder)
        if saved_shapes != shapes:
            raise ValueError(f"encrypted model in {folder} does not fit this job's spec; saved spec was {spec}")
        if set(blobs) != {he.PACKED}:
            raise ValueError(f"encrypted model in {folder} holds one ciphertext per tensor (saved before the weights "
                             "were packed); it cannot be resumed by this version")
        if meta.get(wire.BANK) is not None:
            fresh = KnowledgeBank.from_plain(meta[wire.BANK])
            meta[wire.BANK] = self._resumed_bank(fl_ctx, folder, fresh).to_plain()
        self.log_info(fl_ctx, f"starting from the encrypted model and bank in {folder}")
        return make_model_learnable(blobs, encrypted_meta(meta, shapes))

    def save_model(self, model_learnable: ModelLearnable, fl_ctx: FLContext) -> None:
        meta = model_learnable.get(ModelLearnableKey.META) or {}
        if not meta.get(MetaKey.PROCESSED_KEYS):
            super().save_model(model_learnable, fl_ctx)  # still the plaintext initial model
            return
        folder = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT))
        current = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND) or 0)
        spec = meta.get(wire.SPEC, self.spec)
        save_encrypted(folder, model_learnable[ModelLearnableKey.WEIGHTS], meta[he.SHAPES], spec, current)
        if meta.get(wire.BANK):
            bank = KnowledgeBank.from_plain(meta[wire.BANK])
            atomic_torch_save({"bank": bank.state_dict(), "round": current}, folder / BANK_FILE)
        self.log_info(fl_ctx, f"saved encrypted global model (round {current}) to {folder}")


class OmniFMHEModelLocator(OmniFMModelLocator):
    """Hands ``FL_global_model_encrypted.pt`` (+ bank) to ``GlobalModelEval`` still encrypted.

    The DXO carries the CKKS markers in meta, so each site's ``HEModelDecryptor`` task-data filter
    decrypts it with the site's key before the executor evaluates it; the server never decrypts.
    """

    model_file = ENCRYPTED_MODEL_FILE

    def __init__(self) -> None:
        super().__init__()
        decomposers.register()

    def _load(self, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        blobs, shapes, spec, bank_state = load_encrypted(folder)
        return blobs, encrypted_meta({wire.SPEC: spec, wire.BANK: plain_bank(bank_state)}, shapes)
