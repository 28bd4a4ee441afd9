"""``omnifm-pretrain``: make an ``init_checkpoint`` by pre-training a job's model on held-out phantom subjects.

Seed 004 starts its federation from a pretrained network (ImageNet ResNet-18) to cut the rounds to
target. No pretrained weights can be fetched here, so this command pre-trains the job's own model
(the server config's persistor ``task``, ``model``, ``omnifm`` and ``seed``) centrally on phantom
subjects that no site holds: a paired phantom of a pre-training "institution" (site index
``--site-index``, 9 by default; the simulated sites are 0-2) drawn with its own ``--seed`` (7; the
sites draw theirs with the executor's seed 0), so neither the anatomies nor the acquisition
settings coincide with any site's. It prints one line per epoch (training loss, validation
metrics, seconds) and a summary, and writes ``{"model": state_dict, "spec", "pretrain"}``, which
the persistor's ``init_checkpoint`` reads (:mod:`omnifm.algorithms.init_checkpoint`)::

    omnifm-pretrain jobs/omnifm_seg_fedunetmm --out /tmp/fedunetmm_init.pt --epochs 6

The spec is the job's, so the checkpoint has every tensor of the job's model; only the bank
starts empty.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

_SPEC_ARGS = ("task", "model", "omnifm", "top_k", "align_weight", "num_prototypes", "prox_mu", "seed")


def job_spec(job: str | Path) -> dict[str, Any]:
    """The run spec of a job folder's server config (its persistor's arguments, ``{var}`` placeholders filled)."""
    from omnifm.algorithms import make_run_spec
    from omnifm.algorithms.spec import job_persistor_args

    _, args = job_persistor_args(job)
    return make_run_spec(algorithm=args.get("algorithm", "omnifm"), **{k: args[k] for k in _SPEC_ARGS if k in args})


def pretrain(spec: dict[str, Any], out: str | Path, *, epochs: int = 6, cases: int = 16, seed: int = 7,
             site_index: int = 9, modalities: list[str] | None = None, shape: tuple[int, int, int] = (64, 64, 24),
             batch_size: int = 16, learning_rate: float = 3e-3, workdir: str | Path = "/tmp/omnifm_pretrain",
             print_fn=print) -> dict[str, Any]:
    """Pre-train ``spec``'s model on held-out phantom subjects and write the checkpoint ``out``.

    Returns:
        The summary written into the checkpoint (``epochs``, ``cases``, ``val`` metrics, ``seconds``, ...).
    """
    import torch

    from omnifm.checkpoint import atomic_torch_save
    from omnifm.data.site import load_site_data, simulator_config
    from omnifm.engine import SiteTrainer, TrainConfig
    from omnifm.engine.train import train_epoch
    from omnifm.tasks import get_task

    task = get_task(spec["task"])
    if modalities is None:
        modalities = [m for _, kinds in task.input_slots for m in kinds[:1]] if task.input_slots else ["t1ce"]
    site = f"pretrain-{site_index + 1}"  # site_index() of this name is site_index
    config = simulator_config(site, cases, tuple(shape), 0.25, seed, modalities=list(modalities))
    data = load_site_data(config, workdir, site, task)
    print_fn(f"pre-training {spec['model'].get('kind', 'the model')} ({spec['algorithm']} spec) on {data.description} "
             f"(phantom seed {seed}, site index {site_index}: subjects no site holds)")
    trainer = SiteTrainer(spec, TrainConfig(local_epochs=1, batch_size=batch_size, learning_rate=learning_rate,
                                            seed=seed), data.train, data.val, device=torch.device("cpu"))
    start = time.perf_counter()
    scores: dict[str, float] = {}
    for epoch in range(epochs):
        tick = time.perf_counter()
        stats = train_epoch(trainer.model, trainer.round_loader(epoch, 0), trainer.optimizers["main"], trainer.loss_fn,
                            trainer.device, None, 0.0)
        scores = trainer.evaluate(None)
        print_fn(f"epoch {epoch + 1}/{epochs}: loss {stats.means()['loss']:.4f}, val {task.describe(scores)}, "
                 f"{time.perf_counter() - tick:.1f} s")
    summary = {"epochs": epochs, "cases": cases, "train_cases": len(data.train), "val_cases": len(data.val),
               "slices": len(trainer.dataset), "seed": seed, "site_index": site_index, "modalities": list(modalities),
               "shape": list(shape), "val": scores, "seconds": round(time.perf_counter() - start, 1)}
    state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    atomic_torch_save({"model": state, "spec": json.dumps(spec, sort_keys=True), "pretrain": json.dumps(summary)}, out)
    print_fn(f"wrote {out}: {len(state)} tensors after {epochs} epochs on {len(data.train)} phantom cases "
             f"({summary['seconds']} s), val {task.describe(scores)}; start a job from it with the persistor "
             f'argument "init_checkpoint": "{Path(out).resolve()}"')
    return summary


def federate(spec: dict[str, Any], sites: dict[str, list[str]], rounds: int, *, init_checkpoint: str | None = None,
             cases: int = 12, shape: tuple[int, int, int] = (64, 64, 16), local_epochs: int = 2, batch_size: int = 16,
             learning_rate: float = 3e-3, seed: int = 0, workdir: str | Path = "/tmp/omnifm_federate",
             print_fn=print) -> list[dict]:
    """An in-process federation of simulated phantom sites (the round protocol of :mod:`omnifm.algorithms.server`,
    as the FLARE job runs it): ``sites`` maps a site name to its sequences, the phantom and training settings are
    the executor's (``seed``: the sites' data-order seed; the phantom and the splits stay at the simulator's 0).
    Returns per round the mean and per-site validation ``dice`` of the global model as each site
    received it (round ``r``: after ``r`` rounds; the last entry is the final global model).
    """
    import torch

    from omnifm.algorithms import BANK, STATE, initial_global, server_round
    from omnifm.data.site import load_site_data, simulator_config
    from omnifm.engine import SiteTrainer, TrainConfig
    from omnifm.knowledge import KnowledgeBank
    from omnifm.tasks import get_task

    task = get_task(spec["task"])
    config = TrainConfig(local_epochs=local_epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    trainers = {}
    for site, modalities in sites.items():
        data = load_site_data(simulator_config(site, cases, tuple(shape), 0.25, 0, modalities=modalities), workdir,
                              site, task)
        trainers[site] = SiteTrainer(spec, config, data.train, data.val, device=torch.device("cpu"), site=site)
    weights, meta = initial_global(spec, {}, init_checkpoint)
    curve = []
    for round_num in range(rounds + 1):
        uploads, scores = [], {}
        for site, trainer in trainers.items():
            trainer.load_global({k: torch.as_tensor(v) for k, v in weights.items()})
            bank = KnowledgeBank.from_plain(meta[BANK]) if meta[BANK] else None
            scores[site] = trainer.evaluate(bank)["dice"]
            if round_num < rounds:
                uploads.append(trainer.train_round(bank, round_num, meta[STATE], rounds).to_upload(site))
        mean = sum(scores.values()) / len(scores)
        curve.append({"round": round_num, "dice": mean, "sites": scores})
        print_fn(f"global model after {round_num} rounds: mean Dice {mean:.3f} ("
                 + ", ".join(f"{s} {v:.3f}" for s, v in scores.items()) + ")")
        if round_num < rounds:
            weights, meta = server_round(spec, weights, meta, uploads)
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnifm-pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="job folder whose server config gives the model (e.g. jobs/omnifm_seg_fedunetmm)")
    parser.add_argument("--out", required=True, help="checkpoint file to write")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--cases", type=int, default=16, help="phantom cases (a quarter is validation)")
    parser.add_argument("--seed", type=int, default=7, help="phantom seed (the simulated sites use 0)")
    parser.add_argument("--site-index", type=int, default=9, help="phantom site index (the simulated sites use 0-2)")
    parser.add_argument("--modalities", nargs="+", default=None, help="default: every input slot's modality")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 24])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--workdir", default="/tmp/omnifm_pretrain", help="where the phantom is written")
    args = parser.parse_args(argv)
    try:
        spec = job_spec(args.job)
        pretrain(spec, args.out, epochs=args.epochs, cases=args.cases, seed=args.seed, site_index=args.site_index,
                 modalities=args.modalities, shape=tuple(args.shape), batch_size=args.batch_size,
                 learning_rate=args.learning_rate, workdir=args.workdir)
    except (OSError, ValueError) as err:
        print(f"omnifm-pretrain: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
