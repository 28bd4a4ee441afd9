"""Multi-modal image fusion (paper section 4.5, Table 7): CT, PET or SPECT fused with MRI of the same anatomy.

Each site holds paired cases (one anatomy rendered, or acquired, in two modalities) in the task's
two input slots (:data:`FUSION_INPUTS`: slot 0 CT / PET / SPECT, slot 1 an MR sequence; a site
fills each slot with one of its modalities, :func:`omnifm.data.slots.assign_slots`). A case
without both sources is left out of training and evaluation and counted
(:mod:`omnifm.tasks.image_fusion.dataset`). Samples are the head slices of a case, each source in
``[0, 1]``; the network a DenseNet-style feature extractor over both sources, tapped by OmniFM at
its bottleneck, its reconstruction head personal (:mod:`omnifm.tasks.image_fusion.network`); the
loss U2Fusion's unsupervised SSIM + MSE to each source with information weights from the
sources' gradient energy (:mod:`omnifm.tasks.image_fusion.loss`, no pretrained VGG).

Metrics (:mod:`omnifm.tasks.image_fusion.metrics`): ``mi_a``, ``mi_b``, ``ssim_a``, ``ssim_b``,
``l1_a``, ``l1_b`` against each source, ``mi`` / ``ssim`` / ``l1`` their sum / mean / mean, and the
same three for the trivial fusions on the same slices: ``*_avg`` ((A + B) / 2) and ``*_max``
(pixel-wise maximum), and ``ssim_w``, SSIM to each source weighted by that source's information
weight (per-slice gradient-energy weights at ``tau`` = :data:`METRIC_TEMPERATURE`, whatever the loss
uses: a property of the sources, not of the model or its training).
**Headline: ``ssim_w``.** The unweighted mean SSIM asks a PET-MRI fusion to keep as much of a
blurred PET's structure as of the MRI's anatomy, which no fusion can (it is capped near the
average's value, and a network that follows the content weights scores below it); MI rewards
copying one source's histogram wholesale (max-selection, which keeps each source's intensities
unchanged where it is brighter, beats every blend on it); L1 is the same for every fusion lying
between the sources. ``ssim_w`` is bounded and comparable across sites, is higher-is-better as
model selection expects, and scores structure preserved from each source in proportion to how
much structure the source has (Piella and Heijmans' weighted fusion quality index is the same
idea). Every Table 7 metric is reported beside it, for the network and both baselines. The knowledge bank's values: super-resolution's air / head tissue / tumour classes.
DP-SGD: not supported (no case-level sampler for this task). :meth:`FusionTask.figure` draws the
site's picture (sources, fused, average) that the FLARE executor sends with the final results.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from omnifm.tasks.base import Case, Task, fixed_out_channels
from omnifm.tasks.image_fusion.dataset import FusionSliceDataset, case_sources, is_paired
from omnifm.tasks.image_fusion.loss import WEIGHTINGS
from omnifm.tasks.segmentation.task import BRATS_CLASSES
from omnifm.validation import check_range

LOG = logging.getLogger(__name__)
_FIELDS = ("kind", "inputs", "min_head_fraction", "mse_weight", "temperature", "weighting")
FUSION_INPUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("functional_or_ct", ("ct", "pet", "spect")), ("mri", ("t1", "t1ce", "t2", "flair")),
)
SUMMARY = ("ssim_w", "mi", "ssim", "l1")  # reported for the network and each baseline
NETWORK = (*SUMMARY, "mi_a", "mi_b", "ssim_a", "ssim_b", "l1_a", "l1_b")
BASELINE = tuple(f"{m}_{b}" for b in ("avg", "max") for m in SUMMARY)
COUNTS = ("cases", "unpaired")
FIGURE_CASES = 3  # rows of the picture
METRIC_TEMPERATURE = 2.0  # tau of ssim_w's per-slice weights, whatever the loss is configured with


@dataclass(frozen=True)
class FusionTask(Task):
    """Two-source image fusion of axial slices.

    Args:
        inputs: the two input slots ``((slot, modalities it takes), ...)`` (JSON: ``{"functional_or_ct":
            ["ct", "pet", "spect"], "mri": ["t1", ...]}``); slot 0 is source A, slot 1 source B.
        min_head_fraction: a slice is used when at least this fraction of it is head.
        mse_weight: ``alpha`` of the loss (U2Fusion's 20).
        temperature: ``tau`` of the loss's information weights (2: weights proportional to the square
            root of each source's gradient energy, so a smooth PET or SPECT still gets about a fifth).
        weighting: ``image`` (U2Fusion: one weight per source and slice) or ``pixel`` (per pixel, from
            the local gradient energy); :mod:`omnifm.tasks.image_fusion.loss`.

    ``keep_empty_fraction`` (a segmentation setting) has no meaning here and is ignored.

    Examples::

        >>> task = FusionTask()
        >>> task.headline, task.value_classes, [slot for slot, _ in task.input_slots]
        ('ssim_w', 5, ['functional_or_ct', 'mri'])
    """

    name: ClassVar[str] = "image_fusion"
    headline: ClassVar[str] = "ssim_w"

    inputs: tuple[tuple[str, tuple[str, ...]], ...] = FUSION_INPUTS
    min_head_fraction: float = 0.05
    mse_weight: float = 20.0
    temperature: float = 2.0
    weighting: str = "image"

    def __post_init__(self) -> None:
        from omnifm.data.slots import parse_slots

        object.__setattr__(self, "inputs", parse_slots(self.inputs))
        if len(self.inputs) != 2:
            raise ValueError(f"image fusion has two input slots (source A, source B); inputs has {len(self.inputs)}")
        check_range("min_head_fraction", self.min_head_fraction, 0, 1)
        check_range("mse_weight", self.mse_weight, 0)
        check_range("temperature", self.temperature, 0, low_open=True)
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {list(WEIGHTINGS)}, got {self.weighting!r}")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FusionTask:
        unknown = set(spec) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown image_fusion task keys {sorted(unknown)}; allowed: {list(_FIELDS[1:])}")
        return cls(**{k: v for k, v in spec.items() if k != "kind"})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "inputs": {slot: list(kinds) for slot, kinds in self.inputs},
                "min_head_fraction": self.min_head_fraction, "mse_weight": self.mse_weight,
                "temperature": self.temperature, "weighting": self.weighting}

    @property
    def input_slots(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return self.inputs

    @property
    def label_classes(self) -> tuple[str, ...]:
        return BRATS_CLASSES  # the tumour classes of the value map (super-resolution's)

    @property
    def value_classes(self) -> int:
        return len(self.label_classes) + 1  # air, head tissue, then each tumour class

    def check_model(self, model: dict[str, Any]) -> dict[str, Any]:
        model = dict(model)
        if model.setdefault("in_channels", 2) != 2:
            raise ValueError(f"model.in_channels is {model['in_channels']} but image fusion reads its 2 input "
                             "slots; drop in_channels")
        return fixed_out_channels(model, 1, "fused image")

    def build_network(self, model: dict[str, Any], omnifm: dict[str, Any], affine_norm: bool = False) -> nn.Module:
        from omnifm.tasks.image_fusion.network import build_fusion_net

        return build_fusion_net(model, {"value_classes": self.value_classes, **omnifm})  # no norm layers

    def dataset(self, cases: list[Case], keep_empty_fraction: float, seed: int, site: str = "") -> Dataset:
        """Every head slice of the paired cases (deterministic); unpaired cases left out and logged."""
        return FusionSliceDataset(cases, self.min_head_fraction, site)

    def value_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["classes"]

    def loss(self) -> nn.Module:
        from omnifm.tasks.image_fusion.loss import FusionLoss

        return FusionLoss(self.mse_weight, self.temperature, self.weighting)

    def sources(self, case: Case) -> torch.Tensor:
        """A paired case's sources ``(S, 2, H, W)``: its head slices in ``[0, 1]``."""
        return case_sources(case, self.min_head_fraction)[0]

    def case_inputs(self, model: nn.Module, case: Case) -> torch.Tensor:
        """The sources of a paired case; an unpaired case gives no input (it is not scored)."""
        if not is_paired(case):
            return torch.zeros(0, 2, *np.asarray(case["image"]).shape[1:3])
        return self.sources(case)

    def reduce(self, model: nn.Module, logits: torch.Tensor, case: Case) -> torch.Tensor | None:
        """The ``(S, 1, H, W)`` fused slices in ``[0, 1]``; None for an unpaired case."""
        if not is_paired(case):
            return None
        return logits.detach().float().clamp(0.0, 1.0).cpu()

    def score(self, predictions: list[Any], cases: list[Case]) -> dict[str, float]:
        from omnifm.tasks.image_fusion.loss import information_weights
        from omnifm.tasks.image_fusion.metrics import baselines, fusion_scores
        from omnifm.tasks.super_resolution.metrics import mean_scores

        per_case = []
        for fused, case in zip(predictions, cases):
            if fused is None or fused.shape[0] == 0:
                continue
            sources = self.sources(case)
            weights = information_weights(sources, METRIC_TEMPERATURE)  # the scoring weights: fixed, per slice
            scores = fusion_scores(fused, sources, weights)
            for kind, image in baselines(sources).items():
                trivial = fusion_scores(image, sources, weights)
                scores.update({f"{m}_{kind}": trivial[m] for m in SUMMARY})
            per_case.append(scores)
        unpaired = sum(not is_paired(c) for c in cases)
        return {**mean_scores(per_case, NETWORK + BASELINE), "cases": len(per_case), "unpaired": unpaired}

    def metric_names(self, scores: dict[str, float]) -> list[str]:
        return [k for k in scores if k not in COUNTS]

    def describe(self, scores: dict[str, float]) -> str:
        """``weighted SSIM 0.702 (average 0.690, max 0.650); SSIM 0.712 (A ... / B ...; ...), MI ..., L1 ..., 6 cases``."""
        left_out = f" ({scores['unpaired']} unpaired left out)" if scores.get("unpaired") else ""
        return (f"weighted SSIM {scores['ssim_w']:.3f} (average {scores['ssim_w_avg']:.3f}, max "
                f"{scores['ssim_w_max']:.3f}); SSIM {scores['ssim']:.3f} (A {scores['ssim_a']:.3f} / B {scores['ssim_b']:.3f}; average "
                f"{scores['ssim_avg']:.3f}, max {scores['ssim_max']:.3f}), MI {scores['mi']:.3f} bits (average "
                f"{scores['mi_avg']:.3f}, max {scores['mi_max']:.3f}), L1 {scores['l1']:.4f} (average "
                f"{scores['l1_avg']:.4f}, max {scores['l1_max']:.4f}), {scores['cases']} cases{left_out}")

    def figure(self, cases: list[Case], predict: Callable[[Case], Any], title: str = "") -> bytes | None:
        """A PNG grid of up to :data:`FIGURE_CASES` paired cases' middle slices: source A, source B, fused, average.

        ``predict(case)`` is the model's :meth:`reduce` output for one case. None (and a warning)
        when matplotlib is not installed or no case is paired.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot as plt
        except ImportError:
            LOG.warning("matplotlib is not installed: no fusion picture (pip install matplotlib, or the dev extra)")
            return None
        paired = [c for c in cases if is_paired(c)][:FIGURE_CASES]
        if not paired:
            return None
        names = [slot for slot, _ in self.inputs]
        columns = (f"A: {names[0]}", f"B: {names[1]}", "fused (network)", "average (A+B)/2")
        fig, axes = plt.subplots(len(paired), 4, figsize=(8, 2.1 * len(paired) + 0.4), squeeze=False)
        for row, case in enumerate(paired):
            sources, fused = self.sources(case), predict(case)
            z = sources.shape[0] // 2
            images = (sources[z, 0], sources[z, 1], fused[z, 0], sources[z].mean(dim=0))
            for col, image in enumerate(images):
                ax = axes[row, col]
                ax.imshow(image.numpy().T, cmap="gray", vmin=0, vmax=1, origin="lower")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(columns[col], fontsize=8)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        return buffer.getvalue()
