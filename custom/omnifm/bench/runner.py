"""One benchmark run in-process: the FLARE round protocol without FLARE.

The loop is the one :mod:`omnifm.algorithms.server` documents and the FLARE components run:
``initial_global`` (the persistor), per site ``SiteTrainer.load_global`` + ``train_round`` +
``RoundResult.to_upload`` (the executor), ``server_round`` (the aggregator). Sites run one after
another in sorted order. After each round's aggregation every site loads the new global weights
and evaluates the model it would use (global shared part + its personal parts, as
``GlobalModelEval`` does after the last round); that is the round's score. ``<headline>_local``
(``dice_local``) is the site's model right after local training (before aggregation), as the
executor logs it.

The **test split** of every site (``DataConfig.test_fraction``) is evaluated exactly once, after the
last round, with the model the site would use (``record["test"]``); nothing during the run looks at
it. Per-round numbers are validation numbers.

**Task.** The run's task is its run spec's (``spec_args["task"]``; default segmentation). Scores
are the task's metrics (:meth:`~omnifm.tasks.Task.metric_names`: segmentation ``dice`` and
``dice_WT``/``_TC``/``_ET``, classification ``accuracy``, ``macro_f1``, ``auc``, ...);
``<headline>_local`` is the local model's headline score. ``record["task"]`` names the task, its
headline and its metric names (:mod:`omnifm.bench.metrics` reads them).

**Participation** (``RunConfig.participation``, paper Table 1): each round only the sites
:func:`omnifm.algorithms.participation.participants` samples (the FLARE controller's rule, seeded
with the run seed and the round) load the global weights, train and upload; the others keep
their personal state untouched and send nothing (their round record has ``trained`` False, no
local score, 0 bytes). Every site, sampled or not, is evaluated after each round's aggregation.

**Diagnostics** (``record["diagnostics"]``, one entry per round): per site the trainer's
``RoundResult.diagnostics`` (e.g. ``token_cos_within``, ``retrieval_own_share``,
``retrieved_age_rounds``, ``placebo_<headline>_delta``, ``placebo_logit_rel``) merged with the server's
per-site ``meta["omnifm_diagnostics"]["sites"]`` (``token_cos_across``), and the server's bank
statistics (``size``, ``inserted``, ``merged``, ``pruned``). Algorithms without these report ``{}``.

Bytes are the fp32 numeric payload (4 bytes per number): up = shared weights (incl. SCAFFOLD's
control deltas) + prototypes + prototype counts + retrieval ids/counts + algorithm extras; down =
global weights + knowledge bank + algorithm server state. The run spec and the per-round metrics
the executor also sends (a few hundred bytes) are not counted.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnifm.algorithms import BANK, STATE, get_algorithm, initial_global, make_run_spec, server_round
from omnifm.algorithms.participation import participants
from omnifm.bench.metrics import local_key, scenario_parts
from omnifm.bench.record import payload_bytes
from omnifm.bench.settings import DataConfig, load_federation
from omnifm.data.site import SiteData
from omnifm.engine import Retriever, SiteTrainer, TrainConfig, evaluate_volumes
from omnifm.engine.central import train_central
from omnifm.knowledge import KnowledgeBank
from omnifm.tasks import Task, get_task

Progress = Callable[[str], None]
SERVER_DIAGNOSTICS = "omnifm_diagnostics"
_QUIET = logging.getLogger("omnifm.bench.site")
_QUIET.setLevel(logging.WARNING)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run (identical budget for every algorithm of a grid).

    Args:
        algorithm: registry name (see :data:`omnifm.algorithms.ALGORITHMS`).
        setting: data setting (see :data:`omnifm.bench.settings.SETTINGS`).
        seed: model init, data order, phantom and split seed.
        rounds: federated rounds (``central``: the same number of passes of ``local_epochs``).
        data: federation size.
        train: :class:`~omnifm.engine.TrainConfig` arguments except ``seed``.
        spec_args: :func:`~omnifm.algorithms.make_run_spec` arguments except algorithm and seed.
        bank_args: :class:`~omnifm.knowledge.KnowledgeBank` arguments.
        group: ``main``, ``ablation`` or ``sensitivity`` (how the report groups it).
        label: name in tables (default: the algorithm).
        participation: share of sites sampled to train each round, in (0, 1] (1: every site).
    """

    algorithm: str
    setting: str
    seed: int
    rounds: int
    data: DataConfig = field(default_factory=DataConfig)
    train: dict[str, Any] = field(default_factory=dict)
    spec_args: dict[str, Any] = field(default_factory=dict)
    bank_args: dict[str, Any] = field(default_factory=dict)
    group: str = "main"
    label: str = ""
    participation: float = 1.0

    def __post_init__(self) -> None:
        algorithm = get_algorithm(self.algorithm)
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds!r}")
        if not 0 < self.participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {self.participation!r}")
        if self.participation < 1 and not algorithm.federated:
            raise ValueError(f"{self.algorithm} is not a federation: participation must be 1")
        if not self.label:
            object.__setattr__(self, "label", self.algorithm)

    @property
    def run_id(self) -> str:
        scenario = "".join(f"__{part}" for part in scenario_parts(self._fields()))
        raw = f"{self.group}__{self.label}__{self.setting}{scenario}__seed{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.=-]+", "-", raw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``participation`` only when below 1 (older records, which lack it, still match)."""
        return {**self._fields(), "run_id": self.run_id}

    def _fields(self) -> dict[str, Any]:
        out = {**dataclasses.asdict(self), "data": self.data.to_dict()}
        if self.participation == 1:
            del out["participation"]
        return out

    def spec(self) -> dict[str, Any]:
        return make_run_spec(algorithm=self.algorithm, seed=self.seed, **self.spec_args)

    def train_config(self) -> TrainConfig:
        return TrainConfig(seed=self.seed, **self.train)


def run_one(config: RunConfig, cache_dir: str | Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run one configuration and return its record (config, sites, per-round metrics, timings).

    Args:
        config: the run.
        cache_dir: where the phantom federations are written (reused across runs).
        progress: called with one line per round (default: silent).
    """
    progress = progress or (lambda line: None)
    start = time.perf_counter()
    spec = config.spec()
    scores = Scores(get_task(spec["task"]))
    sites, summary = load_federation(config.setting, config.data, config.seed, cache_dir, scores.task)
    data_s = time.perf_counter() - start
    if get_algorithm(config.algorithm).federated:
        rounds, diagnostics, test = _federated(config, spec, sites, progress, scores)
    else:
        rounds, diagnostics, test = _central(config, spec, sites, progress, scores)
    return {
        "run_id": config.run_id,
        "config": config.to_dict(),
        "spec": spec,
        "task": {"name": scores.task.name, "headline": scores.headline, "metrics": scores.names},
        "sites": summary,
        "rounds": rounds,
        "final": rounds[-1]["sites"],
        "test": test,
        "diagnostics": diagnostics,
        "data_s": data_s,
        "wall_s": time.perf_counter() - start,
    }


@dataclass
class Scores:
    """The task's metrics of one evaluation, as floats (:meth:`~omnifm.tasks.Task.metric_names`).

    ``names`` remembers the metric names of the first evaluation (the record's ``task.metrics``).
    """

    task: Task
    names: list[str] = field(default_factory=list)

    @property
    def headline(self) -> str:
        return self.task.headline

    def __call__(self, scores: dict[str, float]) -> dict[str, float]:
        names = self.task.metric_names(scores)
        self.names = self.names or list(names)
        return {k: float(scores[k]) for k in names}


# ---- federated -----------------------------------------------------------------------------
def _federated(
    config: RunConfig, spec: dict, sites: dict[str, SiteData], progress: Progress, scores: Scores
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, float]]]:
    device = torch.device("cpu")
    trainers = {name: _trainer(spec, config, data, device, name) for name, data in sorted(sites.items())}
    weights, meta = initial_global(spec, config.bank_args)
    history, diagnostics = [], []
    for round_num in range(config.rounds):
        weights, meta, record, diag = _round(config, spec, trainers, weights, meta, round_num, scores)
        history.append(record)
        diagnostics.append(diag)
        progress(_round_line(config, record, scores.headline))
    bank = _bank(meta)
    test = {}
    for name, trainer in trainers.items():  # the trainers hold the final global weights (_evaluate_after)
        if sites[name].test:
            test[name] = scores(_evaluate_test(trainer, bank, sites[name].test))
    return history, diagnostics, test


def _trainer(spec: dict, config: RunConfig, data: SiteData, device: torch.device, site: str = "") -> SiteTrainer:
    """A site's trainer; it gets the test cases only if it takes them (``test_volumes``)."""
    extra = {"test_volumes": data.test} if "test_volumes" in inspect.signature(SiteTrainer).parameters else {}
    if "site" in inspect.signature(SiteTrainer).parameters:
        extra["site"] = site  # the bank's owners are site names: retrieval_own_share needs this site's
    return SiteTrainer(spec, config.train_config(), data.train, data.val, device=device, logger=_QUIET, **extra)


def _evaluate_test(trainer: SiteTrainer, bank: KnowledgeBank | None, volumes: list) -> dict[str, float]:
    """Test scores of the model the site would use: ``trainer.evaluate(bank, split="test")`` where the
    trainer has a test split, else the same evaluation (Ditto: personal model) on ``volumes``."""
    if "split" in inspect.signature(trainer.evaluate).parameters and getattr(trainer, "test_volumes", None):
        return trainer.evaluate(bank, split="test")
    model = trainer.personal_model if trainer.personal_model is not None else trainer.model
    return evaluate_volumes(model, volumes, trainer.device, trainer._retriever(bank), trainer.task)


def _round(
    config: RunConfig, spec: dict, trainers: dict[str, SiteTrainer], weights: dict, meta: dict, round_num: int,
    scores: Scores,
) -> tuple[dict, dict, dict[str, Any], dict[str, Any]]:
    start = time.perf_counter()
    bank, server_state = _bank(meta), meta.get(STATE)
    down = payload_bytes(weights) + payload_bytes(meta.get(BANK)) + payload_bytes(server_state)
    sampled = set(participants(list(trainers), config.participation, round_num, spec["seed"]))
    uploads, sites, site_diag = [], {}, {}
    for name, trainer in trainers.items():
        if name not in sampled:
            sites[name] = _idle_site(scores.headline)
            continue
        upload, sites[name], site_diag[name] = _site_round(
            config, name, trainer, weights, bank, server_state, round_num, scores.headline
        )
        sites[name]["bytes_down"] = down
        uploads.append(upload)
    t0 = time.perf_counter()
    weights, meta = server_round(spec, weights, meta, uploads)
    aggregate_s = time.perf_counter() - t0
    _evaluate_after(trainers, weights, _bank(meta), sites, scores)
    record = {"round": round_num, "aggregate_s": aggregate_s, "round_s": time.perf_counter() - start, "sites": sites,
              "bank_size": len(_bank(meta)) if meta.get(BANK) else 0}
    return weights, meta, record, round_diagnostics(round_num, site_diag, meta.get(SERVER_DIAGNOSTICS))


def round_diagnostics(round_num: int, sites: dict[str, dict], server: Any) -> dict[str, Any]:
    """One round's diagnostics: the sites' own merged with the server's per-site ones, plus the bank's.

    Tolerates anything missing or malformed (older algorithms report nothing): only numbers are kept.
    """
    server = server if isinstance(server, dict) else {}
    per_site = server.get("sites") if isinstance(server.get("sites"), dict) else {}
    merged = {name: {**_numbers(values), **_numbers(per_site.get(name))} for name, values in sites.items()}
    return {"round": round_num, "bank": _numbers(server.get("bank")), "sites": merged}


def _numbers(values: Any) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    out = {}
    for key, value in values.items():
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            out[str(key)] = float(value)
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            out[str(key)] = float(value.item())
    return out


def _idle_site(head: str) -> dict[str, Any]:
    """The round record of a site that was not sampled: it trained nothing and exchanged nothing."""
    return {"trained": False, local_key(head): math.nan, "bytes_up": 0, "bytes_down": 0, "train_s": 0.0,
            "eval_s": 0.0, "n_samples": 0, "step_ms": math.nan}


def _site_round(
    config: RunConfig, name: str, trainer: SiteTrainer, weights: dict, bank: KnowledgeBank | None,
    server_state: dict | None, round_num: int, head: str,
) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """What the FLARE executor does for one ``train`` task: load, train, evaluate the local model, upload."""
    trainer.load_global(_to_torch(weights))
    t0 = time.perf_counter()
    result = trainer.train_round(bank, round_num, server_state, num_rounds=config.rounds)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    local = trainer.evaluate(bank)
    upload = result.to_upload(name)
    return upload, {
        "trained": True,
        local_key(head): local[head],
        "bytes_up": _upload_bytes(upload, result.prototype_counts),
        "train_s": train_s,
        "eval_s": time.perf_counter() - t0,
        "n_samples": result.n_samples,
        "step_ms": 1000 * train_s / _steps(config, result.n_samples),
        **_retrieval_timing(trainer, bank),
    }, _numbers(getattr(result, "diagnostics", None))


def _evaluate_after(
    trainers: dict[str, SiteTrainer], weights: dict, bank: KnowledgeBank | None, sites: dict, scores: Scores
) -> None:
    """The model each site would use now: new global shared part + its personal parts (every site,
    sampled this round or not; a site's personal parts change only when it trains)."""
    for name, trainer in trainers.items():
        t0 = time.perf_counter()
        trainer.load_global(_to_torch(weights))
        sites[name].update(scores(trainer.evaluate(bank)))
        sites[name]["eval_s"] += time.perf_counter() - t0


def _to_torch(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}


def _bank(meta: dict) -> KnowledgeBank | None:
    return KnowledgeBank.from_plain(meta[BANK]) if meta.get(BANK) else None


def _upload_bytes(upload: Any, prototype_counts: torch.Tensor) -> int:
    retrievals = 2 * len(upload.retrievals)  # ids and counts
    return (
        payload_bytes(upload.weights) + payload_bytes(upload.prototypes) + payload_bytes(prototype_counts)
        + retrievals * 4 + payload_bytes(upload.extras)
    )


def _steps(config: RunConfig, n_samples: int) -> int:
    train = config.train_config()
    return max(1, train.local_epochs * math.ceil(n_samples / train.batch_size))


def _retrieval_timing(trainer: SiteTrainer, bank: KnowledgeBank | None, repeats: int = 20) -> dict[str, float]:
    """Median time of retrieving for one training batch from this round's bank (ms); {} without a bank."""
    if bank is None or len(bank) == 0 or not trainer.algorithm.uses_bank:
        return {}
    n = min(trainer.config.batch_size, len(trainer.dataset))
    images = torch.stack([trainer.dataset[i]["image"] for i in range(n)])
    with torch.no_grad():
        token = trainer.model.spectral_token(images)
    retriever = Retriever(bank, trainer.spec["top_k"], trainer.algorithm.retrieval)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        retriever(token)
        times.append(time.perf_counter() - t0)
    return {"retrieval_ms": 1000 * statistics.median(times)}


def _round_line(config: RunConfig, record: dict[str, Any], head: str) -> str:
    values = [m[head] for m in record["sites"].values()]
    shown = " ".join(f"{s}={m[head]:.3f}{'' if m.get('trained', True) else '(idle)'}" for s, m in record["sites"].items())
    return (
        f"[{config.run_id}] round {record['round'] + 1}/{config.rounds}: mean {head} {np.nanmean(values):.3f} ({shown}) "
        f"{record['round_s']:.1f}s"
    )


# ---- central (pooled reference) --------------------------------------------------------------
def _central(
    config: RunConfig, spec: dict, sites: dict[str, SiteData], progress: Progress, scores: Scores
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, float]]]:
    """:func:`~omnifm.engine.central.train_central` on the pooled training cases; the task's scores on
    each site's own validation cases every round, on its test cases once at the end."""
    device, task = torch.device("cpu"), scores.task
    history: list[dict[str, Any]] = []
    clock = [time.perf_counter()]

    def on_round(round_num: int, trainer: SiteTrainer) -> None:
        train_s = time.perf_counter() - clock[0]
        n_samples = len(trainer.dataset)
        record_sites = {}
        for name, data in sorted(sites.items()):
            t0 = time.perf_counter()
            values = scores(evaluate_volumes(trainer.model, data.val, device, None, task))
            record_sites[name] = {
                **values, local_key(scores.headline): values[scores.headline], "trained": True, "bytes_up": 0, "bytes_down": 0,
                "train_s": train_s, "eval_s": time.perf_counter() - t0, "n_samples": n_samples,
                "step_ms": 1000 * train_s / _steps(config, n_samples),
            }
        record = {"round": round_num, "aggregate_s": 0.0, "round_s": time.perf_counter() - clock[0],
                  "sites": record_sites, "bank_size": 0}
        history.append(record)
        progress(_round_line(config, record, scores.headline))
        clock[0] = time.perf_counter()

    train_volumes = [data.train for _, data in sorted(sites.items())]
    trainer = train_central(
        spec, config.train_config(), train_volumes, config.rounds, device=device, logger=_QUIET, on_round=on_round
    )
    test = {name: scores(evaluate_volumes(trainer.model, data.test, device, None, task))
            for name, data in sorted(sites.items()) if data.test}
    return history, [{"round": r["round"], "bank": {}, "sites": {}} for r in history], test
