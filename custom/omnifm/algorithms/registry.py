"""Federated algorithms: which modules a site runs and which parameters it keeps to itself.

Every algorithm uses the same FLARE components and the same data; the rules that differ live
here. Baselines (FedProx, FedPer, Ditto, ...) are added to :data:`ALGORITHMS` by later issues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from torch import nn


@dataclass(frozen=True)
class Algorithm:
    """One algorithm's client-side rule.

    Args:
        name: registry key.
        modules: :class:`~omnifm.models.OmniFMConfig` switches this algorithm forces.
        uses_bank: sites retrieve from and contribute to the global spectral knowledge bank.
        personal_head: the task head and suffix prompts stay on the site (never sent, never overwritten).
        proximal: add FedProx's ``prox_mu / 2 * ||w - w_global||^2`` over the shared weights.
        description: one line for logs and docs.
    """

    name: str
    modules: dict[str, bool] = field(default_factory=dict)
    uses_bank: bool = False
    personal_head: bool = False
    proximal: bool = False
    description: str = ""

    def shared_parameter_names(self, model: nn.Module) -> list[str]:
        """Parameter names that are exchanged with the server, in ``model`` order."""
        personal = model.personal_parameter_names() if self.personal_head else set()
        return [name for name, _ in model.named_parameters() if name not in personal]


_PLAIN = {"spectral": False, "eca": False, "prompting": False}

ALGORITHMS: dict[str, Algorithm] = {
    "omnifm": Algorithm(
        "omnifm",
        modules={"spectral": True, "eca": True, "prompting": True},
        uses_bank=True,
        personal_head=True,
        description="OmniFM: spectral retrieval + ECA + prefix-suffix prompting + SPAlign, personal head",
    ),
    "fedavg": Algorithm(
        "fedavg",
        modules=_PLAIN,
        description="FedAvg: the plain network, every parameter averaged",
    ),
    "fedprox": Algorithm(
        "fedprox",
        modules=_PLAIN,
        proximal=True,
        description="FedProx: FedAvg with a proximal term pulling local weights to the global ones",
    ),
    "fedper": Algorithm(
        "fedper",
        modules=_PLAIN,
        personal_head=True,
        description="FedPer: the plain network, encoder averaged, decoder (task head) kept on the site",
    ),
}


def get_algorithm(name: str) -> Algorithm:
    """Look an algorithm up by name; the error lists the valid names."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]

