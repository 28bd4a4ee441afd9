"""Where a site's cases come from, checked by the integrity gate before round 1.

A site's data is described by ``<site>/local/omnifm_site.json`` (see ``site_configs/README.md``).
In a real deployment a site without that file stops with an error that says how to add it: it
never trains on synthetic data by accident. Only the FLARE simulator, or a site whose config says
``"format": "phantom"``, uses the built-in synthetic phantom, and the log says so.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnifm.data.integrity import IntegrityReport, case_modalities, normalized_case, resolve_cases, verify_cases
from omnifm.data.loading import split_cases
from omnifm.data.phantom import BRATS_LABELS, modality_for_site, write_phantom_site
from omnifm.data.slots import assign_slots, to_slots
from omnifm.data.site_config import SITE_CONFIG_NAME, SiteConfig, SiteConfigError, load_site_config, parse_site_config
from omnifm.tasks import Task
from omnifm.tasks.segmentation import BRATS_CLASSES

# The phantom's raw BraTS values (0, 1, 2, 4) named as the default task's classes.
BRATS_LABEL_MAP = {str(value): name for value, name in zip(BRATS_LABELS, BRATS_CLASSES)}


@dataclass
class SiteData:
    """A site's loaded, checked cases and a log-safe description (no paths, no names, no ids).

    ``test`` is empty unless the site config sets ``split.test_fraction``; it is held out for a
    final evaluation only (the benchmark's test table), never for training or model selection.
    """

    train: list[dict[str, np.ndarray]]
    val: list[dict[str, np.ndarray]]
    description: str
    synthetic: bool
    skipped: int
    problems: list[str]
    test: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)


def site_index(site_name: str) -> int:
    """``site-3`` -> 2; other names map to a stable number (so each site gets its own modality)."""
    match = re.search(r"(\d+)$", site_name)
    return int(match.group(1)) - 1 if match else zlib.crc32(site_name.encode()) % 1000


def simulator_config(
    site_name: str, cases: int, shape: tuple[int, int, int], val_fraction: float, seed: int, test_fraction: float = 0.0,
    modalities: list[str] | None = None,
) -> SiteConfig:
    """The phantom config a simulated site uses when it has no ``omnifm_site.json``.

    The site images ``modalities`` (several: paired cases), by default
    :func:`~omnifm.data.phantom.modality_for_site` of its index; CT uses the default brain window.
    ``test_fraction`` 0 (the FLARE simulator's) gives no test split.
    """
    raw = {
        "format": "phantom",
        "modalities": list(modalities or [modality_for_site(site_index(site_name))]),
        "label_map": BRATS_LABEL_MAP,
        "split": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
        "phantom": {"cases": cases, "seed": seed, "shape": list(shape)},
    }
    return parse_site_config(raw, Path("."), check_paths=False)


def find_site_config(local_dir: str | Path, simulate: bool, fallback: SiteConfig) -> tuple[SiteConfig, str]:
    """The site's config and where it came from; without a config only the simulator may go on."""
    path = Path(local_dir) / SITE_CONFIG_NAME
    if path.is_file():
        return load_site_config(path), f"local/{SITE_CONFIG_NAME}"
    if simulate:
        return fallback, "simulator default (no site config)"
    raise SiteConfigError(
        f"this site has no {SITE_CONFIG_NAME} in its local/ folder, so it has no data to train on. Copy one of "
        "site_configs/omnifm_site.{nifti,dicom}.json there and point data_root at the data prepared with "
        "omnifm-prepare-data (or, for a demo site, site_configs/omnifm_site.phantom.json); see site_configs/README.md"
    )


def _phantom_root(config: SiteConfig, workspace_root: Path, site_name: str, task: Task) -> SiteConfig:
    """Write (or reuse) the phantom and point the config at its datalist (a case-mode task: the one with
    per-case classes, :mod:`omnifm.data.phantom.case_classes`)."""
    paired = len(config.modalities) > 1  # a default folder of its own: a single-modality phantom may live there
    root = config.data_root or workspace_root / "omnifm_phantom" / (f"{site_name}-paired" if paired else site_name)
    spec, index = config.phantom, site_index(site_name)
    if paired:
        from omnifm.data.phantom.paired import write_paired_phantom_site

        write_paired_phantom_site(root, config.modalities, spec.cases, spec.seed, spec.shape, site_index=index)
    else:
        write_phantom_site(root, config.modalities[0], spec.cases, spec.seed, spec.shape, site_index=index)
    config = dataclasses.replace(config, data_root=Path(root))
    return config if task.per_case_classes is None else _phantom_case_classes(config, task.per_case_classes)


def _phantom_case_classes(config: SiteConfig, classes: tuple[str, ...]) -> SiteConfig:
    """The phantom's datalist with a class per case (the hemisphere rule), for a case-mode task.

    Raises:
        SiteConfigError: the task's classes are not the rule's.
    """
    from omnifm.data.phantom.case_classes import HEMISPHERE_CLASSES, write_hemisphere_datalist

    if tuple(classes) != HEMISPHERE_CLASSES:
        raise SiteConfigError(
            f"the built-in phantom labels each case by the hemisphere of its tumour, classes {list(HEMISPHERE_CLASSES)}; "
            f"this job's task has classes {list(classes)} — set the task's \"classes\" to {list(HEMISPHERE_CLASSES)} "
            "(and \"mirror\": false, a left-right flip changes the side) or give the site real data")
    return dataclasses.replace(config, datalist=write_hemisphere_datalist(config.data_root))


_CACHE: dict[tuple, SiteData] = {}


def load_site_data(config: SiteConfig, workspace_root: str | Path, site_name: str, task: Task) -> SiteData:
    """Resolve, verify, load and split a site's cases (cached per process and datalist version).

    The FLARE simulator rebuilds a site's executor for every task; the cache keeps the integrity
    gate to once per site and process, and a changed datalist file invalidates it.

    Raises:
        SiteConfigError: the datalist is missing or malformed, or no usable cases remain; the
            message lists the bad cases by index and reason only.
    """
    synthetic = config.format == "phantom"
    if task.per_case_classes is not None:
        config.check_case_classes(task.per_case_classes)
    if synthetic:
        config = _phantom_root(config, Path(workspace_root), site_name, task)
    key = (config, site_name, task.label_classes, task.input_slots, task.per_case_classes, _mtime(config.datalist_path))
    if key not in _CACHE:
        _CACHE[key] = _phantom_cached(config, site_name, task) if synthetic else _verified_site_data(config, task, synthetic)
    return _CACHE[key]


def _phantom_cached(config: SiteConfig, site_name: str, task: Task) -> SiteData:
    """A phantom site's data through the on-disk cache next to the phantom (:mod:`omnifm.data.cache`)."""
    from omnifm.data import cache

    classes = [*task.label_classes, repr(task.input_slots)]
    classes += [] if task.per_case_classes is None else ["case classes", *task.per_case_classes]
    key = cache.cache_key(config, site_name, classes, resolve_cases(config), config.datalist_path)
    fields, _ = cache.cached(config.data_root, key,
                             lambda: dataclasses.asdict(_verified_site_data(config, task, synthetic=True)))
    return SiteData(**fields)


def _mtime(path: Path | None) -> float:
    return path.stat().st_mtime if path is not None and path.is_file() else -1.0


def _verified_site_data(config: SiteConfig, task: Task, synthetic: bool) -> SiteData:
    cases = resolve_cases(config)
    report = verify_cases(cases, config, list(task.label_classes), keep_loaded=True, normalize=False,
                          case_classes=task.per_case_classes)
    if not report.usable:
        raise SiteConfigError("no usable cases at this site:\n" + "\n".join(report.lines()))
    slots = None if task.input_slots is None else assign_slots(config.modalities, task.input_slots)
    volumes = [_for_task(report.loaded[i], cases[i], config, slots, len(task.input_slots or ())) for i in report.good]
    train_idx, val_idx, test_idx = split_cases(len(volumes), config.val_fraction, config.split_seed, config.test_fraction)
    kind = "SYNTHETIC phantom" if synthetic else "site data"
    counts = f"{len(train_idx)} train / {len(val_idx)} val / {len(test_idx)} test cases" + _class_line(report, task)
    return SiteData(
        train=[volumes[i] for i in train_idx],
        val=[volumes[i] for i in val_idx],
        test=[volumes[i] for i in test_idx],
        description=f"{kind}: {config.describe()}; {counts}",
        synthetic=synthetic,
        skipped=len(report.bad),
        problems=[line for line in report.lines() if line.startswith("case ")],
    )


def _class_line(report: IntegrityReport, task: Task) -> str:
    """Case mode: ``"; cases per class: benign 10, malignant 4"`` and the gate's notes (e.g. one class only)."""
    if task.per_case_classes is None:
        return ""
    from omnifm.data.case_class import class_counts

    notes = "".join(f"; NOTE: {note}" for note in report.notes)
    return f"; cases per class: {class_counts(report.case_class, task.per_case_classes)}{notes}"


def _for_task(loaded: dict[str, np.ndarray], case: dict, config: SiteConfig,
              slots: dict[str, int] | None, num_slots: int) -> dict[str, np.ndarray]:
    """A good case as the task reads it: normalised per modality, placed in the task's input slots
    (``slots``: site modality -> slot of ``num_slots``, :func:`~omnifm.data.slots.assign_slots`; None: one
    image per case).

    Raises:
        SiteConfigError: a paired case for a task that reads one image.
    """
    channels = case_modalities(case, config)
    volume = normalized_case(loaded, case.get("modality"), config.ct_window, channels)
    if slots is None:
        if channels is not None:
            raise SiteConfigError(
                'the datalist has paired cases ("images": several modalities per case) but this job\'s model reads '
                'one image per case; list one "image" per case, or use a multi-modality model (e.g. the '
                'classification task with "model": {"name": "ct_mri_fusion"})')
        return volume
    return to_slots(volume, channels or [case["modality"]], slots, num_slots)

