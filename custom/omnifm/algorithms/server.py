"""One federated round, framework-free: the server rule that FLARE and the in-process benchmark share.

The round protocol (FLARE's executor/aggregator and ``omnifm.bench`` both call exactly this)::

    weights, meta = initial_global(spec, bank_args)             # round-0 state (persistor / bench)
    for round_num in range(num_rounds):                          # 0-based, like FLARE's CURRENT_ROUND
        uploads = []
        for site, trainer in trainers.items():                   # any order: server_round sorts by site
            trainer.load_global({k: torch.as_tensor(v) for k, v in weights.items()})  # shared subset only
            bank = KnowledgeBank.from_plain(meta[BANK]) if meta[BANK] else None
            result = trainer.train_round(bank, round_num, meta[STATE], num_rounds)
            uploads.append(result.to_upload(site))              # numpy fp32 weights + plain extras
        weights, meta = server_round(spec, weights, meta, uploads)
    # evaluation: trainer.evaluate(bank) (Ditto evaluates its personal model)

``central`` (``Algorithm.federated`` False) is not a federation: use
:func:`omnifm.engine.central.train_central` instead of this loop.

* ``weights``: ``dict[str, np.ndarray]`` float32, the algorithm's shared parameters (empty for
  ``local``) plus a strategy file's extra weights (``ServerRule.is_extra``; SCAFFOLD's server
  control under ``CONTROL_PREFIX + name``). A site uploads the same names; for SCAFFOLD's control
  names it uploads its control *delta*.
* ``meta``: plain Python (JSON-able) dict sent to every site with the next task. Keys:
  :data:`BANK` (the spectral knowledge bank as :meth:`KnowledgeBank.to_plain`, or None) and
  :data:`STATE` (algorithm server state, e.g. FedDG's pooled amplitude bank, FedDyn's ``h``); every other key
  (e.g. the FLARE run spec) is carried forward unchanged. With a bank, :data:`DIAGNOSTICS` holds the
  round's server-side measurements: ``{"bank": {size, inserted, merged, pruned, evicted}, "sites":
  {site: {"token_cos_across": ...}}}``.
* :class:`Upload`: one accepted site result. ``extras`` is plain Python (see :func:`to_plain`);
  the site never sends per-image data (prototypes and amplitudes are group means).
* Determinism: uploads are processed in ``site`` order, so thread arrival order in FLARE does not
  change a bit of the result; the site seeds its data order per round from ``(seed, round_num)``
  and restores every personal tensor from its personal file, so a trainer kept alive (benchmark)
  and one rebuilt every task (FLARE simulator) produce the same weights.

Raises ``ValueError`` (naming the site and the field) when uploads cannot be combined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from omnifm.algorithms.aggregation import token_cos_across, update_bank, weighted_average
from omnifm.algorithms.registry import get_algorithm
from omnifm.algorithms.rule import ServerRule, server_rule
from omnifm.algorithms.feddg import AMPLITUDES  # noqa: F401  (re-exported, as CONTROL_PREFIX)
from omnifm.algorithms.scaffold import CONTROL_PREFIX  # re-exported: the name drivers and tests use
from omnifm.algorithms.spec import build_model, shared_state
from omnifm.knowledge import KnowledgeBank

BANK = "omnifm_bank"
STATE = "omnifm_state"
DIAGNOSTICS = "omnifm_diagnostics"


@dataclass
class Upload:
    """One site's accepted round result, as the server sees it.

    Args:
        weights: shared parameters (numpy float32), names as in the global weights.
        n_samples: training slices seen (the averaging weight), >= 1.
        prototypes: (P, d_s) k-means centroids of spectral tokens (P may be 0).
        retrievals: bank id -> times retrieved during training.
        extras: algorithm uploads in plain Python (e.g. ``{"amplitudes": [[...]]}``).
        site: the site's name (uploads are combined in sorted site order).
        values: (P, V) the prototypes' bank values (None for a keys-only bank).
        counts: (P,) member counts of the prototypes (merging weights; None: 1 each).
    """

    weights: dict[str, np.ndarray]
    n_samples: int
    prototypes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    retrievals: dict[int, int] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    site: str = ""
    values: torch.Tensor | None = None
    counts: torch.Tensor | None = None


def to_plain(value: Any) -> Any:
    """Tensors/arrays to nested lists, numpy scalars to Python numbers (what FLARE meta carries)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def initial_global(spec: dict[str, Any], bank_args: dict[str, Any] | None = None,
                   init_checkpoint: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Round-0 global weights and meta for ``spec`` (the spec's seeded initial model).

    ``init_checkpoint``: a local checkpoint file whose tensors replace the seeded ones
    (:mod:`omnifm.algorithms.init_checkpoint`; raises ``CheckpointError`` naming the file when it is
    missing or does not fit the spec's model).
    """
    algo = get_algorithm(spec["algorithm"])
    model = build_model(spec)
    if init_checkpoint:
        from omnifm.algorithms.init_checkpoint import load_init_checkpoint

        load_init_checkpoint(model, init_checkpoint)
    weights = {k: v.numpy().astype(np.float32) for k, v in shared_state(model, algo).items()}
    rule = server_rule(algo)
    if rule is not None:
        weights.update(rule.initial_extras(dict(weights)))
    bank_args = {"value_dim": model.value_dim, **(bank_args or {})}
    bank = KnowledgeBank(dim=model.config.spectral_dim, **bank_args) if algo.uses_bank else None
    return weights, {BANK: None if bank is None else bank.to_plain(), STATE: {}}


def validate_uploads(global_weights: dict[str, np.ndarray], uploads: list[Upload]) -> None:
    """Refuse uploads the round rule cannot combine, naming the site and the field.

    The FLARE aggregator (:class:`omnifm.fl.aggregator.OmniFMAggregator`) is the gate for
    untrusted uploads: it rejects a bad contribution on its own and the round goes on. This check
    makes :func:`server_round` safe for every other driver (the benchmark, tests, a new workflow):
    weights with exactly the global names, shapes (no broadcasting), finite floats; ``n_samples``
    an int in ``[1, MAX_COUNT]`` (a negative one would extrapolate); prototypes a finite ``(P, d)``
    tensor; retrievals ``{int id: int count >= 0}``.

    Raises:
        ValueError: ``"<site>: <field> ..."`` for the first bad upload.
    """
    from omnifm.validation import MAX_COUNT, is_int

    expected = {k: np.shape(v) for k, v in global_weights.items()}
    for u in uploads:
        who = u.site or "an upload without a site name"
        if not is_int(u.n_samples) or not 1 <= u.n_samples <= MAX_COUNT:
            raise ValueError(f"{who}: n_samples must be an int in [1, {MAX_COUNT}], got {u.n_samples!r}")
        if not isinstance(u.weights, dict) or set(u.weights) != set(expected):
            names = sorted(set(u.weights) ^ set(expected)) if isinstance(u.weights, dict) else []
            raise ValueError(f"{who}: weights must have the global weights' names (differing: {names[:3]})")
        for name, shape in expected.items():
            value = u.weights[name]
            ok = isinstance(value, np.ndarray) and value.shape == shape and value.dtype.kind == "f"
            if not ok or not np.isfinite(value).all():
                got = f"{getattr(value, 'dtype', type(value).__name__)} {getattr(value, 'shape', '')}"
                raise ValueError(f"{who}: weights[{name!r}] must be finite floats of shape {shape}, got {got}")
        p = u.prototypes
        if not isinstance(p, torch.Tensor) or p.ndim != 2 or not bool(torch.isfinite(p).all()):
            raise ValueError(f"{who}: prototypes must be a finite (P, d) tensor, got {getattr(p, 'shape', p)!r}")
        if any(not is_int(i) or not is_int(c) or i < 0 or not 0 <= c <= MAX_COUNT for i, c in u.retrievals.items()):
            raise ValueError(f"{who}: retrievals must map int ids >= 0 to int counts in [0, {MAX_COUNT}]")


def server_round(
    spec: dict[str, Any], global_weights: dict[str, np.ndarray], global_meta: dict[str, Any], uploads: list[Upload]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Combine one round's uploads into the next global weights and meta.

    Args:
        spec: the run spec (selects the algorithm).
        global_weights: this round's global weights (the ones the sites received).
        global_meta: this round's global meta (bank, state, anything else is carried forward).
        uploads: the accepted site results (at least one).

    Returns:
        ``(weights, meta)`` for the next round.
    """
    if not uploads:
        raise ValueError("server_round needs at least one upload")
    validate_uploads(global_weights, uploads)
    algo = get_algorithm(spec["algorithm"])
    uploads = sorted(uploads, key=lambda u: u.site)
    rule = server_rule(algo) or ServerRule()
    model = {k: v for k, v in global_weights.items() if not rule.is_extra(k)}
    weights = _average_model(rule, spec, model, uploads, dict(global_meta.get(STATE) or {}))
    weights.update(rule.next_extras({k: v for k, v in global_weights.items() if rule.is_extra(k)}, uploads))
    meta = dict(global_meta)
    if meta.get(BANK):
        bank = KnowledgeBank.from_plain(meta[BANK])
        summary = update_bank(bank, uploads)
        meta[BANK] = bank.to_plain()
        across = token_cos_across(uploads)
        meta[DIAGNOSTICS] = {
            "bank": {k: summary[k] for k in ("size", "inserted", "merged", "pruned", "evicted")},
            "sites": {site: {"token_cos_across": value} for site, value in across.items()},
        }
    meta[STATE] = rule.next_state(spec, model, dict(global_meta.get(STATE) or {}), uploads)
    return weights, meta


def _average_model(
    rule: ServerRule, spec: dict[str, Any], model: dict[str, np.ndarray], uploads: list[Upload], state: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Sample-weighted mean of the model weights, unless the algorithm's strategy file has its own
    (FedDyn, from this round's ``state``); an empty model (``local``) stays empty."""
    if not model:
        return {}
    weights = rule.average(spec, model, uploads, state)
    if weights is not None:
        return weights
    return weighted_average([({k: u.weights[k] for k in model}, u.n_samples) for u in uploads])
