"""The run spec: what the server decides for the whole federation and sends to every site.

A spec is a plain dict (JSON-able, safe in FLARE message meta) holding the algorithm, the model
architecture and the algorithm's hyper-parameters, so that the server's job config is the one
place where they are set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnifm.algorithms.registry import Algorithm, get_algorithm
from omnifm.models import OmniFM
from omnifm.tasks import get_task
from omnifm.validation import check_int, check_range

SPEC_KEYS = ("algorithm", "task", "model", "omnifm", "top_k", "align_weight", "num_prototypes", "prox_mu", "seed")
OPTIONAL_SPEC_KEYS = ("ditto_lambda", "amplitude_ratio", "feddyn_alpha", "fedrep_head_epochs", "moon_mu", "moon_tau")


def make_run_spec(
    algorithm: str = "omnifm",
    task: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    omnifm: dict[str, Any] | None = None,
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
) -> dict[str, Any]:
    """Validate and assemble a run spec.

    Args:
        algorithm: registry name (``omnifm``, ``fedavg``, ...).
        task: ``{"kind": <task>, ...}`` (see :mod:`omnifm.tasks`); default segmentation with the
            BraTS classes (background, necrotic, edema, enhancing; regions WT, TC, ET).
        model: the task network's arguments (segmentation: UNet arguments, see
            :func:`omnifm.tasks.segmentation.network.build_seg_model`); the task checks them.
        omnifm: :class:`~omnifm.models.OmniFMConfig` sizes; the algorithm's module switches win.
        top_k: prototypes retrieved per image (paper default 2).
        align_weight: lambda of the spectral-proximal alignment term.
        num_prototypes: k-means centroids a site uploads per round (at most).
        prox_mu: FedProx's proximal weight (used by algorithms with ``proximal``).
        seed: seed of the initial weights.
        ditto_lambda: Ditto's pull of the personal model to the global one (``ditto`` only).
        amplitude_ratio: FedDG's low-frequency window, as a fraction of the slice size (``feddg`` only).
        feddyn_alpha: FedDyn's dynamic-regularisation weight alpha, > 0 (``feddyn`` only).
        fedrep_head_epochs: FedRep's head-only epochs at the start of every round, >= 1; the
            remaining local epochs train the body (``fedrep`` only; see :func:`omnifm.algorithms.fedrep.head_steps`).
        moon_mu: weight of MOON's model-contrastive term, >= 0 (``moon`` only; 0 is FedAvg).
        moon_tau: MOON's temperature, > 0 (``moon`` only; see :mod:`omnifm.algorithms.moon`).
    """
    get_algorithm(algorithm)
    the_task = get_task(task)
    model = the_task.check_model(dict(model or {}))
    top_k = check_int("top_k", top_k)
    if align_weight < 0:
        raise ValueError(f"align_weight must be >= 0, got {align_weight!r}")
    num_prototypes = check_int("num_prototypes", num_prototypes)
    prox_mu = check_range("prox_mu", prox_mu, 0.0)
    ditto_lambda = check_range("ditto_lambda", ditto_lambda, 0.0)
    amplitude_ratio = check_range("amplitude_ratio", amplitude_ratio, 0.0, 0.5)
    feddyn_alpha = check_range("feddyn_alpha", feddyn_alpha, 0.0, low_open=True)
    fedrep_head_epochs = check_int("fedrep_head_epochs", fedrep_head_epochs)
    moon_mu = check_range("moon_mu", moon_mu, 0.0)
    moon_tau = check_range("moon_tau", moon_tau, 0.0, low_open=True)
    return {
        "algorithm": algorithm,
        "task": the_task.to_dict(),
        "model": model,
        "omnifm": dict(omnifm or {}),
        "top_k": top_k,
        "align_weight": float(align_weight),
        "num_prototypes": num_prototypes,
        "prox_mu": float(prox_mu),
        "seed": int(seed),
        "ditto_lambda": float(ditto_lambda),
        "amplitude_ratio": float(amplitude_ratio),
        "feddyn_alpha": float(feddyn_alpha),
        "fedrep_head_epochs": fedrep_head_epochs,
        "moon_mu": float(moon_mu),
        "moon_tau": float(moon_tau),
    }


def check_run_spec(spec: Any) -> dict[str, Any]:
    """Re-validate a spec received over the wire; the error names what is missing."""
    if not isinstance(spec, dict):
        raise ValueError(f"run spec must be a dict, got {type(spec).__name__}")
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise ValueError(f"run spec lacks {missing}; is the server running an OmniFM persistor?")
    return make_run_spec(**{k: spec[k] for k in SPEC_KEYS + OPTIONAL_SPEC_KEYS if k in spec})


def build_model(spec: dict[str, Any]) -> OmniFM:
    """The model a spec describes, with the spec's seeded initial weights.

    The task builds the network (:meth:`omnifm.tasks.Task.build_network`). An algorithm with
    ``affine_norm`` (FedBN) asks for affine normalisation layers with running statistics (the
    segmentation UNet's default non-affine ``instance`` norm becomes ``batch`` norm).
    """
    algo = get_algorithm(spec["algorithm"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        omnifm = {**spec["omnifm"], **algo.modules}
        return get_task(spec["task"]).build_network(dict(spec["model"]), omnifm, algo.affine_norm)


def shared_state(model: nn.Module, algo: Algorithm) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the algorithm's shared parameters, in model order."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().cpu().clone() for name in algo.shared_parameter_names(model)}


SERVER_CONFIG = "app/config/config_fed_server.json"  # of a job folder


def job_persistor_args(job: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(server config, persistor args)`` of a job folder, ``"{name}"`` placeholders filled from the server
    config's top level (as FLARE fills them, e.g. ``"algorithm": "{algorithm}"``).

    Raises:
        ValueError: no component with id ``persistor``, or a placeholder the server config does not define.
    """
    path = Path(job) / SERVER_CONFIG
    server = json.loads(path.read_text(encoding="utf-8"))
    found = [c.get("args", {}) for c in server.get("components", []) if c.get("id") == "persistor"]
    if not found:
        raise ValueError(f"{path}: no component with id 'persistor'")

    def fill(key: str, value: Any) -> Any:
        match = re.fullmatch(r"\{(\w+)\}", value) if isinstance(value, str) else None
        if match and match.group(1) not in server:
            raise ValueError(f"{path}: persistor argument {key} is {value!r} but the config defines no {match.group(1)!r}")
        return server[match.group(1)] if match else value

    return server, {k: fill(k, v) for k, v in found[0].items()}
