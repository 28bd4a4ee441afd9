"""Case-level differential privacy for a site's local training (DP-SGD with an Opacus accountant).

**Unit of privacy: one training case** (a patient's volume), not a slice. The site's loader
serves 2D slices, and one patient contributes many; a slice-level guarantee would let a
patient's many slices add up. So the DP path samples *cases*: every step, each training case
is included independently with probability ``q = cases_per_step / n_cases`` (Poisson sampling,
which the accountant's subsampling amplification assumes); an included case contributes
``slices_per_case`` of its own slices (drawn with replacement from the case's tumour slices and a
``keep_empty_fraction`` of its empty ones, chosen from that case alone); its gradient (the
objective over those slices) is clipped to L2 norm ``max_grad_norm`` over *all* trainable
parameters; the clipped sums get Gaussian noise ``N(0, (sigma * max_grad_norm)^2)`` and are
divided by the expected batch ``q * n_cases``. A neighbouring dataset adds or removes one case,
which changes the noised sum by at most ``max_grad_norm``: the standard DP-SGD guarantee, at case
level. Per-case gradients are computed by one backward per included case ("microbatches"),
which works with any network (OmniFM's bottleneck closure, the fusion transformer) without
Opacus's module rewriting.

Accounting: Opacus's RDP (default) or PRV accountant over ``(sigma, q, steps)``; the history is
three numbers kept in the site's personal state (``dp/...``), so a rebuilt trainer continues the
count. With ``target_epsilon`` alone, sigma is calibrated (Opacus ``get_noise_multiplier``) so the
job's ``num_rounds * local_epochs * steps_per_epoch`` steps spend exactly that budget; with
``noise_multiplier`` given, sigma is fixed and ``target_epsilon`` (optional) is a budget: a round
that would exceed it is refused (:class:`DPBudgetExhausted`) before any training.

Noise and sampling come from a secret seed drawn from the OS at trainer construction and kept in
the personal state (it never leaves the site): anyone who knew it could subtract the noise.
``noise_seed`` fixes it for tests and benchmarks only (logged as a warning).

What DP mode also changes (see docs/PRIVACY.md): the knowledge-bank upload (prototype keys,
class-conditional values, member counts), retrieval counts and training-token diagnostics are
not sent, nor are the training losses (kept in the site log); ``n_samples`` is the expected (not
the realised) number of slices. Algorithms whose
network or rule releases un-noised training statistics are refused (:func:`refusal`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from omnifm.engine.train import EpochStats, batch_loss

__all__ = [
    "ACCOUNTANTS", "DP_PREFIX", "VALIDATION_DIAGNOSTICS", "CaseSampler", "DPBudgetExhausted", "DPConfig",
    "SitePrivacy", "clip_and_noise", "epsilon_spent", "refusal", "released_under_dp",
]

DP_PREFIX = "dp/"
ACCOUNTANTS = ("rdp", "prv")
_STATE_KEYS = ("noise_multiplier", "sample_rate", "steps", "noise_seed")


class DPBudgetExhausted(RuntimeError):
    """A round would spend more than the site's ``target_epsilon``: the site stops training."""


@dataclass(frozen=True)
class DPConfig:
    """A site's DP-SGD settings (``TrainConfig.dp``; executor arg ``dp``).

    Args:
        target_epsilon: the privacy budget. Alone: sigma is calibrated to spend it over the job's
            rounds. With ``noise_multiplier``: rounds that would exceed it are refused.
        noise_multiplier: sigma (noise std / clipping norm); None: calibrate from ``target_epsilon``.
        max_grad_norm: per-case gradient clipping norm ``C``.
        delta: the delta of (epsilon, delta)-DP; must be below 1 / number of training cases.
        cases_per_step: expected cases per step (``q = cases_per_step / n_cases``).
        slices_per_case: slices one included case contributes to a step.
        accountant: ``rdp`` or ``prv`` (Opacus accountants).
        noise_seed: fix the secret noise/sampling seed (tests, benchmarks: NOT private against
            anyone who knows it); None: drawn from the OS and kept in the personal state.

    Examples::

        >>> DPConfig(target_epsilon=8.0).max_grad_norm
        1.0
    """

    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    cases_per_step: int = 4
    slices_per_case: int = 4
    accountant: str = "rdp"
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError("dp needs target_epsilon or noise_multiplier (or set dp to null for no DP)")
        for name in ("target_epsilon", "noise_multiplier", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"dp.{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise ValueError(f"dp.delta must be in (0, 1), got {self.delta!r}")
        for name in ("cases_per_step", "slices_per_case"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"dp.{name} must be an int >= 1, got {value!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"dp.accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.noise_seed is not None and (not isinstance(self.noise_seed, int) or self.noise_seed < 0):
            raise ValueError(f"dp.noise_seed must be an int >= 0 or null, got {self.noise_seed!r}")

    @classmethod
    def from_value(cls, value: DPConfig | dict[str, Any] | None) -> DPConfig | None:
        """``None`` (no DP), a :class:`DPConfig`, or a dict of its fields (unknown keys are named)."""
        if value is None or isinstance(value, DPConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"dp must be a dict of {[f.name for f in fields(cls)]} or null, got {type(value).__name__}")
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown dp settings {sorted(unknown)}; choose from {[f.name for f in fields(cls)]}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refusal(algorithm: Any, model: nn.Module) -> str | None:
    """Why ``algorithm`` cannot train under case-level DP-SGD (None: it can)."""
    if getattr(algorithm, "rule", "") == "ditto":
        return (f"algorithm {algorithm.name!r} trains a personal model without DP next to the global one and "
                "reports its validation Dice, a function of the training cases that DP-SGD would not cover")
    if getattr(algorithm, "rule", "") == "moon":
        return (f"algorithm {algorithm.name!r} adds a model-contrastive term of the training images to every step; "
                "the DP path adds an algorithm's terms after clipping, which covers only terms of the weights alone")
    if getattr(algorithm, "rule", "") == "feddg":
        return (f"algorithm {algorithm.name!r} uploads group-mean amplitude spectra of the training slices "
                "(FedDG's amplitude bank) without noise; DP-SGD would not cover them")
    stats = [n for n, m in model.named_modules() if getattr(m, "track_running_stats", False)]
    if stats:
        return (f"algorithm {algorithm.name!r} uses normalisation layers with running statistics ({stats[0]}, ...): "
                "they are updated from raw batches without clipping or noise, and per-case gradients of "
                "batch-normalised slices are not per-case; use an instance-norm algorithm (fedavg, fedper, ...)")
    if not getattr(algorithm, "federated", True):
        return f"algorithm {algorithm.name!r} is not a federation (pooled data); site DP does not apply"
    return None


# diagnostics computed from the validation cases (DP covers the training cases; see docs/PRIVACY.md)
VALIDATION_DIAGNOSTICS = ("placebo_dice_delta", "placebo_logit_rel")


def released_under_dp(diagnostics: dict[str, float]) -> dict[str, float]:
    """The diagnostics a DP site still sends: those of the validation cases only (the training-retrieval
    statistics and token cosines are functions of the training cases, not privatised)."""
    return {k: v for k, v in diagnostics.items() if k in VALIDATION_DIAGNOSTICS}


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """epsilon after ``steps`` Poisson-subsampled Gaussian steps (Opacus accountant; 0 for no steps).

    Examples::

        >>> round(epsilon_spent(1.0, 0.01, 1000, 1e-5), 2)  # Opacus 1.6 RDP
        2.1
    """
    if steps <= 0:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))


def clip_and_noise(
    per_case: list[list[torch.Tensor]], max_grad_norm: float, noise_std: float, expected_batch: float,
    generator: torch.Generator,
) -> tuple[list[torch.Tensor], list[float]]:
    """DP-SGD aggregation: clip each case's gradient (all tensors jointly) to ``max_grad_norm``,
    sum, add ``N(0, noise_std^2)`` per coordinate, divide by ``expected_batch``.

    Args:
        per_case: for each case, its gradient as a list of tensors (one per parameter).
        max_grad_norm: clipping norm ``C``.
        noise_std: ``sigma * C``.
        expected_batch: ``q * n_cases`` (fixed, so the number of included cases is not revealed).
        generator: the secret noise generator (CPU).

    Returns:
        the privatised gradient (one tensor per parameter) and each case's norm before clipping.
    """
    if not per_case:
        raise ValueError("clip_and_noise needs the parameter shapes: pass at least one (possibly zero) gradient")
    total = [torch.zeros_like(g) for g in per_case[0]]
    norms = []
    for grads in per_case:
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        factor = min(1.0, max_grad_norm / (norm + 1e-12))
        for acc, g in zip(total, grads):
            acc.add_(g, alpha=factor)
        norms.append(norm)
    out = []
    for acc in total:
        noise = torch.normal(0.0, noise_std, size=acc.shape, generator=generator) if noise_std > 0 else 0.0
        out.append((acc + torch.as_tensor(noise).to(acc.device)) / expected_batch)
    return out, norms


class CaseSampler:
    """Per-case slice candidates and Poisson case sampling (the DP unit is the case).

    Args:
        volumes: the training cases ``{"image": (C,H,W,D), "label": (1,H,W,D)}``.
        keep_empty_fraction: share of a case's tumour-free slices that are candidates (per case).
        seed: the selection seed (a function of the case alone: case ``i`` uses ``(seed, i)``).
    """

    def __init__(self, volumes: list[dict[str, np.ndarray]], keep_empty_fraction: float, seed: int) -> None:
        self.images = [torch.as_tensor(np.asarray(v["image"], dtype=np.float32)) for v in volumes]
        self.labels = [torch.as_tensor(np.asarray(v["label"], dtype=np.float32)) for v in volumes]
        self.candidates = []
        for i, label in enumerate(self.labels):
            tumour = label.flatten(0, 2).amax(dim=0) > 0
            full = [z for z, t in enumerate(tumour.tolist()) if t]
            empty = [z for z, t in enumerate(tumour.tolist()) if not t]
            picked = np.random.default_rng([seed, i]).permutation(len(empty))[: round(keep_empty_fraction * len(empty))]
            chosen = sorted(full + [empty[j] for j in picked])
            self.candidates.append(chosen or list(range(label.shape[-1])))

    @property
    def n_cases(self) -> int:
        return len(self.images)

    def sample_cases(self, sample_rate: float, generator: torch.Generator) -> list[int]:
        """Each case independently with probability ``sample_rate`` (Poisson sampling)."""
        return torch.nonzero(torch.rand(self.n_cases, generator=generator) < sample_rate).flatten().tolist()

    def batch(self, case: int, slices: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``slices`` slices of one case (with replacement): image (m, C, H, W), label (m, 1, H, W)."""
        options = self.candidates[case]
        picks = torch.randint(len(options), (slices,), generator=generator).tolist()
        zs = [options[p] for p in picks]
        return (torch.stack([self.images[case][..., z] for z in zs]),
                torch.stack([self.labels[case][..., z] for z in zs]))


class SitePrivacy:
    """A site's DP machinery: sampler, accountant state, budget, the DP-SGD epoch.

    Args:
        config: the DP settings.
        volumes: the training cases.
        keep_empty_fraction: see :class:`CaseSampler`.
        seed: the site's training seed (slice candidates).
        logger: where the per-round privacy line goes.

    Raises:
        ValueError: ``delta >= 1 / n_cases`` (a mechanism that may publish one case in the clear
            with probability delta protects nobody at that size).
    """

    def __init__(
        self, config: DPConfig, volumes: list[dict[str, np.ndarray]], keep_empty_fraction: float, seed: int,
        logger: logging.Logger | None = None,
    ) -> None:
        try:
            import opacus  # noqa: F401  (the accountants)
        except ImportError as err:
            raise ValueError("dp is set but opacus is not installed: pip install -e \".[dp]\" (opacus>=1.6)") from err
        self.config = config
        self.logger = logger or logging.getLogger(__name__)
        self.sampler = CaseSampler(volumes, keep_empty_fraction, seed)
        n = self.sampler.n_cases
        if config.delta >= 1.0 / n:
            raise ValueError(f"dp.delta={config.delta} must be below 1 / number of training cases = 1/{n} = {1 / n:.3g}")
        self.sample_rate = min(1.0, config.cases_per_step / n)
        self.expected_batch = self.sample_rate * n
        self.steps_per_epoch = max(1, round(n / config.cases_per_step))
        self.noise_multiplier = float(config.noise_multiplier or 0.0)  # 0: not calibrated yet
        self.steps = 0
        if config.noise_seed is None:
            self.noise_seed = int.from_bytes(os.urandom(8), "little") >> 2
        else:
            self.noise_seed = int(config.noise_seed)
            self.logger.warning("DP noise seed fixed by dp.noise_seed: reproducible, NOT private against anyone who knows it")

    # ---- personal state ------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """``{"noise_multiplier", "sample_rate", "steps", "noise_seed"}`` (fixed shapes: scalars)."""
        return {
            "noise_multiplier": torch.tensor(self.noise_multiplier, dtype=torch.float64),
            "sample_rate": torch.tensor(self.sample_rate, dtype=torch.float64),
            "steps": torch.tensor(self.steps, dtype=torch.int64),
            "noise_seed": torch.tensor(self.noise_seed, dtype=torch.int64),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state`; refuses a saved history whose sampling rate or sigma differs from this config."""
        missing = set(_STATE_KEYS) - set(state)
        if missing:
            raise ValueError(f"DP personal state lacks {sorted(missing)}")
        rate, sigma = float(state["sample_rate"]), float(state["noise_multiplier"])
        if int(state["steps"]) > 0 and not math.isclose(rate, self.sample_rate, rel_tol=1e-9):
            raise ValueError(f"the saved DP history used sampling rate {rate}, this site's settings give "
                             f"{self.sample_rate} (cases_per_step or the number of cases changed): the accountant "
                             "cannot compose them; keep the settings or start a new job with a new budget")
        if self.config.noise_multiplier is not None and sigma > 0 and not math.isclose(sigma, self.noise_multiplier):
            raise ValueError(f"the saved DP history used noise multiplier {sigma}, dp.noise_multiplier is "
                             f"{self.noise_multiplier}; keep it or start a new job with a new budget")
        self.noise_multiplier, self.steps = sigma, int(state["steps"])
        self.noise_seed = int(state["noise_seed"])

    # ---- accounting ----------------------------------------------------------------------
    def epsilon(self, steps: int | None = None) -> float:
        """epsilon spent after ``steps`` (default: the steps taken so far) at the configured delta."""
        steps = self.steps if steps is None else steps
        if steps and self.noise_multiplier <= 0:
            raise RuntimeError("the noise multiplier is not calibrated yet")
        return epsilon_spent(self.noise_multiplier, self.sample_rate, steps, self.config.delta, self.config.accountant)

    def round_steps(self, local_epochs: int) -> int:
        return local_epochs * self.steps_per_epoch

    def prepare_round(self, local_epochs: int, num_rounds: int | None) -> None:
        """Calibrate sigma (first round, ``target_epsilon`` alone) and refuse a round over budget.

        Raises:
            ValueError: ``target_epsilon`` alone without the job's number of rounds.
            DPBudgetExhausted: this round's steps would exceed ``target_epsilon``.
        """
        cfg, steps = self.config, self.round_steps(local_epochs)
        if self.noise_multiplier <= 0:
            if not num_rounds:
                raise ValueError("dp.target_epsilon without dp.noise_multiplier needs the job's number of rounds "
                                 "(FLARE's NUM_ROUNDS header) to calibrate sigma; give dp.noise_multiplier instead")
            from opacus.accountants.utils import get_noise_multiplier

            self.noise_multiplier = float(get_noise_multiplier(
                target_epsilon=cfg.target_epsilon, target_delta=cfg.delta, sample_rate=self.sample_rate,
                steps=num_rounds * steps, accountant=cfg.accountant, epsilon_tolerance=0.01,
            ))
            self.logger.info("DP: sigma %.4f calibrated so that %d rounds x %d steps spend epsilon %.3g (delta %.3g)",
                             self.noise_multiplier, num_rounds, steps, cfg.target_epsilon, cfg.delta)
        if cfg.target_epsilon is not None:
            after = self.epsilon(self.steps + steps)
            if after > cfg.target_epsilon * (1 + 1e-9):
                raise DPBudgetExhausted(
                    f"DP budget exhausted: epsilon spent {self.epsilon():.3f} after {self.steps} steps; this round's "
                    f"{steps} steps would reach {after:.3f} > target_epsilon {cfg.target_epsilon} (delta "
                    f"{cfg.delta}); the site stops training"
                )

    def metrics(self) -> dict[str, float]:
        """What every round reports (site log, TensorBoard, server metrics, benchmark JSON)."""
        return {
            "dp_epsilon": self.epsilon(),
            "dp_delta": float(self.config.delta),
            "dp_noise_multiplier": self.noise_multiplier,
            "dp_max_grad_norm": float(self.config.max_grad_norm),
            "dp_sample_rate": self.sample_rate,
            "dp_steps": float(self.steps),
        }

    def expected_samples(self, local_epochs: int) -> int:
        """The ``n_samples`` a DP round reports: expected slices, not the realised (data-dependent) count."""
        return max(1, round(self.round_steps(local_epochs) * self.expected_batch * self.config.slices_per_case))

    # ---- training ------------------------------------------------------------------------
    def train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        device: torch.device,
        retriever: Any,
        align_weight: float,
        generators: tuple[torch.Generator, torch.Generator],
        regularizer: Callable[[], torch.Tensor] | None = None,
        after_backward: Callable[[nn.Module], None] | None = None,
    ) -> EpochStats:
        """One DP-SGD epoch (``steps_per_epoch`` steps); ``generators`` = (sampling, noise), both secret.

        ``regularizer`` (FedProx, FedDyn: a function of the received/private-derived weights, not
        of the data) and ``after_backward`` (SCAFFOLD, FedRep) act on the privatised gradient:
        post-processing, so the guarantee is unchanged.
        """
        model.train()
        stats = EpochStats()
        sampling, noise = generators
        cfg = self.config
        seen = 0
        for _ in range(self.steps_per_epoch):
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer.zero_grad(set_to_none=True)
            per_case = [[torch.zeros_like(p) for p in params]]  # a zero "case": shapes for an empty draw
            for case in self.sampler.sample_cases(self.sample_rate, sampling):
                image, label = self.sampler.batch(case, cfg.slices_per_case, sampling)
                image, label = image.to(device), label.to(device)
                loss, task, align, _, retrieved = batch_loss(model, image, label, loss_fn, retriever, align_weight)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                per_case.append([torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)])
                if retrieved is not None:
                    retriever.record(retrieved)
                stats.loss += float(loss.detach())
                stats.task_loss += float(task.detach())
                stats.align_loss += float(align.detach())
                stats.samples += image.shape[0]
            private, _ = clip_and_noise(per_case, cfg.max_grad_norm, self.noise_multiplier * cfg.max_grad_norm,
                                        self.expected_batch, noise)
            for p, g in zip(params, private):
                p.grad = g
            if regularizer is not None:
                regularizer().backward()
            if after_backward is not None:
                after_backward(model)
            optimizer.step()
            stats.steps += 1
            self.steps += 1
            seen += len(per_case) - 1
        scale = stats.steps / max(seen, 1)  # EpochStats.means() divides by steps: report per-case means
        stats.loss, stats.task_loss, stats.align_loss = (stats.loss * scale, stats.task_loss * scale,
                                                         stats.align_loss * scale)
        return stats

    def log_round(self, round_num: int) -> None:
        m = self.metrics()
        self.logger.info(
            "round %d DP (unit: case, %d cases): epsilon %.3f spent after %d steps (delta %.3g, %s), sigma %.4f, "
            "clip norm %.3g, sampling rate %.4f%s", round_num, self.sampler.n_cases, m["dp_epsilon"], self.steps,
            m["dp_delta"], self.config.accountant, m["dp_noise_multiplier"], m["dp_max_grad_norm"], m["dp_sample_rate"],
            "" if self.config.target_epsilon is None else f", budget {self.config.target_epsilon}",
        )
