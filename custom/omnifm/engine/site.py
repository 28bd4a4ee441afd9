"""One site's side of a federated round, free of any FL framework.

:class:`SiteTrainer` owns the site's model, optimizer and data. The FLARE executor (and, later,
the in-process benchmark) only hands it the global shared weights and the bank, and ships back
what :meth:`SiteTrainer.train_round` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from omnifm.algorithms import build_model, get_algorithm
from omnifm.checkpoint import atomic_torch_save
from omnifm.data import SliceDataset
from omnifm.engine.evaluate import evaluate_volumes
from omnifm.engine.retrieval import Retriever
from omnifm.engine.train import train_epoch
from omnifm.knowledge import KnowledgeBank, summarize_tokens
from omnifm.losses import proximal_term
from omnifm.task import SegTask


@dataclass(frozen=True)
class TrainConfig:
    """Site-local training settings (a site may tune these to its hardware).

    Args:
        local_epochs: passes over the site's training slices per round.
        batch_size: slices per step.
        learning_rate: Adam learning rate.
        keep_empty_fraction: fraction of tumour-free slices kept for training.
        min_prototype_count: smallest cluster a site uploads as a prototype.
        log_every: log the running loss every N steps (0: once per epoch).
        seed: data order seed.
    """

    local_epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-3
    keep_empty_fraction: float = 0.3
    min_prototype_count: int = 8
    log_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("local_epochs", "batch_size", "min_prototype_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")


@dataclass
class RoundResult:
    """What a site sends back after a round: shared weights and aggregates only."""

    weights: dict[str, torch.Tensor]
    n_samples: int
    prototypes: torch.Tensor
    prototype_counts: torch.Tensor
    retrieval_counts: dict[int, int]
    metrics: dict[str, float] = field(default_factory=dict)


def select_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SiteTrainer:
    """Local model, data and rules of one site.

    Args:
        spec: the federation's run spec (see :func:`omnifm.algorithms.make_run_spec`).
        config: site-local training settings.
        train_volumes: loaded training cases ``{"image": (C,H,W,D), "label": (1,H,W,D)}``.
        val_volumes: loaded validation cases.
        device: where to train; default :func:`select_device`.
        logger: progress logger.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        config: TrainConfig,
        train_volumes: list[dict[str, np.ndarray]],
        val_volumes: list[dict[str, np.ndarray]],
        device: torch.device | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not train_volumes:
            raise ValueError("train_volumes is empty: a site needs at least one training case")
        self.spec, self.config = spec, config
        self.algorithm = get_algorithm(spec["algorithm"])
        self.device = device or select_device()
        self.logger = logger or logging.getLogger(__name__)
        self.model = build_model(spec).to(self.device)
        self.shared_names = self.algorithm.shared_parameter_names(self.model)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.val_volumes = val_volumes
        self.task = SegTask.from_dict(spec["task"])
        dataset = SliceDataset(train_volumes, keep_empty_fraction=config.keep_empty_fraction, seed=config.seed)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, shuffle=True, generator=torch.Generator().manual_seed(config.seed)
        )

    # ---- weights -------------------------------------------------------------------------
    def shared_state(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {name: params[name].detach().cpu().clone() for name in self.shared_names}

    def load_global(self, weights: dict[str, torch.Tensor]) -> None:
        """Overwrite the shared parameters; personal ones are never touched."""
        missing, extra = set(self.shared_names) - set(weights), set(weights) - set(self.shared_names)
        if missing or extra:
            raise ValueError(
                f"global weights do not match this site's shared parameters: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(extra)[:5]} (server and site run different model specs?)"
            )
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name in self.shared_names:
                value = torch.as_tensor(weights[name])
                if value.shape != params[name].shape:
                    raise ValueError(f"global weight {name} has shape {tuple(value.shape)}, expected {tuple(params[name].shape)}")
                params[name].copy_(value)

    def personal_state(self) -> dict[str, torch.Tensor]:
        shared = set(self.shared_names)
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if n not in shared}

    def save_personal(self, path: str | Path, round_num: int) -> None:
        """Atomically write the personal parameters (tensors + ints only: loads with weights_only)."""
        atomic_torch_save({"personal": self.personal_state(), "round": int(round_num)}, path)

    def load_personal(self, path: str | Path) -> int | None:
        """Restore personal parameters saved by :meth:`save_personal`; returns their round or None."""
        path = Path(path)
        if not path.is_file():
            return None
        payload = torch.load(path, map_location="cpu", weights_only=True)
        expected = self.personal_state()
        saved = payload.get("personal", {})
        if set(saved) != set(expected) or any(saved[k].shape != expected[k].shape for k in saved):
            raise ValueError(f"personal state in {path.name} does not match this job's model; move it away to start fresh")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
        return int(payload.get("round", -1))

    # ---- round ---------------------------------------------------------------------------
    def _retriever(self, bank: KnowledgeBank | None) -> Retriever | None:
        return Retriever(bank, self.spec["top_k"]) if self.algorithm.uses_bank else None

    def evaluate(self, bank: KnowledgeBank | None) -> dict[str, float]:
        return evaluate_volumes(self.model, self.val_volumes, self.device, self._retriever(bank), self.task)

    def train_round(self, bank: KnowledgeBank | None) -> RoundResult:
        """Local epochs on the site's data; returns shared weights, prototypes and retrieval counts."""
        retriever = self._retriever(bank)
        # A fresh optimizer per round: FLARE may rebuild the executor between tasks, so optimizer
        # state would not survive anyway; doing it always keeps in-process and FLARE runs equal.
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.learning_rate)
        align_weight = self.spec["align_weight"] if self.algorithm.uses_bank else 0.0
        regularizer = self._proximal() if self.algorithm.proximal else None
        stats = None
        for epoch in range(self.config.local_epochs):
            stats = train_epoch(
                self.model, self.loader, optimizer, self.loss_fn, self.device, retriever, align_weight,
                self.logger, self.config.log_every, regularizer,
            )
            self.logger.info("epoch %d/%d: %s", epoch + 1, self.config.local_epochs, _fmt(stats.means()))
        prototypes, counts = self._prototypes(stats.tokens)
        return RoundResult(
            weights=self.shared_state(),
            n_samples=stats.samples,
            prototypes=prototypes,
            prototype_counts=counts,
            retrieval_counts=dict(retriever.counts) if retriever else {},
            metrics=stats.means(),
        )

    def _proximal(self) -> Callable[[], torch.Tensor]:
        """FedProx: the shared weights as received this round are the anchor."""
        anchor = {name: value.to(self.device) for name, value in self.shared_state().items()}
        return lambda: proximal_term(self.model.named_parameters(), anchor, self.spec["prox_mu"])

    def _prototypes(self, tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """k-means centroids of the last epoch's spectral tokens (never one image's embedding)."""
        dim = self.model.config.spectral_dim
        if not self.algorithm.uses_bank or not tokens:
            return torch.zeros(0, dim), torch.zeros(0, dtype=torch.long)
        return summarize_tokens(
            torch.cat(tokens), self.spec["num_prototypes"], min_count=self.config.min_prototype_count, seed=self.config.seed
        )


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in values.items())
