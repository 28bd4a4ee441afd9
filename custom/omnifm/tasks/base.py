"""The task protocol: everything the federated pipeline needs to know about one kind of task.

The engine (:class:`~omnifm.engine.SiteTrainer`, training, evaluation, diagnostics), the OmniFM
wrapper and the FLARE components never look inside a task. A task says

- how a site's loaded cases become training samples (:meth:`Task.dataset`) and evaluation inputs
  (:meth:`Task.case_inputs`),
- which network it trains, where OmniFM taps it and which modules are the personal head
  (:meth:`Task.build_network`, through a :class:`~omnifm.models.tap.NetworkAdapter`),
- its loss, its metrics and the headline metric (:attr:`Task.headline`),
- which per-sample class map the knowledge bank's class-conditional values are built from
  (:meth:`Task.value_map`, :attr:`Task.value_classes`),
- which label classes a site's label volumes must map to (:attr:`Task.label_classes`, checked by
  the integrity gate) and whether DP-SGD covers it.

A case, as every task receives it, is ``{"image": float32 (C, H, W, D), "label": uint8 (1, H, W, D)}``
(the label volume holds :attr:`Task.label_classes` indices). Adding a task is one folder under
``omnifm/tasks/``, one line in :data:`omnifm.tasks.TASKS` and one job folder (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

Case = dict[str, np.ndarray]


class Task(ABC):
    """One task of the pipeline (see the module docstring). Subclasses are frozen dataclasses."""

    name: ClassVar[str]
    headline: ClassVar[str]  # the metric key model selection, summaries and the benchmark rank by
    supports_dp: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_dict(cls, spec: dict[str, Any]) -> Task:
        """The task a run spec's ``task`` entry describes (``kind`` already resolved)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, ``{"kind": <name>, ...}``; ``from_dict(to_dict())`` is equal."""

    @property
    @abstractmethod
    def label_classes(self) -> tuple[str, ...]:
        """Class names a site's label volumes are mapped to (``label_map``; index 0 = background)."""

    @property
    def per_case_classes(self) -> tuple[str, ...] | None:
        """Class names a datalist entry's ``"class"`` field must name (or index), checked by the integrity
        gate; the loaded case then carries ``"class"`` (its index) and needs no label volume. None (the
        default): the task reads no per-case class."""
        return None

    @property
    @abstractmethod
    def value_classes(self) -> int:
        """Classes ``C`` of the knowledge bank's class-conditional values (0: keys-only bank)."""

    @abstractmethod
    def check_model(self, model: dict[str, Any]) -> dict[str, Any]:
        """Validated model arguments with the task's fixed ones filled in.

        Raises:
            ValueError: an argument contradicts the task (naming it).
        """

    @abstractmethod
    def build_network(self, model: dict[str, Any], omnifm: dict[str, Any], affine_norm: bool = False) -> nn.Module:
        """The task network wrapped as :class:`~omnifm.models.OmniFM` (``affine_norm``: FedBN's norm layers)."""

    @abstractmethod
    def dataset(self, cases: list[Case], keep_empty_fraction: float, seed: int, site: str = "") -> Dataset:
        """Training samples ``{"image": (C, H, W), "label": the loss's target}`` of site ``site``'s cases."""

    @abstractmethod
    def value_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Integer class map ``(B, 1, H, W)`` of a training batch, for the bank's class-conditional values."""

    @abstractmethod
    def loss(self) -> nn.Module:
        """``loss(logits, batch["label"])`` -> scalar."""

    @abstractmethod
    def case_inputs(self, model: nn.Module, case: Case) -> torch.Tensor:
        """``model``'s input batch for evaluating one case (e.g. its axial slices ``(D, C, H, W)``)."""

    @abstractmethod
    def reduce(self, model: nn.Module, logits: torch.Tensor, case: Case) -> Any:
        """A compact prediction of one case from the model's logits on :meth:`case_inputs`."""

    @abstractmethod
    def score(self, predictions: list[Any], cases: list[Case]) -> dict[str, float]:
        """Metrics over cases: ``{headline: ..., <other metrics>..., "cases": n}`` (NaN where undefined)."""

    @abstractmethod
    def describe(self, scores: dict[str, float]) -> str:
        """One log line of :meth:`score`'s result, e.g. ``Dice 0.612 (WT 0.801 / ...), 6 cases``."""

    @property
    def input_slots(self) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
        """A multi-modality model's image slots ``((slot, modalities it takes), ...)``; None: one image per case.

        With slots, each case arrives as ``{"image": (S, H, W, D), "present": uint8 (S,), "label"}``
        (:mod:`omnifm.data.slots`): an absent slot's channel is zero and ``present`` says so; the
        task's model must mask it.
        """
        return None

    def ablations(self) -> dict[str, Callable[[Case], Case | None]]:
        """Input ablations measured every round (``ablate_<name>_<headline>_delta``, :mod:`omnifm.engine.diagnostics`).

        Each maps a case to the same case with one input removed, or None when the case has nothing to
        remove. Default: none.
        """
        return {}

    def figure(self, cases: list[Case], predict: Callable[[Case], Any], title: str = "") -> bytes | None:
        """A PNG of the final model on ``cases`` (``predict(case)``: :meth:`reduce`'s output), or None.

        The executor sends it with the final evaluation and the server's job summary writes it next to
        the results (``cross_site_val/<site>_<task>_<split>.png``). Default: no picture.
        """
        return None

    def metric_names(self, scores: dict[str, float]) -> list[str]:
        """The score keys that are metrics (reported per round as ``<name>_global`` / ``<name>_local``)."""
        return [k for k in scores if k != "cases"]


def model_args(model: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """A network builder's arguments: ``model`` over ``defaults``, refusing keys ``defaults`` lacks.

    Examples::

        >>> model_args({"width": 8}, {"width": 4, "depth": 2})
        {'width': 8, 'depth': 2}
    """
    cfg = {**defaults, **(model or {})}
    unknown = set(cfg) - set(defaults)
    if unknown:
        raise ValueError(f"unknown model keys {sorted(unknown)}; allowed: {sorted(defaults)}")
    return cfg


def fixed_out_channels(model: dict[str, Any], count: int, follows: str) -> dict[str, Any]:
    """``model`` with ``out_channels`` set to ``count``, the number of the task's ``follows`` (e.g. classes).

    Raises:
        ValueError: ``out_channels`` is given and differs, naming what it follows.

    Examples::

        >>> fixed_out_channels({}, 3, "classes")["out_channels"]
        3
    """
    model = dict(model)
    if model.setdefault("out_channels", count) != count:
        raise ValueError(f"model.out_channels is {model['out_channels']} but the task has {count} {follows}; "
                         f"drop out_channels, it follows the {follows}")
    return model


def model_kind(
    model: dict[str, Any], task: str, kinds: tuple[str, ...], multi_input: str,
    inputs: tuple[tuple[str, tuple[str, ...]], ...] | None, example: str,
) -> tuple[dict[str, Any], str]:
    """``(model, kind)``: the model arguments with the ``name`` alias turned into ``kind``, and the kind.

    ``kinds[0]`` is the default; ``multi_input`` is the kind that reads the task's input slots, and
    it goes together with them (each is refused without the other, with a message naming
    ``example``, the slots the task would take).

    Raises:
        ValueError: an unknown kind, or a kind and ``inputs`` that do not go together.

    Examples::

        >>> model_kind({"name": "b"}, "demo", ("a", "b"), "b", (("x", ("ct",)),), "")
        ({'kind': 'b'}, 'b')
    """
    model = dict(model)
    if "name" in model:  # the alias (FLARE job configs use "kind": a dict with "name" is a class to build)
        model.setdefault("kind", model.pop("name"))
    kind = model.get("kind", kinds[0])
    if kind not in kinds:
        raise ValueError(f"unknown {task} model {kind!r}; choose one of {list(kinds)}")
    if (kind == multi_input) != (inputs is not None):
        raise ValueError(f"model {kind!r} " + (f"needs the task's \"inputs\" slots, e.g. {example}" if inputs is None else
                         f'reads one image: drop the task\'s "inputs" or use model "{multi_input}"'))
    return model, kind
