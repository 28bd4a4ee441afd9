"""Named grids: ``quick`` (a smoke run, minutes) and ``full`` (the documented benchmark).

Every algorithm of a grid gets the same budget: the same rounds, local epochs, batch size, learning
rate, model and data. The hyper-parameters are one fixed shared setting (:data:`TRAIN`, the job's
UNet and OmniFM sizes), not tuned per method; sensitivity runs vary OmniFM's lambda
(``align_weight``) and ``top_k`` only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omnifm.bench.runner import RunConfig
from omnifm.bench.settings import SETTINGS, DataConfig, check_setting

# The default job's model and OmniFM hyper-parameters (jobs/omnifm_seg/app/config/config_fed_server.json).
MODEL = {"spatial_dims": 2, "in_channels": 1, "channels": [16, 32, 64, 64], "strides": [2, 2, 2], "num_res_units": 1}
SPEC_ARGS: dict[str, Any] = {
    "model": MODEL,
    "omnifm": {"spectral_dim": 32, "num_suffix_tokens": 4},
    "top_k": 2,
    "align_weight": 0.1,
    "num_prototypes": 4,
    "prox_mu": 0.01,
}
# One shared training setting for every method. The learning rate was picked from {3e-3, 1e-2} by a
# pilot of the `local` baseline (seed 0, cross-modality, validation Dice), not tuned per method.
TRAIN: dict[str, Any] = {"local_epochs": 2, "batch_size": 8, "learning_rate": 1e-2}
BANK_ARGS = {"rho": 1.0, "delta": 0.02, "prune_window": 3, "max_size": 64}
MAIN_ALGORITHMS = ("omnifm", "fedavg", "fedprox", "fedper", "ditto", "fedbn", "feddg", "scaffold", "local", "central")
ABLATIONS = ("omnifm-noretrieval", "omnifm-noeca", "omnifm-noprompt", "omnifm-noalign")
SENSITIVITY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("omnifm lambda=0.01", {"align_weight": 0.01}),
    ("omnifm lambda=1", {"align_weight": 1.0}),
    ("omnifm top_k=1", {"top_k": 1}),
    ("omnifm top_k=4", {"top_k": 4}),
)
GROUPS = ("main", "ablation", "sensitivity")


@dataclass(frozen=True)
class Preset:
    """A grid: main algorithms x settings x seeds, plus OmniFM ablations and sensitivity on cross-modality."""

    name: str
    algorithms: tuple[str, ...]
    settings: tuple[str, ...]
    seeds: tuple[int, ...]
    rounds: int
    data: DataConfig
    train: dict[str, Any]
    groups: tuple[str, ...] = ("main",)
    sensitivity_seeds: tuple[int, ...] = (0,)
    spec_args: dict[str, Any] = field(default_factory=lambda: dict(SPEC_ARGS))
    bank_args: dict[str, Any] = field(default_factory=lambda: dict(BANK_ARGS))
    label_suffix: str = ""


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        algorithms=("omnifm", "fedavg", "local"),
        settings=("cross-modality",),
        seeds=(0,),
        rounds=4,
        data=DataConfig(sites=3, cases=8, shape=(32, 32, 16)),
        train=dict(TRAIN, local_epochs=1),
    ),
    "full": Preset(
        name="full",
        algorithms=MAIN_ALGORITHMS,
        settings=SETTINGS,
        seeds=(0, 1, 2),
        rounds=8,
        data=DataConfig(sites=3, cases=12, shape=(48, 48, 16)),
        train=dict(TRAIN),
        groups=GROUPS,
        sensitivity_seeds=(0,),
    ),
}


def get_preset(name: str) -> Preset:
    """Look a preset up; the error lists the names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def customize(
    preset: Preset,
    algorithms: Sequence[str] | None = None,
    settings: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    rounds: int | None = None,
    groups: Sequence[str] | None = None,
    spec_overrides: dict[str, Any] | None = None,
    bank_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> Preset:
    """The preset with command-line overrides (``None`` keeps the preset's value).

    ``spec_overrides`` / ``bank_overrides`` / ``train_overrides`` change run-spec / knowledge-bank /
    :class:`~omnifm.engine.TrainConfig` arguments for every run and are appended to the runs' labels (e.g. ``omnifm max_size=256``), so they never mix with
    the preset's own results in a table.
    """
    changes: dict[str, Any] = {}
    overrides = {**(spec_overrides or {}), **(bank_overrides or {}), **(train_overrides or {})}
    if overrides:
        changes["spec_args"] = {**preset.spec_args, **(spec_overrides or {})}
        changes["bank_args"] = {**preset.bank_args, **(bank_overrides or {})}
        changes["train"] = {**preset.train, **(train_overrides or {})}
        changes["label_suffix"] = " " + " ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    if algorithms:
        changes["algorithms"] = tuple(algorithms)
    if settings:
        changes["settings"] = tuple(check_setting(s) for s in settings)
    if seeds:
        changes["seeds"] = tuple(int(s) for s in seeds)
        changes["sensitivity_seeds"] = tuple(s for s in preset.sensitivity_seeds if s in changes["seeds"]) or changes["seeds"][:1]
    if rounds is not None:
        changes["rounds"] = int(rounds)
    if groups:
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown groups {unknown}; choose from {list(GROUPS)}")
        changes["groups"] = tuple(groups)
    return dataclasses.replace(preset, **changes)


def build_grid(preset: Preset) -> list[RunConfig]:
    """Every run of a preset, most important first (a cut-short run still has the main cross-modality table):
    main cross-modality, ablations, the other settings' main runs, sensitivity."""

    def run(algorithm: str, setting: str, seed: int, group: str, label: str = "", **spec: Any) -> RunConfig:
        return RunConfig(
            algorithm, setting, seed, preset.rounds, preset.data, dict(preset.train),
            {**preset.spec_args, **spec}, dict(preset.bank_args), group, (label or algorithm) + preset.label_suffix,
        )

    main = [(s, seed) for s in preset.settings for seed in preset.seeds] if "main" in preset.groups else []
    first = [key for key in main if key[0] == "cross-modality"]
    runs = [run(a, s, seed, "main") for s, seed in first for a in preset.algorithms]
    if "ablation" in preset.groups:
        runs += [run(a, "cross-modality", seed, "ablation") for seed in preset.seeds for a in ABLATIONS]
    runs += [run(a, s, seed, "main") for s, seed in main if (s, seed) not in first for a in preset.algorithms]
    if "sensitivity" in preset.groups:
        runs += [
            run("omnifm", "cross-modality", seed, "sensitivity", label, **spec)
            for seed in preset.sensitivity_seeds for label, spec in SENSITIVITY
        ]
    return runs
