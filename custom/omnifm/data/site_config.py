"""A site's data configuration: ``omnifm_site.json`` in the site's FLARE ``local/`` folder.

The site's IT writes this file next to FLARE's ``resources.json``; the job itself never contains a
data path. Templates and a field-by-field reference live in ``site_configs/`` (``README.md``).

Schema (keys starting with ``_`` are comments and ignored; any other unknown key is an error)::

    {
      "format": "nifti",                 # "nifti" | "dicom" | "phantom" (required)
      "data_root": "/data/omnifm",       # folder; relative to this file's folder; must exist
                                         # (required unless "phantom", where it is the folder the
                                         # phantom is generated into and may not exist yet)
      "datalist": "datalist.json",       # file inside data_root (default); must exist unless phantom
      "modalities": ["t1", "flair"],     # non-empty, from MODALITIES; phantom: the one it renders,
                                         # or several: every case rendered in each (paired cases)
      "label_map": {"0": "background", "1": "tumour"},  # raw label value -> class name; "0" -> "background"
                                         # (optional for a site whose cases carry a per-case class
                                         # and no label volume; a job that reads labels needs it)
      "case_classes": ["benign", "malignant"],  # optional: the per-case class names the datalist's
                                         # "class" fields use, in index order; must equal the job's
      "split": {"val_fraction": 0.2, "test_fraction": 0.0, "seed": 0},  # optional, these are the defaults
      "normalization": {"ct_window": [0, 80]},          # optional; CT HU window (default: brain window)
      "spacing": [1.0, 1.0, 1.0],        # target spacing in mm, or null to keep native (default)
      "phantom": {"cases": 24, "seed": 0, "shape": [64, 64, 24]}  # only for "phantom", optional
    }

Every problem raises :class:`SiteConfigError` whose message names the JSON field and the fix and
points to ``site_configs/README.md``.

Examples::

    >>> config = parse_site_config(
    ...     {"format": "phantom", "modalities": ["t1"], "label_map": {"0": "background", "1": "tumour"}},
    ...     base_dir=".",
    ... )
    >>> config.label_values(["background", "tumour"])
    {0: 0, 1: 1}
    >>> config.describe()
    'format phantom, modalities t1, 2 classes, spacing native, val_fraction 0.2'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omnifm.data.modalities import MODALITIES
from omnifm.validation import check_int, check_range, is_int, is_real

__all__ = [
    "BACKGROUND",
    "DEFAULT_DATALIST",
    "FORMATS",
    "SITE_CONFIG_NAME",
    "PhantomSpec",
    "SiteConfig",
    "SiteConfigError",
    "check_classes",
    "load_site_config",
    "parse_site_config",
]

SITE_CONFIG_NAME = "omnifm_site.json"
README = "site_configs/README.md"
FORMATS = ("nifti", "dicom", "phantom")
DEFAULT_DATALIST = "datalist.json"
BACKGROUND = "background"
TOP_LEVEL_KEYS = (
    "format", "data_root", "datalist", "modalities", "label_map", "split", "spacing", "phantom", "normalization",
    "case_classes",
)
SPLIT_KEYS = ("val_fraction", "test_fraction", "seed")
NORMALIZATION_KEYS = ("ct_window",)
PHANTOM_KEYS = ("cases", "seed", "shape")
PHANTOM_MIN_SIDE = 8  # the smallest volume side omnifm.data.phantom renders
PHANTOM_MAX_SIDE, PHANTOM_MAX_CASES, PHANTOM_MAX_VOXELS = 512, 1000, 2**30  # plausibility: <= 4 GiB of float32
SPACING_RANGE_MM = (0.05, 20.0)  # plausible target voxel spacing; outside it resampling makes absurd volumes
_RAW_LABEL = re.compile(r"0|[1-9][0-9]*")
_T = TypeVar("_T")


class SiteConfigError(ValueError):
    """A problem in a site's data configuration; the message names the field and the fix."""


def _error(problem: str, fix: str) -> SiteConfigError:
    return SiteConfigError(f"{SITE_CONFIG_NAME}: {problem} — {fix} (see {README})")


def _checked(fix: str, check: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run an :mod:`omnifm.validation` check; turn its ``ValueError`` into a :class:`SiteConfigError`."""
    try:
        return check(*args, **kwargs)
    except ValueError as err:
        raise _error(str(err), fix) from None


def check_classes(classes: Sequence[str]) -> list[str]:
    """Return the federation's class names as a list after checking them.

    Raises:
        ValueError: ``classes`` is not a non-empty sequence of unique, non-empty strings.
    """
    ok = isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) > 0
    if not ok or any(not isinstance(c, str) or not c.strip() for c in classes):
        raise ValueError(f"classes must be a non-empty list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat a name, got {list(classes)}")
    return list(classes)


@dataclass(frozen=True)
class PhantomSpec:
    """What the built-in phantom generates for a ``"phantom"`` site."""

    cases: int = 24
    seed: int = 0
    shape: tuple[int, int, int] = (64, 64, 24)


@dataclass(frozen=True)
class SiteConfig:
    """A parsed, checked ``omnifm_site.json``.

    Attributes:
        format: ``"nifti"``, ``"dicom"`` or ``"phantom"``.
        modalities: The modalities this site contributes (phantom: the ones it renders; several
            give paired cases, each rendered in every modality).
        label_map: ``(raw label value, class name)`` pairs sorted by raw value; raw 0 is background;
            empty when the config has none (a site with per-case classes and no label volumes).
        data_root: Absolute data folder (``None`` only for a phantom site without one).
        datalist: The datalist's file name inside ``data_root``.
        val_fraction: Fraction of the site's cases held out for validation, in ``(0, 1)``.
        test_fraction: Fraction held out as a test split, in ``[0, 1)`` with
            ``val_fraction + test_fraction < 1``; 0 (the default) means no test split.
        split_seed: Seed of the training/validation/test split.
        spacing: Target voxel spacing in mm, or ``None`` to keep each case's native spacing.
        phantom: What to generate (phantom sites only).
        ct_window: The CT HU window ``(low, high)``, or ``None`` for the default brain window
            (:data:`omnifm.data.normalize.CT_BRAIN_WINDOW`).
        case_classes: The per-case class names this site's datalist uses (``"class"`` fields), in
            index order, or ``None`` when the config declares none; a case-mode job checks that
            they equal its classes (:meth:`check_case_classes`).
    """

    format: str
    modalities: tuple[str, ...]
    label_map: tuple[tuple[int, str], ...]
    data_root: Path | None = None
    datalist: str = DEFAULT_DATALIST
    val_fraction: float = 0.2
    split_seed: int = 0
    spacing: tuple[float, float, float] | None = None
    phantom: PhantomSpec | None = None
    test_fraction: float = 0.0
    ct_window: tuple[float, float] | None = None
    case_classes: tuple[str, ...] | None = None

    @property
    def datalist_path(self) -> Path | None:
        """``data_root / datalist``, or ``None`` when there is no data root."""
        return None if self.data_root is None else self.data_root / self.datalist

    def class_names(self) -> list[str]:
        """The site's class names in ascending raw-value order, each once."""
        return list(dict.fromkeys(name for _, name in self.label_map))

    def label_values(self, classes: Sequence[str]) -> dict[int, int]:
        """Map each raw label value to its index in the federation's ``classes``.

        Args:
            classes: The federation's class names (decided by the server), e.g.
                ``["background", "necrotic", "edema", "enhancing"]``.

        Raises:
            SiteConfigError: the site's ``label_map`` uses a class the federation does not have.
            ValueError: ``classes`` is malformed (see :func:`check_classes`).
        """
        index = {name: i for i, name in enumerate(check_classes(classes))}
        unknown = [name for name in self.class_names() if name not in index]
        if unknown:
            raise _error(
                f'"label_map" uses class name(s) {unknown} that the federation does not have '
                f"(its classes: {list(classes)})",
                "rename them to one of the federation's classes or map those raw values to another class",
            )
        return {raw: index[name] for raw, name in self.label_map}

    def check_case_classes(self, job_classes: Sequence[str]) -> None:
        """Check the declared ``case_classes`` (if any) against a case-mode job's classes.

        Raises:
            SiteConfigError: they differ (names or order: an integer ``"class"`` indexes them).
        """
        if self.case_classes is not None and list(self.case_classes) != list(job_classes):
            raise _error(
                f'"case_classes" {list(self.case_classes)} differ from this job\'s classes {list(job_classes)} '
                "(names and order must match: an integer \"class\" in the datalist is an index into them)",
                "ask the study coordinator which classes the federation uses and correct the datalist and "
                '"case_classes", or remove "case_classes"')

    def describe(self) -> str:
        """A one-line summary that is safe to log: no paths, no names."""
        spacing = "native" if self.spacing is None else "x".join(f"{s:g}" for s in self.spacing)
        labels = f"{len(self.class_names())} classes" if self.label_map else "no label_map"
        return (
            f"format {self.format}, modalities {'+'.join(self.modalities)}, "
            f"{labels}, spacing {spacing}, val_fraction {self.val_fraction:g}"
        )


# --------------------------------------------------------------------------- loading


def load_site_config(path: str | Path, *, check_paths: bool = True) -> SiteConfig:
    """Read and check a site's ``omnifm_site.json``.

    Args:
        path: The config file; relative ``data_root`` values are relative to its folder.
        check_paths: Check that ``data_root`` and the datalist exist (see :func:`parse_site_config`).

    Raises:
        SiteConfigError: the file is missing, unreadable, not JSON or fails a check.
    """
    path = Path(path)
    if not path.is_file():
        fix = f"copy a template from site_configs/ to <startup kit>/local/{SITE_CONFIG_NAME}"
        raise _error(f"no config file at {str(path)!r}", fix)
    data = read_json(path, _error, "is", "fix the JSON syntax")
    return parse_site_config(data, path.parent, check_paths=check_paths)


def read_json(path: Path, error: Callable[[str, str], Exception], subject: str, syntax_fix: str) -> Any:
    """Parse a JSON file; a syntax or read problem becomes ``error(problem, fix)`` (no traceback).

    ``subject`` starts the problem text (e.g. ``'"datalist.json" is'``), ``syntax_fix`` is the fix
    offered for invalid JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        problem = f"{subject} not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        raise error(problem, syntax_fix) from None
    except (OSError, UnicodeDecodeError) as err:
        fix = "make it a UTF-8 file readable by the FL client's user"
        raise error(f"{subject} unreadable ({type(err).__name__})", fix) from None


def parse_site_config(data: Mapping[str, Any], base_dir: str | Path, *, check_paths: bool = True) -> SiteConfig:
    """Check the parsed JSON of an ``omnifm_site.json`` and build a :class:`SiteConfig`.

    Args:
        data: The JSON object.
        base_dir: Folder that a relative ``data_root`` is relative to (the config file's folder).
        check_paths: For ``"nifti"``/``"dicom"``, check that ``data_root`` is an existing folder
            and the datalist an existing file in it. ``False`` checks only the JSON itself (for
            templates, or before the data is prepared).

    Raises:
        SiteConfigError: naming the first bad field and how to fix it.
    """
    if not isinstance(data, Mapping):
        raise _error(f"must contain a JSON object, got {type(data).__name__}", "start from a template in site_configs/")
    _check_keys(data, TOP_LEVEL_KEYS, "")
    fmt = _parse_format(data)
    root = _parse_data_root(data, fmt, Path(base_dir), check_paths)
    val_fraction, test_fraction, seed = _parse_split(data)
    return SiteConfig(
        format=fmt,
        modalities=_parse_modalities(data, fmt),
        label_map=_parse_label_map(data),
        data_root=root,
        datalist=_parse_datalist(data, fmt, root, check_paths),
        val_fraction=val_fraction,
        split_seed=seed,
        spacing=_parse_spacing(data),
        phantom=_parse_phantom(data, fmt),
        test_fraction=test_fraction,
        ct_window=_parse_normalization(data),
        case_classes=_parse_case_classes(data),
    )


# --------------------------------------------------------------------------- fields


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
    for key in data:
        if not (isinstance(key, str) and (key in allowed or key.startswith("_"))):
            raise _error(
                f'"{prefix}{key}" is not a known field (allowed: {", ".join(allowed)})',
                "fix its spelling or remove it; keys starting with '_' are comments",
            )


def _parse_format(data: Mapping[str, Any]) -> str:
    if "format" not in data:
        raise _error('"format" is missing', f'add "format": one of {", ".join(FORMATS)}')
    fmt = data["format"]
    if fmt not in FORMATS:
        problem = f'"format" must be one of {", ".join(FORMATS)}, got {fmt!r}'
        raise _error(problem, 'set it to "nifti", "dicom" or "phantom"')
    return fmt


def _parse_data_root(data: Mapping[str, Any], fmt: str, base_dir: Path, check_paths: bool) -> Path | None:
    value = data.get("data_root")
    if value is None and fmt == "phantom":
        return None
    if value is None:
        problem = f'"data_root" is missing (required for format "{fmt}")'
        raise _error(problem, "set it to the folder omnifm-prepare-data wrote")
    if not isinstance(value, str) or not value.strip():
        raise _error(f'"data_root" must be a folder path (string), got {value!r}', "set it to the data folder")
    root = (base_dir / Path(value).expanduser()).resolve()
    if check_paths and fmt != "phantom" and not root.is_dir():
        fix = "create it or correct the path (a relative path starts at this file's folder)"
        raise _error(f'"data_root" {value!r} is not an existing folder', fix)
    return root


def _parse_datalist(data: Mapping[str, Any], fmt: str, root: Path | None, check_paths: bool) -> str:
    value = data.get("datalist", DEFAULT_DATALIST)
    if not isinstance(value, str) or not value.strip() or Path(value).is_absolute():
        problem = f'"datalist" must be a file name inside "data_root", got {value!r}'
        raise _error(problem, f'set it to e.g. "{DEFAULT_DATALIST}"')
    if check_paths and fmt != "phantom" and root is not None and not (root / value).is_file():
        fix = 'run omnifm-prepare-data to write it, or set "datalist" to the right file name'
        raise _error(f'"datalist" {value!r} does not exist in "data_root"', fix)
    return value


def _parse_modalities(data: Mapping[str, Any], fmt: str) -> tuple[str, ...]:
    value = data.get("modalities")
    known = ", ".join(MODALITIES)
    if not isinstance(value, list) or not value:
        problem = f'"modalities" must be a non-empty list, got {value!r}'
        raise _error(problem, f'list this site\'s modalities, e.g. ["t1"]; known: {known}')
    for i, modality in enumerate(value):
        if modality not in MODALITIES:
            problem = f'"modalities[{i}]" must be one of {known}, got {modality!r}'
            raise _error(problem, "use one of the known modality names")
    if len(set(value)) != len(value):
        raise _error(f'"modalities" lists a modality twice: {value}', "list each modality once")
    return tuple(value)


def _parse_label_map(data: Mapping[str, Any]) -> tuple[tuple[int, str], ...]:
    if "label_map" not in data:
        return ()  # allowed for per-case classes; a job that reads label volumes refuses it (integrity gate)
    value = data.get("label_map")
    if not isinstance(value, Mapping) or not value:
        fix = 'map raw label values to class names, e.g. {"0": "background", "1": "tumour"}'
        raise _error(f'"label_map" must be a non-empty object, got {value!r}', fix)
    pairs = sorted(_label_entry(key, name) for key, name in value.items())
    if dict(pairs).get(0) != BACKGROUND:
        fix = f'add "0": "{BACKGROUND}" (raw value 0 is the background)'
        raise _error(f'"label_map" must map "0" to "{BACKGROUND}"', fix)
    return tuple(pairs)


def _label_entry(key: Any, name: Any) -> tuple[int, str]:
    if not (isinstance(key, str) and _RAW_LABEL.fullmatch(key)):
        problem = f'"label_map" key {key!r} must be a non-negative integer written as a string'
        raise _error(problem, 'write raw label values as e.g. "1"')
    if not isinstance(name, str) or not name.strip():
        problem = f'"label_map.{key}" must be a class name (non-empty string), got {name!r}'
        raise _error(problem, "use one of the federation's class names")
    return int(key), name


def _parse_case_classes(data: Mapping[str, Any]) -> tuple[str, ...] | None:
    if "case_classes" not in data:
        return None
    value = data["case_classes"]
    ok = isinstance(value, list) and len(value) >= 2 and all(isinstance(c, str) and c.strip() for c in value)
    if not ok:
        problem = f'"case_classes" must be a list of at least two class names (strings), got {value!r}'
        raise _error(problem, 'list the per-case classes in the job\'s order, e.g. ["benign", "malignant"], or remove it')
    if len(set(value)) != len(value):
        raise _error(f'"case_classes" lists a class twice: {value}', "list each class once")
    return tuple(value)


def _parse_split(data: Mapping[str, Any]) -> tuple[float, float, int]:
    split = data.get("split", {})
    if not isinstance(split, Mapping):
        raise _error(f'"split" must be an object, got {split!r}', 'write e.g. {"val_fraction": 0.2, "seed": 0}')
    _check_keys(split, SPLIT_KEYS, "split.")
    fraction = split.get("val_fraction", 0.2)
    name = '"split.val_fraction"'
    _checked("set it to e.g. 0.2", check_range, name, fraction, 0, 1, low_open=True, high_open=True)
    test = split.get("test_fraction", 0.0)
    _checked("set it to e.g. 0.2, or 0 for no test split", check_range, '"split.test_fraction"', test, 0, 1, high_open=True)
    if fraction + test >= 1:
        problem = f'"split.val_fraction" + "split.test_fraction" must be < 1 (training needs cases), got {fraction} + {test}'
        raise _error(problem, "lower one of them")
    seed = _checked("set it to e.g. 0", check_int, '"split.seed"', split.get("seed", 0), 0)
    return float(fraction), float(test), seed


def _parse_normalization(data: Mapping[str, Any]) -> tuple[float, float] | None:
    value = data.get("normalization", {})
    if not isinstance(value, Mapping):
        raise _error(f'"normalization" must be an object, got {value!r}', 'write e.g. {"ct_window": [0, 80]}')
    _check_keys(value, NORMALIZATION_KEYS, "normalization.")
    window = value.get("ct_window")
    if window is None:
        return None
    ok = isinstance(window, list) and len(window) == 2 and all(is_real(v) and math.isfinite(v) for v in window)
    if not ok or not window[0] < window[1]:
        problem = f'"normalization.ct_window" must be [low, high] in HU with low < high, got {window!r}'
        raise _error(problem, "write e.g. [0, 80] (brain window) or [-100, 200] (soft tissue)")
    return float(window[0]), float(window[1])


def _parse_spacing(data: Mapping[str, Any]) -> tuple[float, float, float] | None:
    value = data.get("spacing")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3:
        fix = "write e.g. [1.0, 1.0, 1.0], or null to keep the native spacing"
        raise _error(f'"spacing" must be [x, y, z] in mm or null, got {value!r}', fix)
    low, high = SPACING_RANGE_MM
    for i, s in enumerate(value):
        name = f'"spacing[{i}]"'
        _checked(f"use millimetres between {low} and {high}, e.g. 1.0", check_range, name, s, low, high)
    return tuple(float(s) for s in value)  # type: ignore[return-value]


def _parse_phantom(data: Mapping[str, Any], fmt: str) -> PhantomSpec | None:
    value = data.get("phantom")
    if fmt != "phantom":
        if value is not None:
            raise _error(f'"phantom" is only used with format "phantom", not "{fmt}"', 'remove the "phantom" section')
        return None
    value = {} if value is None else value
    if not isinstance(value, Mapping):
        fix = 'write e.g. {"cases": 24, "seed": 0, "shape": [64, 64, 24]}'
        raise _error(f'"phantom" must be an object, got {value!r}', fix)
    _check_keys(value, PHANTOM_KEYS, "phantom.")
    default = PhantomSpec()
    cases = _checked("set it to e.g. 24", check_int, '"phantom.cases"', value.get("cases", default.cases), 2)
    _checked("set it to e.g. 24", check_range, '"phantom.cases"', cases, 2, PHANTOM_MAX_CASES)
    seed = _checked("set it to e.g. 0", check_int, '"phantom.seed"', value.get("seed", default.seed), 0)
    shape = _phantom_shape(value.get("shape", list(default.shape)))
    voxels = cases * shape[0] * shape[1] * shape[2]
    if voxels > PHANTOM_MAX_VOXELS:
        problem = (f'"phantom.cases" x "phantom.shape" is {voxels:,} voxels ({voxels * 4 / 2**30:.1f} GiB as float32), '
                   f"more than the {PHANTOM_MAX_VOXELS:,} a phantom may hold")
        raise _error(problem, "use fewer cases or a smaller shape, e.g. 24 cases of [64, 64, 24]")
    return PhantomSpec(cases=cases, seed=seed, shape=shape)


def _phantom_shape(shape: Any) -> tuple[int, int, int]:
    ok = isinstance(shape, list) and len(shape) == 3
    if not ok or any(not is_int(s) or not PHANTOM_MIN_SIDE <= s <= PHANTOM_MAX_SIDE for s in shape):
        problem = f'"phantom.shape" must be three integers >= {PHANTOM_MIN_SIDE} and <= {PHANTOM_MAX_SIDE}, got {shape!r}'
        raise _error(problem, "write e.g. [64, 64, 24]")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]
