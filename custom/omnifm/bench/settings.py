"""The benchmark's data settings: which phantom cases each simulated site holds.

Every setting goes through the same loading code as a FLARE site (:func:`omnifm.data.site.load_site_data`:
datalist, integrity gate, per-modality normalisation (CT: brain window), train/val/test split), so a
benchmark site sees exactly the arrays a simulated FLARE client would see. The test split
(``DataConfig.test_fraction``) is evaluated once, after the last round, for the final table only.

- ``cross-modality``: site ``k`` images modality ``k`` of :data:`omnifm.data.phantom.SITE_MODALITIES`
  (T1CE, CT, T2, PET, FLAIR: the tumour is visible in each but looks different) -- the same config
  the job's simulator fallback uses (:func:`omnifm.data.site.simulator_config`), so FLARE and
  in-process runs share their data.
- ``cross-modality+t1``: the ``cross-modality`` sites plus one more site imaging native T1, where
  the tumour is barely visible (the hard case; the report shows that site separately).
- ``same-modality``: the control; every site images T1CE, each with its own acquisition (sequence
  timing, bias field, noise, slice thickness) and its own anatomy draws.
- ``same-modality-t2``: the same control with T2.
- ``dirichlet``: cross-modality sites with a label and size skew. Site sizes are drawn from
  ``Dirichlet(alpha)`` over the pooled ``sites x cases`` case budget (at least ``min_cases`` each)
  and each site's tumour-presence fraction from ``Dirichlet(alpha, alpha)`` (i.e. ``Beta``). Each
  site picks that many tumour / tumour-free cases from a larger phantom pool rendered in its own
  modality. Every site keeps at least one tumour case in training, validation and test (else its
  Dice is undefined); the achieved sizes and fractions are reported, not only the drawn ones.
- ``fusion-pairs``: the image-fusion federation of ``jobs/omnifm_fusion``: site ``k`` holds paired
  cases (one anatomy rendered in two modalities) of :data:`FUSION_SOURCES` ``[k mod 3]`` (CT, PET,
  SPECT) with native T1 MRI. Only a task with input slots (``image_fusion``) can read it.
- ``modality-clients``: the paper's Task 2 (modality-specific clients, ``jobs/omnifm_vqa``): site
  ``k`` images :data:`MODALITY_CLIENTS` ``[k mod 6]`` (T1CE, T2, FLAIR, CT, PET, SPECT).
- ``sequence-subsets``: the FedUNetMM federation of ``jobs/omnifm_seg_fedunetmm``: site ``k`` holds
  paired cases (one anatomy rendered in each MR sequence) of :data:`SEQUENCE_SUBSETS` ``[k mod 3]``
  (all four; T1CE + T2 + FLAIR; T1 + FLAIR). Only a task with input slots (FedUNetMM's) can read it.
- ``sequence-subsets-flair``: the single-sequence baseline of ``sequence-subsets``: **the same
  cases** (the same paired phantom files, labels and split) of which each site reads only its
  :data:`SEQUENCE_BASELINE` image (FLAIR, the one sequence every subset has), one image per case,
  for a single-image model (the UNet). :data:`BASELINE_SETTINGS` pairs the two; the report compares
  the same method across them on the same seeds and sites.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnifm.bench.names import SETTINGS
from omnifm.data.loading import split_cases
from omnifm.data.phantom import read_phantom_manifest, write_phantom_site
from omnifm.data.phantom.site_writer import write_json
from omnifm.data.site import BRATS_LABEL_MAP, SiteData, load_site_data, simulator_config, site_index
from omnifm.data.site_config import SiteConfig, parse_site_config
from omnifm.tasks import Task
from omnifm.validation import check_int, check_range

HARD_MODALITY = "t1"
FUSION_SOURCES = ("ct", "pet", "spect")  # fusion-pairs: site k's source A (source B: FUSION_MRI), as in jobs/omnifm_fusion
FUSION_MRI = "t1"
# sequence-subsets: site k's MR sequences, as jobs/omnifm_seg_fedunetmm's phantom_modalities (the first fixes the grid)
SEQUENCE_SUBSETS = (("t1", "t1ce", "t2", "flair"), ("t1ce", "t2", "flair"), ("t1", "flair"))
SEQUENCE_BASELINE = "flair"  # in every subset: the single-sequence baseline reads it at every site
SEQUENCE_DATALIST = "datalist_flair.json"
PAIRED_SETTINGS = ("fusion-pairs", "sequence-subsets")
# a setting -> its baseline setting on the same cases (the report's paired table across the two)
BASELINE_SETTINGS = {"sequence-subsets": "sequence-subsets-flair"}
MODALITY_CLIENTS = ("t1ce", "t2", "flair", "ct", "pet", "spect")  # modality-clients: site k's, as in jobs/omnifm_vqa
_SAME_MODALITY = {"same-modality": "t1ce", "same-modality-t2": "t2"}
DIRICHLET_DATALIST = "datalist_dirichlet.json"
_DIRICHLET_STREAM = 5  # seed-sequence tag: independent of the phantom's own random streams


@dataclass(frozen=True)
class DataConfig:
    """Size of the simulated federation (identical for every algorithm of a grid).

    Args:
        sites: number of sites.
        cases: cases per site (the pooled budget is ``sites * cases`` for ``dirichlet``).
        shape: phantom volume size ``(H, W, D)``.
        val_fraction: each site's validation share.
        test_fraction: each site's test share (evaluated once after the last round; 0: none, as
            in the FLARE job).
        alpha: Dirichlet concentration of the ``dirichlet`` setting.
        min_cases: smallest site of the ``dirichlet`` setting.
        pool_factor: ``dirichlet`` renders ``pool_factor * size`` candidate cases per site.
    """

    sites: int = 5
    cases: int = 12
    shape: tuple[int, int, int] = (32, 32, 16)
    val_fraction: float = 0.25
    test_fraction: float = 0.25
    alpha: float = 0.5
    min_cases: int = 4
    pool_factor: int = 6

    def __post_init__(self) -> None:
        check_int("sites", self.sites)
        check_int("cases", self.cases, 2)
        check_range("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        check_range("test_fraction", self.test_fraction, 0, 1, high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}")
        check_range("alpha", self.alpha, 0, low_open=True)
        check_int("min_cases", self.min_cases, 2)
        check_int("pool_factor", self.pool_factor, 1)
        if self.min_cases > self.cases:
            raise ValueError(f"min_cases ({self.min_cases}) must be <= cases ({self.cases})")
        if len(self.shape) != 3:
            raise ValueError(f"shape must be (H, W, D), got {self.shape!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shape": list(self.shape)}


def check_setting(setting: str) -> str:
    """Return ``setting`` if it is one of :data:`SETTINGS`; the error lists them."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {list(SETTINGS)}")
    return setting


def site_names(sites: int) -> list[str]:
    """``site-1``, ``site-2``, ... (the FLARE simulator's names; they fix each site's modality)."""
    return [f"site-{i + 1}" for i in range(check_int("sites", sites))]


def load_federation(
    setting: str, data: DataConfig, seed: int, root: str | Path, task: Task
) -> tuple[dict[str, SiteData], dict[str, dict[str, Any]]]:
    """Write (or reuse) a setting's phantom under ``root`` and load every site like a FLARE client.

    Args:
        setting: one of :data:`SETTINGS`.
        data: federation size.
        seed: phantom, split and (for ``dirichlet``) skew seed.
        root: cache folder; each setting and seed gets its own sub-folder.
        task: the federation's classes and regions.

    Returns:
        ``({site: SiteData}, {site: summary})`` where a summary holds the site's modality, train /
        val / test case counts and tumour-case counts (safe to log).
    """
    workspace = Path(root) / check_setting(setting) / f"seed-{check_int('seed', seed, 0)}"
    if setting in PAIRED_SETTINGS and task.input_slots is None:
        raise ValueError(f"the {setting} setting holds paired cases (two modalities per case) but the {task.name} task "
                         "reads one image per case; use a task with input slots (image_fusion; segmentation with inputs for "
                         "FedUNetMM)")
    configs = _site_configs(setting, data, seed, workspace)
    loaded = {site: load_site_data(config, workspace, site, task) for site, config in configs.items()}
    return loaded, {site: _summary(configs[site], loaded[site]) for site in loaded}


def _site_configs(setting: str, data: DataConfig, seed: int, workspace: Path) -> dict[str, SiteConfig]:
    names = site_names(data.sites + (setting == "cross-modality+t1"))
    configs = {
        site: simulator_config(site, data.cases, tuple(data.shape), data.val_fraction, seed, data.test_fraction)
        for site in names
    }
    if setting == "cross-modality+t1":
        configs[names[-1]] = dataclasses.replace(configs[names[-1]], modalities=(HARD_MODALITY,))
    if setting in _SAME_MODALITY:
        modality = _SAME_MODALITY[setting]
        return {site: dataclasses.replace(config, modalities=(modality,)) for site, config in configs.items()}
    if setting == "modality-clients":
        return {site: dataclasses.replace(config, modalities=(MODALITY_CLIENTS[i % len(MODALITY_CLIENTS)],))
                for i, (site, config) in enumerate(configs.items())}
    if setting == "fusion-pairs":
        return {site: dataclasses.replace(config, modalities=(FUSION_SOURCES[i % len(FUSION_SOURCES)], FUSION_MRI))
                for i, (site, config) in enumerate(configs.items())}
    if setting == "sequence-subsets":
        return {site: dataclasses.replace(config, modalities=sequence_subset(i)) for i, (site, config) in enumerate(configs.items())}
    if setting == "sequence-subsets-flair":
        return {site: _baseline_site(site, sequence_subset(i), data, seed, _paired_workspace(workspace))
                for i, site in enumerate(configs)}
    if setting == "dirichlet":
        plan = dirichlet_plan(data.sites, data.cases, data.alpha, seed, data.min_cases)
        return {
            site: _dirichlet_site(site, config.modalities[0], size, fraction, data, seed, workspace)
            for (site, config), (size, fraction) in zip(configs.items(), plan)
        }
    return configs


def sequence_subset(index: int) -> tuple[str, ...]:
    """Site ``index``'s (0-based) sequences in ``sequence-subsets``: :data:`SEQUENCE_SUBSETS` ``[index mod 3]``."""
    return SEQUENCE_SUBSETS[check_int("index", index, 0) % len(SEQUENCE_SUBSETS)]


def _paired_workspace(workspace: Path) -> Path:
    """The ``sequence-subsets`` workspace of the same seed (``<root>/sequence-subsets/seed-<n>``)."""
    return workspace.parent.parent / "sequence-subsets" / workspace.name


def _baseline_site(site: str, subset: tuple[str, ...], data: DataConfig, seed: int, workspace: Path) -> SiteConfig:
    """The site's ``sequence-subsets`` phantom (the very files that setting loads), read one
    :data:`SEQUENCE_BASELINE` image per case through a datalist of its own."""
    from omnifm.data.phantom.paired import write_paired_phantom_site

    if SEQUENCE_BASELINE not in subset:
        raise ValueError(f"{site} holds {list(subset)}, not the baseline sequence {SEQUENCE_BASELINE!r}")
    folder = workspace / "omnifm_phantom" / f"{site}-paired"  # where load_site_data writes the paired site
    entries = write_paired_phantom_site(folder, subset, data.cases, seed, tuple(data.shape), site_index(site))
    cases = [{"id": e["id"], "image": str(Path(e["images"][SEQUENCE_BASELINE]).relative_to(folder.resolve())),
              "label": str(Path(e["label"]).relative_to(folder.resolve())), "modality": SEQUENCE_BASELINE} for e in entries]
    write_json(folder / SEQUENCE_DATALIST, {"cases": cases}, keep_if_same=True)
    return _nifti_site(folder, SEQUENCE_DATALIST, SEQUENCE_BASELINE, data, seed)


def dirichlet_plan(sites: int, cases: int, alpha: float, seed: int, min_cases: int = 4) -> list[tuple[int, float]]:
    """Site sizes and tumour-presence fractions of the ``dirichlet`` setting.

    Sizes: ``min_cases`` each plus a multinomial split of the remaining ``sites * (cases - min_cases)``
    cases with probabilities drawn from ``Dirichlet(alpha * 1)``; they sum to ``sites * cases``.
    Fractions: the first component of ``Dirichlet(alpha, alpha)`` per site.

    Raises:
        ValueError: ``min_cases > cases`` or a non-positive ``alpha``.
    """
    check_int("sites", sites)
    check_range("alpha", alpha, 0, low_open=True)
    if check_int("min_cases", min_cases) > check_int("cases", cases):
        raise ValueError(f"min_cases ({min_cases}) must be <= cases ({cases})")
    rng = np.random.default_rng([_DIRICHLET_STREAM, check_int("seed", seed, 0)])
    shares = rng.dirichlet([alpha] * sites)
    sizes = min_cases + rng.multinomial(sites * (cases - min_cases), shares)
    fractions = rng.dirichlet([alpha, alpha], size=sites)[:, 0]
    return [(int(n), float(f)) for n, f in zip(sizes, fractions)]


def pick_cases(
    tumour_free: list[bool], size: int, fraction: float, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> list[int]:
    """Pool indices for one ``dirichlet`` site, ordered so each non-empty split part has a tumour case.

    Args:
        tumour_free: per pool case, whether it has no tumour.
        size: cases wanted (>= 2).
        fraction: wanted share of tumour cases; at least one tumour case per split part is always
            taken, and missing tumour-free cases are replaced by tumour cases.
        val_fraction: the site's validation share (the split is :func:`~omnifm.data.loading.split_cases`).
        test_fraction: the site's test share.
        seed: split and shuffle seed.

    Raises:
        ValueError: the pool has fewer than ``size`` cases or too few tumour cases.
    """
    parts = [p for p in split_cases(check_int("size", size, 2), val_fraction, seed, test_fraction) if p]
    need = len(parts)
    tumour = [i for i, free in enumerate(tumour_free) if not free]
    free = [i for i, f in enumerate(tumour_free) if f]
    if size > len(tumour_free) or len(tumour) < need:
        raise ValueError(f"pool of {len(tumour_free)} cases ({len(tumour)} with tumour) cannot give {size} cases")
    n_free = min(size - min(max(round(fraction * size), need), size), len(free))
    n_tumour = size - n_free
    if n_tumour > len(tumour):
        raise ValueError(f"pool has {len(tumour)} tumour cases, {n_tumour} needed; raise pool_factor")
    rng = np.random.default_rng([_DIRICHLET_STREAM, seed, size])
    rest = list(tumour[need:n_tumour]) + list(free[:n_free])
    rng.shuffle(rest)
    order: list[int | None] = [None] * size
    for part, case in zip(parts, tumour):
        order[part[0]] = case
    slots = iter(rest)
    return [slot if slot is not None else next(slots) for slot in order]


def _dirichlet_site(
    site: str, modality: str, size: int, fraction: float, data: DataConfig, seed: int, workspace: Path
) -> SiteConfig:
    pool_dir = workspace / "dirichlet_pool" / site
    pool = max(data.pool_factor * size, size)
    entries = write_phantom_site(pool_dir, modality, pool, seed, tuple(data.shape), site_index(site))
    flags = [bool(c["tumour_free"]) for c in read_phantom_manifest(pool_dir)["cases"]]
    chosen = pick_cases(flags, size, fraction, data.val_fraction, seed, data.test_fraction)
    datalist = {"cases": [_relative(entries[i], pool_dir) for i in chosen]}
    write_json(pool_dir / DIRICHLET_DATALIST, datalist, keep_if_same=True)
    return _nifti_site(pool_dir, DIRICHLET_DATALIST, modality, data, seed)


def _nifti_site(root: Path, datalist: str, modality: str, data: DataConfig, seed: int) -> SiteConfig:
    """The config of a NIfTI site whose ``datalist`` in ``root`` names its cases, split as ``data`` says."""
    raw = {
        "format": "nifti",
        "data_root": str(root),
        "datalist": datalist,
        "modalities": [modality],
        "label_map": BRATS_LABEL_MAP,
        "split": {"val_fraction": data.val_fraction, "test_fraction": data.test_fraction, "seed": seed},
    }
    return parse_site_config(raw, root)


def _relative(entry: dict[str, str], folder: Path) -> dict[str, str]:
    return {
        "id": entry["id"],
        "image": str(Path(entry["image"]).relative_to(folder)),
        "label": str(Path(entry["label"]).relative_to(folder)),
        "modality": entry["modality"],
    }


def _summary(config: SiteConfig, data: SiteData) -> dict[str, Any]:
    def tumours(volumes: list[dict[str, np.ndarray]]) -> int:
        return sum(bool((v["label"] > 0).any()) for v in volumes)

    return {
        "modality": "+".join(config.modalities),
        "train_cases": len(data.train),
        "val_cases": len(data.val),
        "test_cases": len(data.test),
        "train_tumour_cases": tumours(data.train),
        "val_tumour_cases": tumours(data.val),
        "test_tumour_cases": tumours(data.test),
    }
