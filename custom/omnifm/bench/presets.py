"""Named grids: ``quick`` (a smoke run, minutes) and ``full`` (the documented benchmark).

Protocol of a preset with a learning-rate grid (``full``):

1. **Tuning.** Every algorithm of the preset runs once per learning rate of :data:`LR_GRID` on the
   *tuning seeds* (disjoint from the reporting seeds), in the tuning setting. Its score is the
   validation Dice (mean over sites) averaged over the last ``last_k`` rounds, averaged over the
   tuning seeds; the best learning rate is kept (:func:`omnifm.bench.tune.select_learning_rates`).
   Every algorithm gets the same budget (runs x rounds x epochs). Ablations and sensitivity
   variants use OmniFM's learning rate.
2. **Reporting.** Every algorithm runs with its learning rate on the reporting seeds in every
   setting. Per-round numbers are validation Dice; the test split is evaluated once after the last
   round (:mod:`omnifm.bench.runner`) and is what the final tables and paired tests use.

Everything else is one shared setting (:data:`TRAIN`, the job's UNet and OmniFM sizes, Adam state
kept across rounds with a cosine learning-rate decay over the rounds).

``cls-quick`` is the classification benchmark (paper Table 1) on the same phantom federation,
cases and splits: the task ``{"name": "classification", "class_skew": alpha}`` for each alpha of
:data:`CLASS_SKEWS` (``task_variants``), every federated method also at 50 % client participation
(``participations``; the references Local and Central only at 100 %), the classification job's
ResNet-18 topology (:data:`CLS_SPEC_ARGS`). It tunes the learning rate the same way, in its
``tuning_task`` at full participation. ``cls-skew`` is the same at full participation only, for
every alpha of :data:`CLASS_SKEWS_ALL` (Dirichlet 0.1, 0.5 and none) and 5 seeds.

``fusion-quick`` is the image-fusion benchmark (paper Table 7) on the ``fusion-pairs`` federation
(CT-, PET- and SPECT-with-MRI sites, as ``jobs/omnifm_fusion``): the methods of Table 7 that run
here (FedAvg, FedProx, Ditto, FedDyn, MOON, OmniFM) and the references Local and Central, the
fusion job's task, network and training (:data:`FUSION_SPEC_ARGS`, :data:`FUSION_TRAIN`), ranked by
the task's headline ``ssim_w``; the average and max-selection fusions of the same slices are in
every record beside it (``ssim_w_avg``, ``ssim_w_max``).

``vqa-quick`` is the VQA benchmark (paper section 4.3, Task 2) on the ``modality-clients``
federation (one site per modality: T1CE, T2, FLAIR, CT, PET, SPECT, as ``jobs/omnifm_vqa``): the
methods the issue names for it (FedAvg, FedProx, FedDyn, FedPer, OmniFM) and Local and Central,
the VQA job's task, network and training (:data:`VQA_SPEC_ARGS`, :data:`VQA_TRAIN`), ranked by
the task's headline ``accuracy`` (answerable questions); the constant-answer baseline
``majority`` is in every record beside it.

``fedunetmm-quick`` is FedUNetMM (seed 004) against the single-sequence UNet: the same three sites,
cases, splits and seeds in two settings, ``sequence-subsets`` (each site reads every MR sequence it
holds, ``jobs/omnifm_seg_fedunetmm``'s subsets, with the job's FedUNetMM: :data:`FEDUNETMM_SPEC_ARGS`)
and ``sequence-subsets-flair`` (each site reads only FLAIR, the one sequence every subset has, with
the default segmentation job's UNet: :data:`UNET_SPEC_ARGS`), under FedAvg and OmniFM, with Local and
Central as references in both arms. The run spec differs per setting (``setting_spec_args``); the learning rate
is tuned per algorithm *and setting* (``tuning_settings``), so each network gets its own; training
(:data:`FEDUNETMM_TRAIN`, the FedUNetMM job's), rounds and data are shared. The report adds a paired
table of each method across the two settings (:data:`omnifm.bench.settings.BASELINE_SETTINGS`).

The algorithm lists are plain tuples below (:data:`FULL_ALGORITHMS`, :data:`QUICK_ALGORITHMS`);
edit them there. Every name must be in :data:`omnifm.algorithms.ALGORITHMS`; a missing one stops
the grid with the list of known names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omnifm.algorithms import ALGORITHMS
from omnifm.bench.names import GROUPS, PRESET_NAMES
from omnifm.bench.runner import RunConfig
from omnifm.bench.settings import DataConfig, check_setting
from omnifm.bench.tune import tuning_key
from omnifm.tasks.classification.network import DEFAULT_CLS_MODEL

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
# Shared training setting; the learning rate is the default of runs without tuning (quick preset).
TRAIN: dict[str, Any] = {"local_epochs": 2, "batch_size": 8, "learning_rate": 1e-2}
LR_GRID = (3e-2, 1e-1, 3e-1)  # grown upwards while methods chose its top; 3e-3 and 1e-2 were never chosen
# the job's bank (jobs/omnifm_seg/app/config/config_fed_server.json)
BANK_ARGS = {"rho": 1.0, "delta": 0.1, "prune_window": 3, "max_size": 64, "merge_threshold": 0.9, "momentum": 0.5, "max_age": 3}

# ---- the algorithm lists (edit here) -------------------------------------------------------------
FULL_ALGORITHMS = (
    "omnifm", "fedper", "fedper-fusion", "omnifm-placebo", "fedrep", "feddyn",
    "fedavg", "fedprox", "ditto", "fedbn", "feddg", "scaffold", "moon", "local", "central",
)
QUICK_ALGORITHMS = ("omnifm", "fedper", "local", "central")
# The hard case (native T1 added as a sixth site) with fewer methods: the references and the closest peers.
HARD_CASE_ALGORITHMS = ("omnifm", "fedper", "local", "central")
ABLATIONS = ("omnifm-noretrieval", "omnifm-noeca", "omnifm-noprompt", "omnifm-noalign")
# lambda (SPAlign + variance floor weight) and top_k against the defaults 0.1 and 2, read on validation Dice.
SENSITIVITY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("omnifm lambda=0.01", {"align_weight": 0.01}),
    ("omnifm lambda=1", {"align_weight": 1.0}),
    ("omnifm top_k=1", {"top_k": 1}),
    ("omnifm top_k=4", {"top_k": 4}),
)
REFERENCE = "omnifm"  # the method every paired comparison is against

# ---- classification (cls-quick) ------------------------------------------------------------------
# the classification job's network (jobs/omnifm_cls: MONAI ResNet-18 topology, widths 8-16-32-64); classes set the outputs
CLS_SPEC_ARGS: dict[str, Any] = {**SPEC_ARGS, "model": {k: v for k, v in DEFAULT_CLS_MODEL.items() if k != "out_channels"}}
CLS_ALGORITHMS = ("omnifm", "omnifm-placebo", "fedper", "fedbn", "fedavg", "local", "central")
CLASS_SKEWS = (0.5, 0.0)  # cls-quick's Dirichlet alphas of the label skew across sites (0: none)
CLASS_SKEWS_ALL = (0.1, 0.5, 0.0)  # cls-skew's: the Dirichlet(0.1) and (0.5), and none
# the job's batch (jobs/omnifm_cls); a grid one step below LR_GRID: at 1e-1 OmniFM's tokens collapsed on the tuning seed
CLS_TRAIN: dict[str, Any] = {"local_epochs": 2, "batch_size": 32, "learning_rate": 1e-2}
CLS_LR_GRID = (1e-2, 3e-2, 1e-1)

# ---- image fusion (fusion-quick) -----------------------------------------------------------------
# jobs/omnifm_fusion's persistor args (tests/unit/bench/test_bench_presets.py keeps them equal); the task's
# other settings (inputs, min_head_fraction, mse_weight, weighting) are its defaults, which the job states
FUSION_TASK: dict[str, Any] = {"kind": "image_fusion", "temperature": 4.0}
FUSION_SPEC_ARGS: dict[str, Any] = {
    **SPEC_ARGS,
    "task": FUSION_TASK,
    "model": {"spatial_dims": 2, "in_channels": 2, "channels": 32, "growth": 8, "dense_layers": 3, "shuffle": 8},
    "omnifm": {"spectral_dim": 32, "num_suffix_tokens": 4, "fusion_heads": 1},
}
FUSION_ALGORITHMS = ("omnifm", "fedavg", "fedprox", "ditto", "feddyn", "moon", "local", "central")
FUSION_TRAIN: dict[str, Any] = {"local_epochs": 2, "batch_size": 16, "learning_rate": 3e-3}  # the fusion job's
FUSION_LR_GRID = (1e-3, 3e-3, 1e-2)
# 3 sites (one per source modality) x 10 cases of the job's 64x64x12: 4 train / 2 validation / 4 test
FUSION_DATA = DataConfig(sites=3, cases=10, shape=(64, 64, 12), val_fraction=0.2, test_fraction=0.4, min_cases=4)

# ---- VQA (vqa-quick) ------------------------------------------------------------------------------
# jobs/omnifm_vqa's persistor args (tests/unit/bench/test_bench_presets.py keeps them equal)
VQA_SPEC_ARGS: dict[str, Any] = {
    **SPEC_ARGS,
    "task": {"kind": "vqa", "mirror": True},
    "model": {"layers": [2, 2, 2, 2], "block_inplanes": [8, 16, 32, 64], "norm": "instance_affine", "stem_stride": 2,
              "head_grid": 2, "embed_dim": 32, "hidden": 64},
    "omnifm": {"spectral_dim": 32, "num_suffix_tokens": 4},
}
VQA_ALGORITHMS = ("omnifm", "fedavg", "fedprox", "feddyn", "fedper", "local", "central")
VQA_TRAIN: dict[str, Any] = {"local_epochs": 2, "batch_size": 32, "learning_rate": 3e-3}  # the VQA job's
VQA_LR_GRID = (1e-3, 3e-3, 1e-2)
# 6 sites (one per modality) x 16 cases of the job's 64x64x8: 6 train / 4 validation / 6 test (slices are the unit;
# with 2 validation cases a site could have no slice to ask about)
VQA_DATA = DataConfig(sites=6, cases=16, shape=(64, 64, 8), val_fraction=0.25, test_fraction=0.375, min_cases=4)

# ---- FedUNetMM vs the single-sequence UNet (fedunetmm-quick) ----------------------------------------
# jobs/omnifm_seg_fedunetmm's persistor args (tests/unit/bench/test_bench_fedunetmm.py keeps them equal)
SEG_TASK: dict[str, Any] = {
    "kind": "segmentation",
    "classes": ["background", "necrotic", "edema", "enhancing"],
    "regions": {"WT": ["necrotic", "edema", "enhancing"], "TC": ["necrotic", "enhancing"], "ET": ["enhancing"]},
}  # the default segmentation task, stated (a bare {"kind": "segmentation"} would score per class)
FEDUNETMM_SPEC_ARGS: dict[str, Any] = {
    **SPEC_ARGS,
    "task": {**SEG_TASK, "inputs": {"t1": ["t1"], "t1ce": ["t1ce"], "t2": ["t2"], "flair": ["flair"]}},
    "model": {"kind": "fedunetmm", "layers": [2, 2, 2, 2], "block_inplanes": [8, 16, 32, 64], "heads": 2,
              "positional": "last", "dropout": 0.0, "deep_supervision": True, "kv_grid": 8},
    "omnifm": {"spectral_dim": 32, "num_suffix_tokens": 4},
}
# the single-sequence baseline: the default segmentation job's UNet (jobs/omnifm_seg) on one image per case
UNET_SPEC_ARGS: dict[str, Any] = {**SPEC_ARGS, "task": dict(SEG_TASK), "model": dict(MODEL)}
FEDUNETMM_ALGORITHMS = ("omnifm", "fedavg", "local", "central")
FEDUNETMM_TRAIN: dict[str, Any] = {"local_epochs": 2, "batch_size": 16, "learning_rate": 3e-3}  # the FedUNetMM job's
FEDUNETMM_LR_GRID = (3e-3, 1e-2, 3e-2)  # the job's 3e-3 and two steps up (the UNet chose 3e-2..3e-1 in `full`)
# 3 sites (the job's subsets) x 12 cases of the job's 64x64x16: 5 train / 3 validation / 4 test
FEDUNETMM_DATA = DataConfig(sites=3, cases=12, shape=(64, 64, 16), val_fraction=0.25, test_fraction=0.34, min_cases=4)

# The data-scarce regime: 4 training cases per site, 3 validation, 7 test (benchmarks/README.md, "Headroom
# pilot": Central - Local +0.063 test Dice over 2 seeds here; 48x48 gave +0.056 at ~3x the cost, 2 training
# cases +0.049, more epochs or lr 3e-2 ~0). Validation and test are larger than training so that model
# selection and the final table are less noisy.
SCARCE = DataConfig(sites=5, cases=14, shape=(32, 32, 16), val_fraction=0.22, test_fraction=0.5, min_cases=4)


@dataclass(frozen=True)
class Preset:
    """A grid: main algorithms x settings x reporting seeds, plus OmniFM ablations and sensitivity.

    Args:
        lr_grid: learning rates tried per algorithm on ``tuning_seeds`` (empty: no tuning, every run
            uses ``train["learning_rate"]``).
        tuning_seeds: seeds of the tuning runs; must not overlap ``seeds``.
        tuning_setting: the setting the tuning runs use.
        last_k: rounds averaged for the tuning score and the report's "mean of the last K rounds".
        setting_algorithms: ``((setting, algorithms), ...)``: a smaller algorithm list for some
            settings (default: ``algorithms`` everywhere).
        ablation_seeds: reporting seeds of the ablation group (default: ``seeds``).
        setting_seeds: ``((setting, seeds), ...)``: fewer reporting seeds for some settings (default:
            ``seeds`` everywhere).
        task_variants: the main group runs once per task entry (e.g. one per class skew); empty:
            ``spec_args``' task (default segmentation) only.
        participations: client participation ratios of the main group's federated algorithms
            (the non-federated ones and ``local`` run at 1 only).
        tuning_task: the task entry of the tuning runs (default: the first of ``task_variants``).
        setting_spec_args: ``((setting, {run-spec args}), ...)``: run-spec arguments that replace
            ``spec_args``' in that setting (e.g. another network for a baseline setting).
        tuning_settings: tune in each of these settings (each with its algorithms), choosing a learning
            rate per algorithm and setting; empty: ``tuning_setting`` only, one rate per algorithm.
        seed_major: order the main runs seed by seed across the settings (a cut-short grid then still
            has paired seeds in every setting); default setting by setting.
    """

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
    lr_grid: tuple[float, ...] = ()
    tuning_seeds: tuple[int, ...] = ()
    tuning_setting: str = "cross-modality"
    last_k: int = 3
    setting_algorithms: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ablation_seeds: tuple[int, ...] = ()
    setting_seeds: tuple[tuple[str, tuple[int, ...]], ...] = ()
    task_variants: tuple[dict[str, Any], ...] = ()
    participations: tuple[float, ...] = (1.0,)
    tuning_task: dict[str, Any] | None = None
    setting_spec_args: tuple[tuple[str, dict[str, Any]], ...] = ()
    tuning_settings: tuple[str, ...] = ()
    seed_major: bool = False

    def algorithms_for(self, setting: str) -> tuple[str, ...]:
        """The main-group algorithms run in ``setting``."""
        return dict(self.setting_algorithms).get(setting, self.algorithms)

    def __post_init__(self) -> None:
        check_names(self.algorithms)
        for setting, algorithms in self.setting_algorithms:
            check_setting(setting)
            check_names(algorithms)
        for setting in (*dict(self.setting_spec_args), *self.tuning_settings):
            check_setting(setting)
        if set(self.tuning_seeds) & set(self.seeds):
            raise ValueError(f"tuning seeds {sorted(self.tuning_seeds)} overlap the reporting seeds {sorted(self.seeds)}")
        if self.lr_grid and not self.tuning_seeds:
            raise ValueError("a preset with an lr_grid needs tuning_seeds")
        if not 1 <= self.last_k <= self.rounds:
            raise ValueError(f"last_k must be in [1, rounds={self.rounds}], got {self.last_k}")
        if not self.participations or not all(0 < p <= 1 for p in self.participations):
            raise ValueError(f"participations must be in (0, 1], got {self.participations}")


def check_names(algorithms: Sequence[str]) -> tuple[str, ...]:
    """The names if all are in the registry; else a ``ValueError`` listing the missing and the known ones."""
    missing = [a for a in algorithms if a not in ALGORITHMS]
    if missing:
        raise ValueError(f"algorithms {missing} are not in omnifm.algorithms.ALGORITHMS (known: {sorted(ALGORITHMS)})")
    return tuple(algorithms)


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        algorithms=QUICK_ALGORITHMS,
        settings=("cross-modality",),
        seeds=(0,),
        rounds=6,
        data=DataConfig(sites=5, cases=10, shape=(32, 32, 16), val_fraction=0.2, test_fraction=0.4, min_cases=4),
        train=dict(TRAIN),
        last_k=2,
    ),
    "full": Preset(
        name="full",
        algorithms=FULL_ALGORITHMS,
        settings=("cross-modality", "cross-modality+t1"),
        seeds=(0, 1, 2, 3, 4),
        rounds=12,
        data=SCARCE,
        train=dict(TRAIN),
        groups=GROUPS,
        sensitivity_seeds=(0, 1),
        lr_grid=LR_GRID,
        tuning_seeds=(100,),
        last_k=3,
        setting_algorithms=(("cross-modality+t1", HARD_CASE_ALGORITHMS),),
        ablation_seeds=(0, 1, 2),
        setting_seeds=(("cross-modality+t1", (0, 1, 2)),),
    ),
    "cls-quick": Preset(
        name="cls-quick",
        algorithms=CLS_ALGORITHMS,
        settings=("cross-modality",),
        seeds=(0, 1, 2),
        rounds=8,
        data=SCARCE,
        train=dict(CLS_TRAIN),
        spec_args=dict(CLS_SPEC_ARGS),
        lr_grid=CLS_LR_GRID,
        tuning_seeds=(100,),
        last_k=3,
        task_variants=tuple({"name": "classification", "class_skew": a} for a in CLASS_SKEWS),
        participations=(1.0, 0.5),
        tuning_task={"name": "classification", "class_skew": 0.5},
    ),
    "fusion-quick": Preset(
        name="fusion-quick",
        algorithms=FUSION_ALGORITHMS,
        settings=("fusion-pairs",),
        seeds=(0, 1, 2),
        rounds=6,
        data=FUSION_DATA,
        train=dict(FUSION_TRAIN),
        spec_args=dict(FUSION_SPEC_ARGS),
        lr_grid=FUSION_LR_GRID,
        tuning_seeds=(100,),
        tuning_setting="fusion-pairs",
        last_k=2,
    ),
    "vqa-quick": Preset(
        name="vqa-quick",
        algorithms=VQA_ALGORITHMS,
        settings=("modality-clients",),
        seeds=(0, 1, 2),
        rounds=4,
        data=VQA_DATA,
        train=dict(VQA_TRAIN),
        spec_args=dict(VQA_SPEC_ARGS),
        lr_grid=VQA_LR_GRID,
        tuning_seeds=(100,),
        tuning_setting="modality-clients",
        last_k=2,
    ),
    "fedunetmm-quick": Preset(
        name="fedunetmm-quick",
        algorithms=FEDUNETMM_ALGORITHMS,
        settings=("sequence-subsets", "sequence-subsets-flair"),
        seeds=(0, 1, 2),
        rounds=6,
        data=FEDUNETMM_DATA,
        train=dict(FEDUNETMM_TRAIN),
        spec_args=dict(FEDUNETMM_SPEC_ARGS),
        lr_grid=FEDUNETMM_LR_GRID,
        tuning_seeds=(100,),
        tuning_setting="sequence-subsets",
        last_k=2,
        setting_spec_args=(("sequence-subsets-flair", dict(UNET_SPEC_ARGS)),),
        tuning_settings=("sequence-subsets", "sequence-subsets-flair"),
        seed_major=True,
    ),
}


# cls-quick's task, network, training and tuning at every skew, 5 seeds, all sites per round
PRESETS["cls-skew"] = dataclasses.replace(PRESETS["cls-quick"], name="cls-skew", seeds=(0, 1, 2, 3, 4), participations=(1.0,),
                                         task_variants=tuple({"name": "classification", "class_skew": a} for a in CLASS_SKEWS_ALL))

if tuple(sorted(PRESETS)) != tuple(sorted(PRESET_NAMES)):  # the torch-free names the CLI's --help offers
    raise RuntimeError(f"omnifm.bench.names.PRESET_NAMES {PRESET_NAMES} != the presets {sorted(PRESETS)}")


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
    lr_grid: Sequence[float] | None = None,
    tuning_seeds: Sequence[int] | None = None,
    data_overrides: dict[str, Any] | None = None,
    participations: Sequence[float] | None = None,
) -> Preset:
    """The preset with command-line overrides (``None`` keeps the preset's value).

    ``spec_overrides`` / ``bank_overrides`` / ``train_overrides`` change run-spec / knowledge-bank /
    :class:`~omnifm.engine.TrainConfig` arguments for every run and are appended to the runs' labels
    (e.g. ``omnifm max_size=256``), so they never mix with the preset's own results in a table.
    A ``learning_rate`` override switches tuning off. ``lr_grid=[]`` switches tuning off too.
    ``data_overrides`` change :class:`~omnifm.bench.settings.DataConfig` fields (the same for every run).
    ``participations`` replaces the client participation ratios of the main group.
    """
    changes: dict[str, Any] = {}
    if data_overrides:
        fields = {f.name for f in dataclasses.fields(DataConfig)}
        unknown = sorted(set(data_overrides) - fields)
        if unknown:
            raise ValueError(f"unknown data fields {unknown}; choose from {sorted(fields)}")
        data = {**data_overrides, **({"shape": tuple(data_overrides["shape"])} if "shape" in data_overrides else {})}
        changes["data"] = dataclasses.replace(preset.data, **data)
    overrides = {**(spec_overrides or {}), **(bank_overrides or {}), **(train_overrides or {})}
    if overrides:
        changes["spec_args"] = {**preset.spec_args, **(spec_overrides or {})}
        changes["setting_spec_args"] = tuple((s, {**a, **(spec_overrides or {})}) for s, a in preset.setting_spec_args)
        changes["bank_args"] = {**preset.bank_args, **(bank_overrides or {})}
        changes["train"] = {**preset.train, **(train_overrides or {})}
        changes["label_suffix"] = " " + " ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    if algorithms:
        changes["algorithms"] = tuple(algorithms)
        changes["setting_algorithms"] = ()
    if settings:
        changes["settings"] = tuple(check_setting(s) for s in settings)
        changes["tuning_settings"] = tuple(s for s in preset.tuning_settings if s in changes["settings"])
    if seeds:
        changes["seeds"] = tuple(int(s) for s in seeds)
        changes["sensitivity_seeds"] = tuple(s for s in preset.sensitivity_seeds if s in changes["seeds"]) or changes["seeds"][:1]
        changes["ablation_seeds"] = tuple(s for s in preset.ablation_seeds if s in changes["seeds"])
        changes["setting_seeds"] = ()
    if rounds is not None:
        changes["rounds"] = int(rounds)
        changes["last_k"] = min(preset.last_k, int(rounds))
    if groups:
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown groups {unknown}; choose from {list(GROUPS)}")
        changes["groups"] = tuple(groups)
    if participations:
        changes["participations"] = tuple(float(p) for p in participations)
    if tuning_seeds:
        changes["tuning_seeds"] = tuple(int(s) for s in tuning_seeds)
    if lr_grid is not None:
        changes["lr_grid"] = tuple(float(v) for v in lr_grid)
    if "learning_rate" in (train_overrides or {}):
        changes["lr_grid"] = ()
    if not changes.get("lr_grid", preset.lr_grid):
        changes["tuning_seeds"] = ()
    return dataclasses.replace(preset, **changes)


def _run(preset: Preset, algorithm: str, setting: str, seed: int, group: str, lr: float | None = None,
         label: str = "", participation: float = 1.0, **spec: Any) -> RunConfig:
    train = dict(preset.train, **({"learning_rate": lr} if lr is not None else {}))
    return RunConfig(
        algorithm, setting, seed, preset.rounds, preset.data, train,
        {**spec_args_for(preset, setting), **spec}, dict(preset.bank_args), group,
        (label or algorithm) + preset.label_suffix, participation,
    )


def spec_args_for(preset: Preset, setting: str) -> dict[str, Any]:
    """The run-spec arguments of ``setting``'s runs: ``spec_args``, replaced by ``setting_spec_args``' where given
    (command-line ``--spec-arg`` overrides apply to both)."""
    return dict(dict(preset.setting_spec_args).get(setting, preset.spec_args))


def _tuning_task(preset: Preset) -> dict[str, Any]:
    task = preset.tuning_task or (preset.task_variants[0] if preset.task_variants else None)
    return {"task": dict(task)} if task else {}


def tuning_grid(preset: Preset) -> list[RunConfig]:
    """The tuning runs: every algorithm x learning rate x tuning seed, in the tuning setting (or each of the
    ``tuning_settings``) and task, all sites."""
    if preset.tuning_settings:  # one learning rate per algorithm and setting (omnifm.bench.tune)
        return [
            _run(preset, a, s, seed, "tuning", lr, f"{a} lr={lr:g}", **_tuning_task(preset))
            for s in preset.tuning_settings for seed in preset.tuning_seeds for a in preset.algorithms_for(s)
            for lr in preset.lr_grid
        ]
    return [
        _run(preset, a, preset.tuning_setting, seed, "tuning", lr, f"{a} lr={lr:g}", **_tuning_task(preset))
        for seed in preset.tuning_seeds for a in preset.algorithms for lr in preset.lr_grid
    ]


def _participating(algorithm: str, participation: float) -> bool:
    """Whether ``algorithm`` runs at ``participation``: below 1 only federations that exchange something
    (not ``central``, not ``local``, whose every parameter is personal)."""
    algo = ALGORITHMS[algorithm]
    return participation == 1 or (algo.federated and "all" not in algo.personal)


def build_grid(preset: Preset, learning_rates: Mapping[str, float] | None = None) -> list[RunConfig]:
    """Every reporting run of a preset, most important first (a cut-short run still has the main
    cross-modality table): main cross-modality, ablations, the other settings' main runs, sensitivity.

    Args:
        preset: the grid.
        learning_rates: per algorithm (or per ``algorithm@setting``, :func:`omnifm.bench.tune.tuning_key`), the
            tuned learning rate (:func:`omnifm.bench.tune.select_learning_rates`); missing algorithms use
            ``preset.train["learning_rate"]``; ablations and sensitivity use :data:`REFERENCE`'s.
    """
    rates = dict(learning_rates or {})
    reference_lr = rates.get(REFERENCE)

    def run(algorithm: str, setting: str, seed: int, group: str, label: str = "", participation: float = 1.0,
            **spec: Any) -> RunConfig:
        lr = rates.get(tuning_key(algorithm, setting), rates.get(algorithm)) if group == "main" else reference_lr
        return _run(preset, algorithm, setting, seed, group, lr, label, participation, **spec)

    if preset.task_variants:
        return [
            run(a, s, seed, "main", "", participation, task=dict(task))
            for task in preset.task_variants for participation in preset.participations for s in preset.settings
            for seed in preset.seeds for a in preset.algorithms_for(s) if _participating(a, participation)
        ] if "main" in preset.groups else []
    seeds_of = dict(preset.setting_seeds)
    main = [(s, seed) for s in preset.settings for seed in seeds_of.get(s, preset.seeds)] if "main" in preset.groups else []
    if preset.seed_major:
        main.sort(key=lambda key: key[1])  # stable: the settings' order within a seed
    first = [key for key in main if key[0] == "cross-modality"]
    runs = [run(a, s, seed, "main") for s, seed in first for a in preset.algorithms_for(s)]
    if "ablation" in preset.groups:
        runs += [run(a, "cross-modality", seed, "ablation") for seed in preset.ablation_seeds or preset.seeds for a in ABLATIONS]
    runs += [run(a, s, seed, "main") for s, seed in main if (s, seed) not in first for a in preset.algorithms_for(s)]
    if "sensitivity" in preset.groups:
        runs += [
            run(REFERENCE, "cross-modality", seed, "sensitivity", label, **spec)
            for seed in preset.sensitivity_seeds for label, spec in SENSITIVITY
        ]
    return runs
