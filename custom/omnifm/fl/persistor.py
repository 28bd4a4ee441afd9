"""Server persistor: the global model and the spectral knowledge bank, saved every round.

Two files in the server's app folder (``FL_global_model.pt``, ``knowledge_bank.pt``), each a
dict of tensors, ints and strings written atomically, so both load with
``torch.load(weights_only=True)``. The bank is never put into the model checkpoint's meta.

Resuming (``source_dir``) refuses, with a message naming the file and the fix, a model file that
cannot be read or does not fit the job, and a bank of another dimension; a missing bank file is
a warning (the job starts with an empty bank). Temporary files left by a save that was killed
are removed from the job's folder and from ``source_dir`` when the model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.app_constant import AppConstants

from omnifm.algorithms import initial_global, make_run_spec
from omnifm.checkpoint import CheckpointError, atomic_torch_save, clean_stale_temps, load_torch_file
from omnifm.fl import wire
from omnifm.knowledge import KnowledgeBank

MODEL_FILE = "FL_global_model.pt"
BANK_FILE = "knowledge_bank.pt"


_RESUME_FIX = "point source_dir at the app_server folder of a job that saved its model (a backup copy of it works)"


def read_model_file(path: Path) -> dict[str, Any]:
    """A saved global model checkpoint (``model``, ``spec``, ``round``) checked for its keys."""
    ckpt = load_torch_file(path, "saved global model", _RESUME_FIX)
    model, spec = ckpt.get("model"), ckpt.get("spec")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"saved global model {path} has no 'model' dict of tensors — {_RESUME_FIX}")
    try:
        ckpt["spec"] = json.loads(spec)
    except (TypeError, ValueError):
        raise CheckpointError(f"saved global model {path} has no readable 'spec' — {_RESUME_FIX}") from None
    return ckpt


def read_bank_file(path: Path) -> dict | None:
    """The bank state saved next to a model, or None when there is no bank file."""
    if not path.is_file():
        return None
    fix = f"restore {path.name} from a backup, or move it away to start with an empty bank"
    state = load_torch_file(path, "saved knowledge bank", fix).get("bank")
    if not isinstance(state, dict) or "dim" not in state:
        raise CheckpointError(f"saved knowledge bank {path} has no 'bank' state — {fix}")
    return state


def restored_bank(bank_state: dict, dim: int, path: Path) -> KnowledgeBank:
    """The saved bank, refused when its dimension is not this job's spectral dimension."""
    fix = f"resume with the saved job's model settings, or move {path.name} away to start with an empty bank"
    if bank_state["dim"] != dim:
        raise ValueError(
            f"saved knowledge bank {path} holds prototypes of dimension {bank_state['dim']!r}, but this job's spectral "
            f"tokens have dimension {dim} — {fix}"
        )
    try:
        return KnowledgeBank.from_state_dict(bank_state)
    except ValueError as err:
        raise CheckpointError(f"saved knowledge bank {path} is not a valid bank state ({err}) — {fix}") from None


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict | None]:
    """Read a saved global model (+ bank if present) from ``folder``: (weights, spec, bank state).

    Raises:
        ValueError: the model file is missing, or a file cannot be read (naming the file and the fix).
    """
    folder = Path(folder)
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise ValueError(f"no {MODEL_FILE} in {folder}; point source_dir at a finished job's app_server folder")
    ckpt = read_model_file(model_path)
    return ckpt["model"], ckpt["spec"], read_bank_file(folder / BANK_FILE)


class OmniFMPersistor(ModelPersistor):
    """Creates the initial global model and bank from the run spec, and saves both every round.

    Args:
        algorithm: a federated entry of :data:`omnifm.algorithms.ALGORITHMS` (``omnifm``, ``fedavg``, ``ditto``, ...).
        task: the run spec's task entry, ``{"kind": ..., ...}`` (default segmentation with the BraTS classes; see :mod:`omnifm.tasks`).
        model: the task network's arguments (segmentation: UNet; classification: ResNet; ``out_channels`` follows the classes).
        omnifm: OmniFM module sizes.
        top_k: prototypes retrieved per image.
        align_weight: lambda of the alignment loss.
        num_prototypes: centroids a site uploads per round.
        prox_mu: FedProx's proximal weight (``fedprox`` only).
        seed: seed of the initial weights.
        ditto_lambda: Ditto's pull of the personal model to the global one (``ditto`` only).
        amplitude_ratio: FedDG's low-frequency window fraction (``feddg`` only).
        feddyn_alpha: FedDyn's dynamic-regularisation weight, > 0 (``feddyn`` only).
        fedrep_head_epochs: FedRep's head-only epochs per round (``fedrep`` only).
        moon_mu: MOON's model-contrastive weight, >= 0 (``moon`` only).
        moon_tau: MOON's temperature, > 0 (``moon`` only).
        bank: :class:`~omnifm.knowledge.KnowledgeBank` arguments (``rho``, ``delta``, ``prune_window``, ``max_size``).
        source_dir: start from a previous job's saved model and bank (folder holding ``FL_global_model.pt``);
            a relative path is taken from the server's workspace root.
        init_checkpoint: start the federation (round 0, empty bank) from the model weights in this local
            file instead of the seeded initial model (e.g. one made by ``omnifm-pretrain``, see
            docs/FEDUNETMM.md; :mod:`omnifm.algorithms.init_checkpoint`); a relative path is taken from
            the server's workspace root. Not together with ``source_dir`` (which resumes a job).
    """

    def __init__(
        self,
        algorithm: str = "omnifm",
        task: dict | None = None,
        model: dict | None = None,
        omnifm: dict | None = None,
        top_k: int = 2,
        align_weight: float = 0.1,
        num_prototypes: int = 4,
        prox_mu: float = 0.01,
        seed: int = 0,
        ditto_lambda: float = 0.1,
        amplitude_ratio: float = 0.1,
        feddyn_alpha: float = 0.01,
        fedrep_head_epochs: int = 1,
        moon_mu: float = 1.0,
        moon_tau: float = 0.5,
        bank: dict | None = None,
        source_dir: str = "",
        init_checkpoint: str = "",
    ) -> None:
        super().__init__()
        if source_dir and init_checkpoint:
            raise ValueError("set one of source_dir (resume a job's saved model and bank) and init_checkpoint "
                             "(start from a checkpoint's weights), not both")
        self.spec = make_run_spec(
            algorithm=algorithm, task=task, model=model, omnifm=omnifm, top_k=top_k,
            align_weight=align_weight, num_prototypes=num_prototypes, prox_mu=prox_mu, seed=seed,
            ditto_lambda=ditto_lambda, amplitude_ratio=amplitude_ratio, feddyn_alpha=feddyn_alpha,
            fedrep_head_epochs=fedrep_head_epochs, moon_mu=moon_mu, moon_tau=moon_tau,
        )
        self.bank_args = dict(bank or {})
        try:
            KnowledgeBank(dim=1, **self.bank_args)  # validate the bank arguments when the job is configured
        except TypeError as err:
            raise ValueError(f"bad bank arguments {self.bank_args}: {err}") from None
        self.source_dir = source_dir
        self.init_checkpoint = init_checkpoint

    def _source_folder(self, fl_ctx: FLContext, source_dir: str) -> Path:
        folder = Path(source_dir)
        if not folder.is_absolute():
            folder = Path(fl_ctx.get_engine().get_workspace().get_root_dir()) / folder
        return folder

    def _clean_temps(self, fl_ctx: FLContext, *folders: Path | None) -> None:
        """Remove temporary files that a killed save left behind (see :func:`omnifm.checkpoint.clean_stale_temps`)."""
        for folder in folders:
            removed = clean_stale_temps(folder) if folder is not None else []
            if removed:
                self.log_warning(fl_ctx, f"removed {len(removed)} temporary file(s) left in {folder} by an interrupted save")

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        app_root = fl_ctx.get_prop(FLContextKey.APP_ROOT)
        source = self._source_folder(fl_ctx, self.source_dir) if self.source_dir else None
        self._clean_temps(fl_ctx, Path(app_root) if app_root else None, source)
        init = str(self._source_folder(fl_ctx, self.init_checkpoint)) if self.init_checkpoint else None
        initial, meta = initial_global(self.spec, self.bank_args, init)  # the same round-0 state as the benchmark
        if init:
            self.log_info(fl_ctx, f"initial global model from init_checkpoint {init}")
        weights = wire.to_torch(initial)
        bank = KnowledgeBank.from_plain(meta[wire.BANK]) if meta[wire.BANK] else None
        if self.source_dir:
            weights, bank = self._load_source(fl_ctx, weights, bank)
        self.log_info(
            fl_ctx,
            f"global model for {self.spec['algorithm']}: {len(weights)} shared tensors, "
            f"{sum(v.numel() for v in weights.values())} values; bank: {'off' if bank is None else len(bank)}",
        )
        meta = {**meta, wire.SPEC: self.spec, wire.BANK: None if bank is None else bank.to_plain()}
        return make_model_learnable(wire.to_numpy(weights), meta)

    def _load_source(
        self, fl_ctx: FLContext, fresh: dict[str, torch.Tensor], bank: KnowledgeBank | None
    ) -> tuple[dict[str, torch.Tensor], KnowledgeBank | None]:
        folder = self._source_folder(fl_ctx, self.source_dir)
        if not (folder / MODEL_FILE).is_file():
            raise ValueError(f"no {MODEL_FILE} in {folder}; point source_dir at a finished job's app_server folder")
        ckpt = read_model_file(folder / MODEL_FILE)
        weights, spec = ckpt["model"], ckpt["spec"]
        reason = wire.check_weights(wire.to_numpy(weights), {k: tuple(v.shape) for k, v in fresh.items()})
        if reason:
            raise ValueError(f"model in {folder} does not fit this job's spec ({reason}); saved spec was {spec}")
        if bank is not None:
            bank = self._resumed_bank(fl_ctx, folder, bank)
        saved = ckpt.get("round")
        hint = f"; to continue the round count set start_round to {saved + 1}" if isinstance(saved, int) else ""
        self.log_info(
            fl_ctx,
            f"starting from the saved model and bank in {folder} (saved after round {saved}; "
            f"bank: {'off' if bank is None else len(bank)}){hint}",
        )
        return weights, bank

    def _resumed_bank(self, fl_ctx: FLContext, folder: Path, fresh: KnowledgeBank) -> KnowledgeBank:
        """The bank saved in ``folder``; the fresh (empty) bank, with a warning, when there is no bank file."""
        bank_state = read_bank_file(folder / BANK_FILE)
        if bank_state is None:
            self.log_warning(
                fl_ctx,
                f"no {BANK_FILE} at {folder / BANK_FILE}: resuming the saved model with an EMPTY knowledge bank; "
                f"copy the interrupted job's {BANK_FILE} there to keep its prototypes",
            )
            return fresh
        return restored_bank(bank_state, fresh.dim, folder / BANK_FILE)

    def save_model(self, model_learnable: ModelLearnable, fl_ctx: FLContext) -> None:
        folder = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT))
        current = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND) or 0)
        meta = model_learnable.get(ModelLearnableKey.META) or {}
        weights = wire.to_torch(model_learnable[ModelLearnableKey.WEIGHTS])
        spec = json.dumps(meta.get(wire.SPEC, self.spec), sort_keys=True)
        atomic_torch_save({"model": weights, "spec": spec, "round": current}, folder / MODEL_FILE)
        if meta.get(wire.BANK):
            bank = KnowledgeBank.from_plain(meta[wire.BANK])
            atomic_torch_save({"bank": bank.state_dict(), "round": current}, folder / BANK_FILE)
        self.log_info(fl_ctx, f"saved global model (round {current}) to {folder}")
