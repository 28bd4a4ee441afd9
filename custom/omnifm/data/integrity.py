"""The integrity gate: every case of a site is loaded and checked before training.

Modelled on nnU-Net's ``verify_dataset_integrity`` (missing files, NaN, shape/spacing mismatch,
label values), but a bad case does not stop the site: it is reported and left out, and the site
trains on the rest. Reports name a case by its **index** in the datalist only — never its id,
file name or path, which can carry a patient's name.

Per case, :func:`verify_cases` checks, in order:

1. the case's ``"modality"`` is one of the config's ``modalities``;
2. the image file (and the label file, when labels are required) exists;
3. the loader reads it: an ``ingest.CaseError`` is reported with its text (which ingest keeps free
   of paths and names; any of the case's path parts or id found in it are still redacted); any
   other exception is reported by its class name only, as its text may contain a path;
4. the image is ``(C, H, W, D)``, non-empty and finite (checked on the raw intensities: cases are
   loaded with ``normalize=False`` because normalisation zeroes non-finite voxels; kept cases are
   normalised afterwards); the label is integer-typed, ``(1, H, W, D)`` with the image's ``H, W, D``;
5. every label value is a class index the label map produces (``< len(classes)``);
6. image and label spacing agree, **if the loader exposes them** as the optional keys
   ``"image_spacing"`` and ``"label_spacing"`` (3 numbers, mm) of the loaded dict
   (``ingest.load_case`` does not: it compares the image and label affines itself and raises a
   ``CaseError``);
7. the image is not the same file as an earlier case's image.

**Per-case classes** (``case_classes``, a classification task with ``labels: "case"``): each
entry's ``"class"`` must name one of ``case_classes`` or be its integer index
(:func:`omnifm.data.case_class.class_index`); a missing, blank, unknown, non-string/non-integer or
out-of-range value makes the case bad, with the reason and without the value. A label volume is then
optional (checked if the entry has one and the config a ``label_map``; ignored without a
``label_map``); a good case's loaded dict carries ``"class"`` (the index). A site whose good cases
cover only one class is usable, and :attr:`IntegrityReport.notes` says so.

A **paired** case (``"images": {modality: path, ...}`` instead of ``"image"``, the same anatomy in
several co-registered modalities sharing one label) is checked modality by modality, each as a case
of its own with the shared label. A modality that fails, or that the site's ``modalities`` list but
the case lacks, is **masked**: the case is kept with the others, the report says which modality of
which case is masked and why (:attr:`IntegrityReport.masked`), and the loaded case carries a presence
flag per modality (``"present"``) next to the stacked image, so no model mistakes the empty channel
for an image. A paired case with no good modality is bad.

Site-level problems: no cases; a configured modality without a good case; fewer than
:data:`MIN_GOOD_CASES` good cases (no training/validation split possible).

Warnings raised while loading are discarded, since readers' warnings may name files.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnifm.data.case_class import MISSING, class_index, class_notes
from omnifm.data.modalities import MODALITIES
from omnifm.data.site_config import README, SITE_CONFIG_NAME, SiteConfig, SiteConfigError, read_json

__all__ = ["MIN_GOOD_CASES", "DatalistError", "IntegrityReport", "Loader", "check_label_map", "resolve_cases", "verify_cases"]

logger = logging.getLogger(__name__)

Loader = Callable[..., dict[str, np.ndarray]]
MIN_GOOD_CASES = 2
_PROGRESS_EVERY = 25
_MIN_REDACT_LEN = 3
_MAX_VALUES_SHOWN = 8
_SPACING_RTOL = 1e-3
_REWRITE = "re-run omnifm-prepare-data (or fix that entry)"
_GENERIC_PARTS = {"image", "images", "label", "labels", "mask", "masks", "seg", "data", "nifti", "dicom", *MODALITIES}


class DatalistError(SiteConfigError):
    """The site's datalist is missing or malformed; the message names the field and the fix."""


@dataclass
class IntegrityReport:
    """Result of :func:`verify_cases`; everything in it is safe to log (indices, no ids or paths).

    Attributes:
        n_cases: Number of cases checked.
        good: Indices of the good cases, ascending.
        bad: ``(index, reason)`` of each bad case, ascending by index.
        site_problems: Problems of the site as a whole; any of them makes the site unusable.
        loaded: The loader's output for each good case by index (only with ``keep_loaded=True``);
            a paired case's is ``{"image": (M, H, W, D), "present": uint8 (M,), "label"}`` over
            the config's ``M`` modalities, the channels of masked modalities all zero.
        masked: ``(index, modality, reason)`` of each modality masked in a good paired case.
        case_class: case mode: the class index of each good case, by case index.
        notes: Remarks that do not make the site unusable (e.g. its good cases cover one class only).
    """

    n_cases: int
    good: list[int] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)
    site_problems: list[str] = field(default_factory=list)
    loaded: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    masked: list[tuple[int, str, str]] = field(default_factory=list)
    case_class: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """At least one good case and no site-level problem."""
        return bool(self.good) and not self.site_problems

    def summary(self) -> str:
        """``"22 good / 2 bad of 24 cases, 0 site problems: usable"``."""
        verdict = "usable" if self.usable else "NOT usable"
        masked = f", {len(self.masked)} {'modality' if len(self.masked) == 1 else 'modalities'} masked" if self.masked else ""
        return (
            f"{len(self.good)} good / {len(self.bad)} bad of {self.n_cases} cases{masked}, "
            f"{len(self.site_problems)} site problems: {verdict}"
        )

    def lines(self) -> list[str]:
        """Printable lines: one per bad case (``case 3: <reason>``), one per site problem and note, the summary."""
        cases = [f"case {index}: {reason}" for index, reason in self.bad]
        cases += [f"case {index}: {modality} masked ({reason}); kept with its other modalities"
                  for index, modality, reason in self.masked]
        notes = [f"site: note: {note}" for note in self.notes]
        return [*cases, *(f"site: {problem}" for problem in self.site_problems), *notes, self.summary()]


# --------------------------------------------------------------------------- datalist


def _datalist_error(problem: str, fix: str) -> DatalistError:
    return DatalistError(f"datalist: {problem} — {fix} (see {README})")


def resolve_cases(config: SiteConfig) -> list[dict[str, Any]]:
    """Read the site's datalist and return its cases with absolute paths.

    The datalist is ``{"cases": [{"id": ..., "image": ..., "label": ..., "modality": ...}, ...]}``
    with paths relative to the datalist's folder (absolute paths are kept). ``"image"`` is
    required, or ``"images": {modality: path, ...}`` for a paired case; ``"id"`` defaults to ``case_<index>``; ``"modality"`` defaults to the config's
    modality when it has exactly one; other keys are passed through to the loader.

    Raises:
        DatalistError: no data root, datalist missing, not JSON or malformed (names the field).
    """
    path = config.datalist_path
    if path is None:
        fix = 'set "data_root" in omnifm_site.json to the folder holding the datalist'
        raise _datalist_error('"data_root" is not set, so there is no datalist to read', fix)
    entries = _read_datalist(path, config)
    return [_resolve_case(i, entry, path.parent, config) for i, entry in enumerate(entries)]


def _read_datalist(path: Path, config: SiteConfig) -> list[Any]:
    if not path.is_file():
        fix = "generate the phantom first" if config.format == "phantom" else "run omnifm-prepare-data"
        raise _datalist_error(f'"{config.datalist}" does not exist in "data_root"', f"{fix}, or fix \"datalist\"")
    data = read_json(path, _datalist_error, f'"{config.datalist}" is', "re-run omnifm-prepare-data or fix the syntax")
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise _datalist_error('must be an object with a "cases" list', _REWRITE)
    return data["cases"]


def _resolve_case(index: int, entry: Any, folder: Path, config: SiteConfig) -> dict[str, Any]:
    if isinstance(entry, dict) and "images" in entry:
        return _resolve_paired(index, entry, folder)
    if not isinstance(entry, dict) or not _is_path(entry.get("image")):
        raise _datalist_error(f'"cases[{index}].image" must be a non-empty path string', _REWRITE)
    if entry.get("label") is not None and not _is_path(entry["label"]):
        raise _datalist_error(f'"cases[{index}].label" must be a path string or absent', _REWRITE)
    case = {"id": f"case_{index:03d}", **entry, "image": str(folder / entry["image"])}
    if entry.get("label") is not None:
        case["label"] = str(folder / entry["label"])
    if "modality" not in case and len(config.modalities) == 1:
        case["modality"] = config.modalities[0]
    return case


def _resolve_paired(index: int, entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    images = entry["images"]
    if "image" in entry or "modality" in entry:
        raise _datalist_error(f'"cases[{index}]" has "images" and also "image"/"modality"', "keep one form per case")
    if not isinstance(images, dict) or not images or not all(_is_path(p) for p in images.values()):
        raise _datalist_error(f'"cases[{index}].images" must be an object {{modality: path, ...}}', _REWRITE)
    if entry.get("label") is not None and not _is_path(entry["label"]):
        raise _datalist_error(f'"cases[{index}].label" must be a path string (a paired case shares one label) or absent',
                              _REWRITE)
    case = {"id": f"case_{index:03d}", **entry}
    if entry.get("label") is not None:
        case["label"] = str(folder / entry["label"])
    case["images"] = {str(m): str(folder / p) for m, p in images.items()}
    return case


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


# --------------------------------------------------------------------------- verification


def verify_cases(
    cases: Sequence[dict[str, Any]],
    config: SiteConfig,
    classes: Sequence[str],
    loader: Loader | None = None,
    *,
    require_label: bool = True,
    keep_loaded: bool = False,
    normalize: bool = True,
    case_classes: Sequence[str] | None = None,
) -> IntegrityReport:
    """Load and check every case (see the module docstring for the checks).

    Args:
        cases: Cases from :func:`resolve_cases` (``{"id", "image", "label", "modality"}``).
        config: The site's configuration (spacing, label map, modalities).
        classes: The federation's class names; label values are mapped to their indices.
        loader: ``loader(case, spacing=..., label_values=..., normalize=False)`` returning
            ``{"image": (C, H, W, D), "label": (1, H, W, D)}``; default ``ingest.load_case``.
            Cases are loaded *without* intensity normalisation, so that non-finite input voxels
            (which normalisation would zero) are found.
        require_label: A case without a label is bad (training needs labels).
        keep_loaded: Keep the loaded good cases in ``report.loaded`` (saves loading twice).
        normalize: Normalise the kept images with
            :func:`omnifm.data.normalize.normalize_intensity` for the case's modality, as
            ``load_case(..., normalize=True)`` would.
        case_classes: Case mode: the task's class names each entry's ``"class"`` must name or
            index; labels are then optional (``require_label`` is ignored). None: no class check.

    Returns:
        The :class:`IntegrityReport`.

    Raises:
        SiteConfigError: the config's label map uses a class that is not in ``classes``, or is
            missing while labels are required.
    """
    require_label = require_label and case_classes is None
    check_label_map(config, require_label)
    mapping = config.label_values(classes)
    loader = loader if loader is not None else _default_loader()
    report = IntegrityReport(n_cases=len(cases))
    first_index: dict[str, int] = {}
    for index, case in enumerate(cases):
        case_class, class_problem = _case_class(case, case_classes)
        case = case if config.label_map else _unlabelled(case)
        if "images" in case:
            problems, loaded, masked = _check_paired(case, config, mapping, loader, require_label)
        else:
            (problems, loaded), masked = _check_case(case, config, mapping, loader, require_label), []
        problems += _duplicate_problem(index, case, first_index) + class_problem
        report.masked += [] if problems else [(index, modality, reason) for modality, reason in masked]
        kept = _kept(loaded, case, config, normalize) if keep_loaded and not problems else None
        _record(report, index, problems, _with_class(kept, case_class))
        if case_class is not None and not problems:
            report.case_class[index] = case_class
        if (index + 1) % _PROGRESS_EVERY == 0 or index + 1 == len(cases):
            logger.info("integrity check: %d/%d cases checked, %d bad", index + 1, len(cases), len(report.bad))
    report.site_problems = _site_problems(cases, config, report)
    report.notes = class_notes(report.case_class, case_classes) if case_classes is not None and report.good else []
    for note in report.notes:
        logger.warning("integrity check: %s", note)
    return report


def check_label_map(config: SiteConfig, require_label: bool) -> None:
    """Raise :class:`SiteConfigError` if labels are required and the config has no ``label_map``."""
    if require_label and not config.label_map:
        raise SiteConfigError(
            f'{SITE_CONFIG_NAME}: "label_map" is missing, but this job\'s task reads label volumes — map the raw label '
            'values to class names, e.g. {"0": "background", "1": "tumour"} (see ' + README + ")")


def _case_class(case: dict[str, Any], case_classes: Sequence[str] | None) -> tuple[int | None, list[str]]:
    """Case mode: ``(class index or None, [reason])`` of the entry's ``"class"``; else ``(None, [])``."""
    if case_classes is None:
        return None, []
    index, problem = class_index(case.get("class", MISSING), case_classes)
    return index, [] if problem is None else [problem]


def _with_class(kept: dict[str, Any] | None, case_class: int | None) -> dict[str, Any] | None:
    return kept if kept is None or case_class is None else {**kept, "class": case_class}


def _unlabelled(case: dict[str, Any]) -> dict[str, Any]:
    """A case of a site without a ``label_map`` (case mode): its label volume, if any, is not read."""
    return {key: value for key, value in case.items() if key != "label"}


def _record(report: IntegrityReport, index: int, problems: list[str], kept: dict | None) -> None:
    if problems:
        report.bad.append((index, "; ".join(problems)))
        return
    report.good.append(index)
    if kept is not None:
        report.loaded[index] = kept


def _kept(loaded: dict[str, Any] | None, case: dict[str, Any], config: SiteConfig, normalize: bool) -> dict[str, Any] | None:
    """A good case as training uses it: ``image`` intensity-normalised for its modality (paired: per channel)."""
    if loaded is None or not normalize:
        return loaded
    return normalized_case(loaded, case.get("modality"), config.ct_window, case_modalities(case, config))


def case_modalities(case: dict[str, Any], config: SiteConfig) -> list[str] | None:
    """The modality of each channel of a loaded paired case (the config's), None for a single-image case."""
    return list(config.modalities) if "images" in case else None


def normalized_case(
    loaded: dict[str, Any], modality: str | None, ct_window: tuple[float, float] | None = None,
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``loaded`` with its image normalised for ``modality``, or channel ``j`` for ``modalities[j]``
    where ``loaded["present"][j]`` (a paired case; masked channels stay zero)."""
    from omnifm.data.normalize import normalize_intensity  # lazy, like the default loader

    window = {"ct_window": ct_window} if ct_window is not None else {}
    image = np.array(loaded["image"], dtype=np.float32)
    if modalities is None:
        image = normalize_intensity(image, modality, **window)
    else:
        for j, name in enumerate(modalities):
            if loaded["present"][j]:
                image[j : j + 1] = normalize_intensity(image[j : j + 1], name, **window)
    return {**loaded, "image": np.ascontiguousarray(image, dtype=np.float32)}


def _default_loader() -> Loader:
    from omnifm.data.ingest import load_case  # lazy: ingest is optional until a site loads data

    return load_case


def _case_error_type() -> type[Exception] | None:
    try:
        from omnifm.data.ingest import CaseError
    except ImportError:
        return None
    return CaseError


def _check_case(
    case: dict[str, Any], config: SiteConfig, mapping: dict[int, int], loader: Loader, require_label: bool
) -> tuple[list[str], dict[str, np.ndarray] | None]:
    """All problems of one case, and the loaded case when it could be loaded."""
    missing = _file_problems(case, require_label)
    problems = _modality_problems(case, config) + missing
    if missing:
        return problems, None
    loaded, load_problem = _load(case, config, mapping, loader)
    if loaded is None:
        return [*problems, load_problem], None
    return problems + _content_problems(loaded, set(mapping.values()), require_label), loaded


def _check_paired(
    case: dict[str, Any], config: SiteConfig, mapping: dict[int, int], loader: Loader, require_label: bool
) -> tuple[list[str], dict[str, np.ndarray] | None, list[tuple[str, str]]]:
    """A paired case's problems, its stacked loaded form and its masked ``(modality, reason)`` pairs.

    Each listed modality is checked by :func:`_check_case` as a case of its own with the shared label.
    """
    images, loaded, masked = case["images"], {}, []
    for modality in case["images"]:
        single = {"id": case["id"], "image": images[modality], "label": case.get("label"), "modality": modality}
        problems, one = _check_case(single, config, mapping, loader, require_label)
        problems += [] if one is None or np.asarray(one["image"]).shape[0] == 1 else ["a paired image must have one channel"]
        problems += [] if problems else _grid_problem(one, loaded)
        if problems:
            masked.append((_shown(modality), "; ".join(problems)))
        else:
            loaded[modality] = one
    if not loaded:
        return ["no usable modality (" + "; ".join(f"{m}: {r}" for m, r in masked) + ")"], None, []
    masked += [(m, "not in this case") for m in config.modalities if m not in images]
    return [], _stacked(loaded, config.modalities), masked


def _grid_problem(one: dict[str, Any], loaded: dict[str, dict[str, Any]]) -> list[str]:
    """A paired image on another grid than the case's first good modality (only possible without a
    label, which each image is otherwise checked against)."""
    if not loaded:
        return []
    first = np.shape(next(iter(loaded.values()))["image"])[1:]
    shape = np.shape(one["image"])[1:]
    return [] if shape == first else [f"image shape {shape} differs from the case's other modalities' {first} (one grid needed)"]


def _shown(modality: Any) -> str:
    return modality if modality in MODALITIES else "an unknown modality"


def _stacked(loaded: dict[str, dict[str, np.ndarray]], modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """``{"image": (M, H, W, D), "present": (M,), "label"}`` over ``modalities``; absent channels zero."""
    first = next(iter(loaded.values()))
    image = np.zeros((len(modalities), *np.shape(first["image"])[1:]), dtype=np.float32)
    present = np.zeros(len(modalities), dtype=np.uint8)
    for j, modality in enumerate(modalities):
        if modality in loaded:
            image[j] = np.asarray(loaded[modality]["image"], dtype=np.float32)[0]
            present[j] = 1
    label = {} if first.get("label") is None else {"label": np.asarray(first["label"])}  # case mode: may be absent
    return {"image": image, "present": present, **label}


def _modality_problems(case: dict[str, Any], config: SiteConfig) -> list[str]:
    modality = case.get("modality")
    if modality is None:
        return ['no "modality" in the datalist']
    if modality in config.modalities:
        return []
    # Only print values from the known vocabulary: a free-text field could hold anything.
    shown = repr(modality) if modality in MODALITIES else "an unknown modality"
    return [f'modality {shown} is not in the site\'s "modalities" {list(config.modalities)}']


def _file_problems(case: dict[str, Any], require_label: bool) -> list[str]:
    image = case.get("image")
    if not isinstance(image, str) or not image:
        return ["no image in the datalist"]
    problems = [] if os.path.exists(image) else ["image file missing"]
    label = case.get("label")
    if label is None and require_label:
        problems.append("no label in the datalist")
    elif label is not None and not os.path.exists(label):
        problems.append("label file missing")
    return problems


def _load(
    case: dict[str, Any], config: SiteConfig, mapping: dict[int, int], loader: Loader
) -> tuple[dict[str, np.ndarray] | None, str]:
    """Run the loader; on failure return ``(None, reason)`` with a path-free reason."""
    case_error = _case_error_type()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # readers' warnings may name files
            loaded = loader(dict(case), spacing=config.spacing, label_values=mapping, normalize=False)
    except Exception as err:  # noqa: BLE001 - any failure makes this one case bad, not the site
        if case_error is not None and isinstance(err, case_error):
            return None, f"{type(err).__name__}: {_redact(str(err), case, config)}"
        return None, f"unreadable ({type(err).__name__}; details withheld as they may name files)"
    if not isinstance(loaded, Mapping):
        return None, f"the loader returned {type(loaded).__name__}, not a dict"
    return dict(loaded), ""


def _redact(text: str, case: dict[str, Any], config: SiteConfig) -> str:
    """Remove the case's id, paths and path parts below the data root from ``text``.

    Generic folder names (``images``, ``labels``, modality names, ...) are kept, so that e.g.
    ``"label shape ..."`` stays readable.
    """
    tokens = {str(case.get("id", ""))}
    for key in ("image", "label"):
        if isinstance(case.get(key), str) and case[key]:
            tokens.update({case[key], *_path_tokens(Path(case[key]), config.data_root)})
    tokens = {t for t in tokens if len(t) >= _MIN_REDACT_LEN and t.lower() not in _GENERIC_PARTS}
    for token in sorted(tokens, key=len, reverse=True):
        text = text.replace(token, "<redacted>")
    return text


def _path_tokens(path: Path, root: Path | None) -> set[str]:
    try:
        relative = path.relative_to(root) if root is not None else path
    except ValueError:
        relative = path
    return {str(path), str(relative), *relative.parts}


def _content_problems(loaded: dict[str, Any], allowed: set[int], require_label: bool) -> list[str]:
    image, label = loaded.get("image"), loaded.get("label")
    problems = _image_problems(image)
    if label is None:
        return problems + (["the loader returned no label"] if require_label else [])
    if problems:
        return problems
    return _label_problems(np.asarray(image), np.asarray(label), allowed) + _spacing_problems(loaded)


def _image_problems(image: Any) -> list[str]:
    if image is None:
        return ["the loader returned no image"]
    image = np.asarray(image)
    if image.ndim != 4:
        return [f"image must be (C, H, W, D), got shape {image.shape}"]
    if image.size == 0:
        return [f"image is empty, shape {image.shape}"]
    if not np.issubdtype(image.dtype, np.number):
        return [f"image is not numeric ({image.dtype})"]
    bad = int(image.size - np.count_nonzero(np.isfinite(image)))
    return [f"image has {bad} non-finite values (NaN/inf)"] if bad else []


def _label_problems(image: np.ndarray, label: np.ndarray, allowed: set[int]) -> list[str]:
    expected = (1, *image.shape[1:])
    if label.shape != expected:
        return [f"label shape {label.shape} does not match image shape {image.shape}"]
    if not np.issubdtype(label.dtype, np.integer):
        return [f"label is not integer-typed ({label.dtype})"]
    invalid = sorted(set(np.unique(label).tolist()) - allowed)
    if not invalid:
        return []
    shown = ", ".join(str(v) for v in invalid[:_MAX_VALUES_SHOWN])
    more = ", ..." if len(invalid) > _MAX_VALUES_SHOWN else ""
    return [f"label values {{{shown}{more}}} not in label_map"]


def _spacing_problems(loaded: dict[str, Any]) -> list[str]:
    image_spacing, label_spacing = loaded.get("image_spacing"), loaded.get("label_spacing")
    if image_spacing is None or label_spacing is None:
        return []
    a, b = np.asarray(image_spacing, dtype=float), np.asarray(label_spacing, dtype=float)
    if a.shape == b.shape and np.allclose(a, b, rtol=_SPACING_RTOL, atol=0):
        return []
    return [f"image spacing {tuple(a.round(4).tolist())} and label spacing {tuple(b.round(4).tolist())} differ"]


def _duplicate_problem(index: int, case: dict[str, Any], first_index: dict[str, int]) -> list[str]:
    paths = list(case["images"].values()) if isinstance(case.get("images"), dict) else [case.get("image")]
    problems = []
    for path in (p for p in paths if isinstance(p, str)):
        first = first_index.setdefault(os.path.realpath(path), index)
        problems += [] if first == index else [f"same image file as case {first}"]
    return problems


def _site_problems(cases: Sequence[dict[str, Any]], config: SiteConfig, report: IntegrityReport) -> list[str]:
    if not cases:
        return ["the datalist has no cases — run omnifm-prepare-data"]
    problems = []
    masked = {(i, m) for i, m, _ in report.masked}
    good_modalities = {cases[i].get("modality") for i in report.good}
    good_modalities |= {m for i in report.good for m in cases[i].get("images", {}) if (i, m) not in masked}
    for modality in config.modalities:
        if modality not in good_modalities:
            problems.append(
                f'modality {modality!r} is in "modalities" but has no good case — '
                'fix its cases or remove it from "modalities"'
            )
    if len(report.good) < MIN_GOOD_CASES:
        problems.append(f"{len(report.good)} good cases; at least {MIN_GOOD_CASES} are needed for a train/val split")
    return problems
