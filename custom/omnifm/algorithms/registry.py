"""Federated algorithms: which modules a site runs, what it keeps to itself and which extra rules apply.

Every algorithm uses the same FLARE components, the same data and the same round protocol
(:mod:`omnifm.algorithms.server`); the rules that differ are the fields of :class:`Algorithm`,
selected by the one ``algorithm`` job argument. The site side of each rule lives in
:class:`omnifm.engine.SiteTrainer`, the server side in :func:`omnifm.algorithms.server_round`;
a strategy that needs more than these switches is one file of this package holding its whole
rule (``fedrep.py``, ``feddyn.py``), named by ``Algorithm.rule`` (see :mod:`omnifm.algorithms.rule`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from omnifm.algorithms.rule import RULES

PERSONAL_PARTS = ("head", "norm", "all")
RETRIEVALS = ("topk", "mean", "random")


@dataclass(frozen=True)
class Algorithm:
    """One algorithm's rules.

    Args:
        name: registry key.
        modules: :class:`~omnifm.models.OmniFMConfig` switches this algorithm forces.
        uses_bank: sites retrieve from and contribute to the global spectral knowledge bank.
        personal: parameter groups that stay on the site (never sent, never overwritten):
            ``head`` (decoder + suffix prompts), ``norm`` (normalisation layers' affine
            parameters), ``all`` (nothing is shared). Buffers (e.g. BatchNorm running statistics)
            are always personal.
        proximal: FedProx's ``prox_mu / 2 * ||w - w_global||^2`` over the shared weights.
        retrieval: ``topk`` (cosine top-k from the bank), ``mean`` (the bank mean for every image) or
            ``random`` (the placebo control: top-k, then the retrieved keys and values replaced by noise).
        align: add the spectral-proximal alignment loss (``align_weight``).
        affine_norm: the network needs normalisation layers with affine parameters (a non-affine
            ``instance`` norm becomes ``batch``).
        federated: False for references that are not a federation (``central``): FLARE refuses them.
        rule: the strategy file holding the rest of the rule (``fedrep``, ``feddyn``, ``scaffold``,
            ``ditto``, ``feddg``, ``moon``; see :mod:`omnifm.algorithms.rule`), or ``""``. It cannot be combined with
            ``proximal`` (they use the same training hooks).
        description: one line for logs and docs.
    """

    name: str
    modules: dict[str, bool] = field(default_factory=dict)
    uses_bank: bool = False
    personal: frozenset[str] = frozenset()
    proximal: bool = False
    retrieval: str = "topk"
    align: bool = True
    affine_norm: bool = False
    federated: bool = True
    rule: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.personal) - set(PERSONAL_PARTS)
        if unknown:
            raise ValueError(f"unknown personal parts {sorted(unknown)}; choose from {PERSONAL_PARTS}")
        if self.retrieval not in RETRIEVALS:
            raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {self.retrieval!r}")
        if self.rule not in ("", *RULES):
            raise ValueError(f"rule must be one of {RULES} or '', got {self.rule!r}")
        if self.rule and self.proximal:
            raise ValueError(f"rule {self.rule!r} cannot be combined with proximal")

    def personal_parameter_names(self, model: nn.Module) -> set[str]:
        """Names of the parameters that never leave the site."""
        if "all" in self.personal:
            return {name for name, _ in model.named_parameters()}
        names: set[str] = set()
        if "head" in self.personal:
            names |= model.personal_parameter_names()
        if "norm" in self.personal:
            names |= norm_parameter_names(model)
        return names

    def shared_parameter_names(self, model: nn.Module) -> list[str]:
        """Parameter names that are exchanged with the server, in ``model`` order."""
        personal = self.personal_parameter_names(model)
        return [name for name, _ in model.named_parameters() if name not in personal]


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Parameters of BatchNorm/InstanceNorm layers (LayerNorm of the fusion layer excluded)."""
    return {
        f"{module_name}.{param_name}"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._NormBase)
        for param_name, _ in module.named_parameters(recurse=False)
    }


_PLAIN = {"spectral": False, "eca": False, "prompting": False}
_OMNIFM = {"spectral": True, "eca": True, "prompting": True}
_HEAD = frozenset({"head"})


def _algorithms(*algorithms: Algorithm) -> dict[str, Algorithm]:
    return {a.name: a for a in algorithms}


ALGORITHMS: dict[str, Algorithm] = _algorithms(
    Algorithm("omnifm", _OMNIFM, uses_bank=True, personal=_HEAD,
              description="OmniFM: spectral retrieval + ECA + prefix-suffix prompting + SPAlign, personal head"),
    Algorithm("omnifm-noretrieval", _OMNIFM, uses_bank=True, personal=_HEAD, retrieval="mean",
              description="OmniFM ablation: the bank mean (mean spectral embedding) instead of top-k retrieval"),
    Algorithm("omnifm-placebo", _OMNIFM, uses_bank=True, personal=_HEAD, retrieval="random",
              description="Control: OmniFM whose retrieved keys and values are replaced by noise (a placebo bank)"),
    Algorithm("omnifm-noeca", {**_OMNIFM, "eca": False}, uses_bank=True, personal=_HEAD,
              description="OmniFM ablation: no embedding-wise cross-attention (retrieval feeds SPAlign only)"),
    Algorithm("omnifm-noprompt", {**_OMNIFM, "prompting": False}, uses_bank=True, personal=_HEAD,
              description="OmniFM ablation: no prefix-suffix prompting (no client suffix tokens)"),
    Algorithm("omnifm-noalign", _OMNIFM, uses_bank=True, personal=_HEAD, align=False,
              description="OmniFM ablation: no SPAlign (alignment weight 0)"),
    Algorithm("fedavg", _PLAIN, description="FedAvg: the plain network, every parameter averaged"),
    Algorithm("fedprox", _PLAIN, proximal=True,
              description="FedProx: FedAvg with a proximal term pulling local weights to the global ones"),
    Algorithm("fedper", _PLAIN, personal=_HEAD,
              description="FedPer: the plain network, encoder averaged, decoder (task head) kept on the site"),
    Algorithm("fedper-fusion", {"spectral": False, "eca": False, "prompting": True}, personal=_HEAD,
              description="Control: FedPer + OmniFM's fusion transformer layer and suffix prompts, no spectral input"),
    Algorithm("fedrep", _PLAIN, personal=_HEAD, rule="fedrep",
              description="FedRep: encoder (body) averaged, decoder (head) personal; head epochs, then body epochs"),
    Algorithm("ditto", _PLAIN, rule="ditto",
              description="Ditto: FedAvg global model + a personal model pulled to it by ditto_lambda/2 ||v - w||^2"),
    Algorithm("fedbn", _PLAIN, personal=frozenset({"norm"}), affine_norm=True,
              description="FedBN: FedAvg except normalisation layers (affine params, running stats) stay local"),
    Algorithm("feddg", _PLAIN, rule="feddg",
              description="FedDG-style: FedAvg + low-frequency amplitude interpolation from a pooled amplitude bank"),
    Algorithm("scaffold", _PLAIN, rule="scaffold",
              description="SCAFFOLD: FedAvg with server/client control variates correcting local drift"),
    Algorithm("feddyn", _PLAIN, rule="feddyn",
              description="FedDyn: dynamic regulariser -<g_i, w> + feddyn_alpha/2 ||w - w_global||^2, server state h"),
    Algorithm("moon", _PLAIN, rule="moon",
              description="MOON: FedAvg + moon_mu * model-contrastive loss (pooled bottleneck; global vs previous)"),
    Algorithm("local", _PLAIN, personal=frozenset({"all"}),
              description="Local: every site trains alone, nothing is shared (lower reference)"),
    Algorithm("central", _PLAIN, federated=False,
              description="Central: one model on the pooled data (upper reference; benchmark only, not a federation)"),
)


def get_algorithm(name: str) -> Algorithm:
    """Look an algorithm up by name; the error lists the valid names."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]
