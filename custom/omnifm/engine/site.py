"""One site's side of a federated round, free of any FL framework.

:class:`SiteTrainer` owns the site's model(s), data and personal state. The FLARE executor and
the in-process benchmark both hand it the global shared weights, the bank and the server's
algorithm state, and ship back what :meth:`SiteTrainer.train_round` returns (see the round
protocol in :mod:`omnifm.algorithms.server`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omnifm.algorithms import build_model, get_algorithm
from omnifm.algorithms.server import Upload, to_plain
from omnifm.algorithms.rule import site_rule
from omnifm.algorithms.spec import shared_state
from omnifm.checkpoint import atomic_torch_save
from omnifm.engine.diagnostics import ablation_effect, mean_pairwise_cosine, placebo_effect, retrieval_stats
from omnifm.engine.evaluate import evaluate_volumes
from omnifm.engine.optim_state import flat_state, init_adam_state, load_flat_state
from omnifm.engine.privacy import DP_PREFIX, DPConfig, SitePrivacy, refusal, released_under_dp
from omnifm.engine.retrieval import Retriever
from omnifm.engine.train import EpochStats, train_epoch
from omnifm.knowledge import KnowledgeBank, summarize_tokens
from omnifm.knowledge.summaries import class_sums, summarize_entries
from omnifm.losses import proximal_term
from omnifm.tasks import get_task


LR_SCHEDULES = ("cosine", "constant")
EVAL_SEED = 7  # the noise seed of evaluation-time retrieval (only the placebo mode draws noise)
OPTIM_PREFIX = "optim/"


@dataclass(frozen=True)
class TrainConfig:
    """Site-local training settings (a site may tune these to its hardware).

    Args:
        local_epochs: passes over the site's training slices per round.
        batch_size: slices per step.
        learning_rate: Adam learning rate at round 0 (the schedule's peak).
        lr_schedule: ``cosine`` (decay over the job's rounds to ``min_lr_fraction * learning_rate``)
            or ``constant``.
        min_lr_fraction: the cosine schedule's floor, as a fraction of ``learning_rate``.
        keep_empty_fraction: fraction of tumour-free slices kept for training.
        min_prototype_count: smallest cluster a site uploads as a prototype.
        log_every: log the running loss every N steps (0: once per epoch).
        seed: data order seed.
        dp: case-level DP-SGD settings (a :class:`~omnifm.engine.privacy.DPConfig` or a dict of its
            fields: ``target_epsilon`` | ``noise_multiplier``, ``max_grad_norm``, ``delta``, ...); None: no DP.
    """

    local_epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    min_lr_fraction: float = 0.05
    keep_empty_fraction: float = 0.3
    min_prototype_count: int = 8
    log_every: int = 0
    seed: int = 0
    dp: DPConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dp", DPConfig.from_value(self.dp))
        for name in ("local_epochs", "batch_size", "min_prototype_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.min_lr_fraction <= 1:
            raise ValueError(f"min_lr_fraction must be in [0, 1], got {self.min_lr_fraction!r}")

    def round_lr(self, round_num: int, num_rounds: int | None) -> float:
        """The learning rate of round ``round_num`` (0-based) of ``num_rounds``.

        ``cosine``: ``floor + (lr - floor) * (1 + cos(pi * round_num / num_rounds)) / 2`` with
        ``floor = min_lr_fraction * lr``; constant when ``num_rounds`` is unknown (None or < 2).

        Examples::

            >>> TrainConfig(learning_rate=1.0, min_lr_fraction=0.0).round_lr(1, 2)
            0.5
        """
        if self.lr_schedule == "constant" or not num_rounds or num_rounds < 2:
            return self.learning_rate
        floor = self.min_lr_fraction * self.learning_rate
        t = min(max(round_num, 0), num_rounds) / num_rounds
        return floor + (self.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class RoundResult:
    """What a site sends back after a round: shared weights and aggregates only.

    ``extras`` holds algorithm uploads (FedDG's group-mean amplitude windows); a strategy file's
    extra weights (SCAFFOLD's control deltas, ``scaffold_c:<name>``) travel in ``weights``.
    ``prototype_values`` are the bank values of the uploaded prototypes (class-conditional feature
    means, see :mod:`omnifm.knowledge.summaries`); ``diagnostics`` the mechanism's measurements
    (:mod:`omnifm.engine.diagnostics`), also copied into ``metrics``.
    """

    weights: dict[str, torch.Tensor]
    n_samples: int
    prototypes: torch.Tensor
    prototype_counts: torch.Tensor
    retrieval_counts: dict[int, int]
    metrics: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    prototype_values: torch.Tensor | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)

    def to_upload(self, site: str = "") -> Upload:
        """The server's view of this result: numpy float32 weights, plain extras (as over FLARE)."""
        weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.weights.items()}
        return Upload(
            weights, self.n_samples, self.prototypes, dict(self.retrieval_counts), to_plain(self.extras), site,
            values=self.prototype_values, counts=self.prototype_counts,
        )


def previous_personal_path(path: str | Path) -> Path:
    """``<name>.prev.pt`` next to a personal-state file ``<name>.pt``: the generation before it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def saved_round(path: str | Path) -> int | None:
    """The round a personal-state file was saved after (None when there is no such file)."""
    from omnifm.checkpoint import load_personal_file

    path = Path(path)
    return int(load_personal_file(path).get("round", -1)) if path.is_file() else None


def select_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def round_seed(seed: int, round_num: int, stream: int) -> int:
    """A seed for one random stream of one round, the same whether or not the trainer was rebuilt."""
    return int(np.random.SeedSequence([int(seed), int(round_num), int(stream)]).generate_state(1)[0])


class SiteTrainer:
    """Local model, data and rules of one site.

    Everything a round depends on is either received (global weights, bank, server state), in
    the personal state (:meth:`personal_state`: personal parameters, buffers, Ditto's personal
    model, SCAFFOLD's control, the optimizers' Adam moments) or seeded from ``(config.seed,
    round_num)``; the learning rate of a round follows ``config.round_lr(round_num, num_rounds)``.
    So a trainer kept alive and one rebuilt every round with its personal state reloaded give the
    same results.

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
        test_volumes: list[dict[str, np.ndarray]] | None = None,
        site: str = "",
    ) -> None:
        if not train_volumes:
            raise ValueError("train_volumes is empty: a site needs at least one training case")
        self.spec, self.config = spec, config
        self.algorithm = get_algorithm(spec["algorithm"])
        self.device = device or select_device()
        self.logger = logger or logging.getLogger(__name__)
        self.model = build_model(spec).to(self.device)
        self.shared_names = self.algorithm.shared_parameter_names(self.model)
        self.rule = site_rule(self.algorithm, spec, self.model, self.shared_names)  # FedRep, FedDyn, SCAFFOLD, MOON
        self.optimizers = {"main": torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)}
        if self.rule is not None:  # Ditto's personal model
            self.optimizers.update(self.rule.optimizers(config.learning_rate))
        for optimizer in self.optimizers.values():
            init_adam_state(optimizer)
        self.task = get_task(spec["task"])
        self.loss_fn = self.task.loss()
        self.val_volumes = val_volumes
        self.test_volumes = list(test_volumes or [])
        self.site = site
        self.dataset = self.task.dataset(train_volumes, config.keep_empty_fraction, config.seed, site)
        self.loader = self.round_loader(0, stream=0)
        self.dp = self._privacy(train_volumes)

    def _privacy(self, train_volumes: list[dict[str, np.ndarray]]) -> SitePrivacy | None:
        """Case-level DP-SGD (:mod:`omnifm.engine.privacy`), or None; refuses algorithms it cannot cover."""
        if self.config.dp is None:
            return None
        reason = refusal(self.algorithm, self.model)
        if not reason and not self.task.supports_dp:
            reason = f"the {self.task.name} task has no case-level DP-SGD sampler (its task sets supports_dp = False)"
        if reason:
            raise ValueError(f"dp is set but {reason}")
        dp = SitePrivacy(self.config.dp, train_volumes, self.config.keep_empty_fraction, self.config.seed, self.logger)
        self.logger.info("DP-SGD on: unit of privacy = one training case (%d cases), delta %.3g; the knowledge-bank "
                         "upload, retrieval counts and training-token diagnostics are not sent", dp.sampler.n_cases,
                         self.config.dp.delta)
        return dp

    @property
    def personal_model(self) -> nn.Module | None:
        """The model this site is evaluated with instead of :attr:`model` (Ditto's personal model), or None."""
        return self.rule.evaluation_model() if self.rule is not None else None

    def round_loader(self, round_num: int, stream: int) -> torch.utils.data.DataLoader:
        """The training loader of ``round_num``; ``stream`` picks an independent data order (Ditto's is 1)."""
        generator = torch.Generator().manual_seed(round_seed(self.config.seed, round_num, stream))
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.config.batch_size, shuffle=True, generator=generator)

    # ---- weights -------------------------------------------------------------------------
    def shared_state(self) -> dict[str, torch.Tensor]:
        """The shared parameters (what the server averages), detached CPU copies."""
        return shared_state(self.model, self.algorithm)

    def _global_targets(self) -> dict[str, torch.Tensor]:
        """What each global weight is copied into: a shared parameter or a strategy file's extra weight."""
        params = dict(self.model.named_parameters())
        targets = {name: params[name] for name in self.shared_names}
        targets.update(self.rule.extra_weights() if self.rule is not None else {})
        return targets

    def load_global(self, weights: dict[str, torch.Tensor]) -> None:
        """Overwrite the shared parameters (and a strategy's extra weights, e.g. SCAFFOLD's server control);
        personal ones are never touched."""
        targets = self._global_targets()
        expected = list(targets)
        missing, extra = set(expected) - set(weights), set(weights) - set(expected)
        if missing or extra:
            raise ValueError(
                f"global weights do not match this site's shared parameters: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(extra)[:5]} (server and site run different model specs?)"
            )
        for name, target in targets.items():
            value = torch.as_tensor(weights[name])
            if value.shape != target.shape:
                raise ValueError(f"global weight {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(value)

    def personal_state(self) -> dict[str, torch.Tensor]:
        """Everything the site keeps: personal parameters (by name), ``buffer/`` model buffers,
        ``<rule prefix>/`` a strategy file's state (``feddyn/``: FedDyn's ``g_i``, ``control/``:
        SCAFFOLD's site control, ``ditto/``: Ditto's personal model, ``moon/``: MOON's previous
        local model), ``optim/<name>/`` the optimizers' state (Adam moments and step counts)."""
        shared = set(self.shared_names)
        state = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if n not in shared}
        state.update({f"buffer/{n}": b.detach().cpu().clone() for n, b in self.model.named_buffers()})
        if self.rule is not None:
            state.update({f"{self.rule.prefix}/{n}": v.detach().cpu().clone() for n, v in self.rule.state().items()})
        for name, optimizer in self.optimizers.items():
            state.update({f"{OPTIM_PREFIX}{name}/{k}": v for k, v in flat_state(optimizer).items()})
        if self.dp is not None:
            state.update({f"{DP_PREFIX}{k}": v for k, v in self.dp.state().items()})
        return state

    def _set_personal(self, state: dict[str, torch.Tensor]) -> None:
        params, buffers = dict(self.model.named_parameters()), dict(self.model.named_buffers())
        optim: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.optimizers}
        rule_state: dict[str, torch.Tensor] = {}
        dp_state: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for key, value in state.items():
                prefix, _, rest = key.partition("/")
                if prefix == "dp" and self.dp is not None:
                    dp_state[rest] = value
                elif prefix == "optim":
                    name, _, entry = rest.partition("/")
                    optim[name][entry] = value
                elif prefix == "buffer":
                    buffers[rest].copy_(value)
                elif self.rule is not None and prefix == self.rule.prefix:
                    rule_state[rest] = value
                else:
                    params[key].copy_(value)
        for name, flat in optim.items():
            load_flat_state(self.optimizers[name], flat)
        if rule_state:
            self.rule.load_state(rule_state)
        if dp_state:
            self.dp.load_state(dp_state)

    def save_personal(self, path: str | Path, round_num: int) -> None:
        """Atomically write the personal state (tensors + ints only: loads with weights_only).

        The file it replaces is kept as :func:`previous_personal_path` (one generation): a site
        saves after its own training of round R, before the server has aggregated R, so after a
        server crash the state matching the server's last checkpoint is the previous one.
        """
        path = Path(path)
        if path.is_file():
            os.replace(path, previous_personal_path(path))
        atomic_torch_save({"personal": self.personal_state(), "round": int(round_num)}, path)

    def load_personal(self, path: str | Path, spent_from: str | Path | None = None) -> int | None:
        """Restore the personal state saved by :meth:`save_personal`; returns its round or None.

        Orphaned temporary files of an interrupted save in the file's folder are removed first.
        ``spent_from``: a newer personal file whose privacy accounting (``dp/`` entries) wins over
        ``path``'s. Rolling back to an older generation (a server crash) must not roll back the
        privacy already spent, nor reuse that round's noise.

        Raises:
            ValueError: the file is unreadable, holds NaN/Inf in any tensor, or does not match
                this job's model; the message names the file and says to move it away (the FLARE
                executor turns it into a ``BAD_TASK_DATA`` reply).
        """
        from omnifm.checkpoint import PERSONAL_FIX, clean_stale_temps, load_personal_file

        path = Path(path)
        clean_stale_temps(path.parent)
        if not path.is_file():
            return None
        payload = load_personal_file(path)
        expected = self.personal_state()
        saved = payload["personal"]
        if set(saved) != set(expected) or any(saved[k].shape != expected[k].shape for k in saved):
            raise ValueError(f"personal-state file {path} does not match this job's model — {PERSONAL_FIX}")
        if spent_from is not None and Path(spent_from).is_file():
            newer = load_personal_file(Path(spent_from))["personal"]
            saved = {**saved, **{k: v for k, v in newer.items() if k.startswith(DP_PREFIX) and k in saved}}
        self._set_personal(saved)
        return int(payload.get("round", -1))

    # ---- round ---------------------------------------------------------------------------
    def _retriever(self, bank: KnowledgeBank | None, mode: str | None = None, seed: int = 0) -> Retriever | None:
        algo = self.algorithm
        if not algo.uses_bank:
            return None
        return Retriever(bank, self.spec["top_k"], mode or algo.retrieval, self.model.token_dim, seed)

    def evaluate(self, bank: KnowledgeBank | None, split: str = "val") -> dict[str, float]:
        """The task's metrics on the ``val`` (or ``test``) cases of the model this site uses (Ditto: its personal model).

        The test split is for the final report only; nothing (learning rate, rounds) may be chosen on it.
        """
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        volumes = self.val_volumes if split == "val" else self.test_volumes
        model = self.personal_model if self.personal_model is not None else self.model
        return evaluate_volumes(model, volumes, self.device, self._retriever(bank, seed=EVAL_SEED), self.task)

    def train_round(
        self,
        bank: KnowledgeBank | None,
        round_num: int = 0,
        server_extras: dict[str, Any] | None = None,
        num_rounds: int | None = None,
    ) -> RoundResult:
        """Local epochs on the site's data; returns shared weights, prototypes, retrieval counts and extras.

        Args:
            bank: the global knowledge bank received this round (None when the algorithm has none).
            round_num: the federated round (0-based); seeds this round's data order and augmentation.
            server_extras: the server's algorithm state (``meta[STATE]``, e.g. FedDG's amplitude bank).
            num_rounds: the job's number of rounds (the learning-rate schedule's horizon; None: constant).
        """
        if self.dp is not None:  # before anything changes: calibrate sigma, refuse a round over budget
            self.dp.prepare_round(self.config.local_epochs, num_rounds)
        anchor = {name: value.to(self.device) for name, value in self.shared_state().items()}
        summary = self._summaries()  # with the received global model: every site's uploads share its space
        retriever = self._retriever(bank, seed=round_seed(self.config.seed, round_num, 4))
        lr = self.config.round_lr(round_num, num_rounds)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        stats = self._train_model(self.model, retriever, anchor, round_num, server_extras or {})
        if self.rule is not None:
            self.rule.after_round(self, anchor, round_num)  # Ditto: the personal model's epochs
        prototypes, values, counts, token_cos = summary
        diagnostics = self._diagnostics(bank, retriever, token_cos, round_num)
        train_metrics = stats.means()
        if self.dp is not None:  # privacy accounting is reported with the diagnostics (benchmark JSONs read those)
            diagnostics = {**released_under_dp(diagnostics), **self.dp.metrics()}
            self.logger.info("round %d training (site log only under DP): %s", round_num, _fmt(train_metrics))
            train_metrics = {}  # training losses are functions of the training cases: not released un-noised
            self.dp.log_round(round_num)
        weights = self.shared_state()
        if self.rule is not None:
            weights.update(self.rule.extra_uploads())
        return RoundResult(
            weights=weights,
            n_samples=stats.samples,
            prototypes=prototypes,
            prototype_counts=counts,
            retrieval_counts=dict(retriever.counts) if retriever and self.dp is None else {},
            metrics={**train_metrics, "lr": lr, **diagnostics},
            extras=self.rule.extras(self, round_num) if self.rule is not None else {},
            prototype_values=values,
            diagnostics=diagnostics,
        )

    def _train_model(
        self, model: nn.Module, retriever: Retriever | None, anchor: dict, round_num: int, server_extras: dict
    ) -> EpochStats:
        optimizer = self.optimizers["main"]  # kept across rounds (its state is personal)
        if self.dp is not None:  # seeded by the secret and the steps so far: never the same noise twice
            dp_generators = tuple(
                torch.Generator().manual_seed(round_seed(self.dp.noise_seed, self.dp.steps, stream)) for stream in (8, 9)
            )
        algo = self.algorithm
        align_weight = self.spec["align_weight"] if algo.uses_bank and algo.align else 0.0
        mu = self.spec["prox_mu"]
        regularizer = (lambda: proximal_term(model.named_parameters(), anchor, mu)) if algo.proximal else None
        after_backward = augment = batch_term = None
        loader = self.round_loader(round_num, stream=0)
        if self.rule is not None:  # the registry refuses a rule combined with proximal hooks
            steps = len(loader) if self.dp is None else self.dp.steps_per_epoch
            self.rule.begin_round(self, round_num, server_extras)
            hooks = self.rule.start_round(model, anchor, steps, self.config.local_epochs)
            regularizer, after_backward = hooks.regularizer or regularizer, hooks.after_backward or after_backward
            augment, batch_term = hooks.augment, hooks.batch_term
        for epoch in range(self.config.local_epochs):
            if self.dp is not None:  # case-level DP-SGD; its generators are seeded from the site's secret
                stats = self.dp.train_epoch(model, optimizer, self.loss_fn, self.device, retriever, align_weight,
                                            dp_generators, regularizer, after_backward)
            else:
                stats = train_epoch(
                    model, loader, optimizer, self.loss_fn, self.device, retriever, align_weight,
                    self.logger, self.config.log_every, regularizer, augment, after_backward, batch_term,
                )
            self.logger.info("epoch %d/%d: %s", epoch + 1, self.config.local_epochs, _fmt(stats.means()))
        if self.dp is not None:
            stats.samples = self.dp.expected_samples(self.config.local_epochs)
        if self.rule is not None:
            self.rule.finish_round(model, anchor)
        return stats

    @torch.no_grad()
    def _summaries(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, float]:
        """Bank uploads from the current (received) model: ``(keys, values, counts, token_cos_within)``.

        Keys are k-means centroids of the training samples' spectral tokens, values their class-conditional
        tapped-feature means over the task's value map (:mod:`omnifm.knowledge.summaries`); never one
        image's data (clusters of fewer than ``min_prototype_count`` slices are dropped).
        """
        model = self.model
        dim = model.config.spectral_dim
        empty = torch.zeros(0, dim), None, torch.zeros(0, dtype=torch.long), math.nan
        if not self.algorithm.uses_bank or model.spectral_encoder is None or self.dp is not None:
            return empty  # DP mode: no bank upload (docs/PRIVACY.md says why)
        was_training = model.training
        model.eval()
        tokens, sums, masses = [], [], []
        for batch in torch.utils.data.DataLoader(self.dataset, batch_size=64, shuffle=False):
            image = batch["image"].to(self.device)
            tokens.append(model.spectral_token(image).cpu())
            if model.value_dim:
                value_map = self.task.value_map(batch)
                class_sum, mass = class_sums(model.bottleneck_features(image).cpu(), value_map, self.task.value_classes)
                sums.append(class_sum)
                masses.append(mass)
        model.train(was_training)
        tokens_all = torch.cat(tokens)
        cos = mean_pairwise_cosine(tokens_all)
        args = (self.spec["num_prototypes"], self.config.min_prototype_count, self.config.seed)
        if not model.value_dim:
            keys, counts = summarize_tokens(tokens_all, args[0], min_count=args[1], seed=args[2])
            return keys, None, counts, cos
        keys, values, counts = summarize_entries(tokens_all, torch.cat(sums), torch.cat(masses), *args)
        return keys, values, counts, cos

    def _diagnostics(
        self, bank: KnowledgeBank | None, retriever: Retriever | None, token_cos: float, round_num: int
    ) -> dict[str, float]:
        """The mechanism's measurements for this round (see :mod:`omnifm.engine.diagnostics`).

        The task's input ablations are measured for every algorithm, with the model this site uses.
        """
        model = self.personal_model if self.personal_model is not None else self.model
        ablations = ablation_effect(model, self.val_volumes, self.device, self._retriever(bank, seed=EVAL_SEED), self.task)
        if retriever is None:
            return ablations
        out = {} if math.isnan(token_cos) else {"token_cos_within": token_cos}
        out.update(retrieval_stats(bank, retriever.retrieved_ids, self.site))
        if bank is not None and len(bank) and self.val_volumes:
            real = self._retriever(bank, seed=EVAL_SEED)
            fake = self._retriever(bank, mode="random", seed=round_seed(self.config.seed, round_num, 6))
            out.update(placebo_effect(self.model, self.val_volumes, self.device, real, fake, self.task))
        return {**out, **ablations}

def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in values.items())
