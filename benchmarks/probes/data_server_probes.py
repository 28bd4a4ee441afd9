"""Bad-input probes for issue 13, items 1-12 (data and ingestion, server side).

Each probe feeds one malformed input to the real code and classifies what happened:

- ``clean``: refused with an error (or a logged rejection) that names what is wrong
  (the case, the field, the file or the site);
- ``silent``: accepted, or refused without saying which site / file / field;
- ``crash``: an exception escaped that the caller cannot handle (a traceback, a raw error that
  names no file/site, or an aggregation that fails the round for every site).

Run from the repository root (2 CPU cores: about a minute)::

    python benchmarks/probes/data_server_probes.py            # the installed (working tree) code
    PYTHONPATH=/tmp/old/custom python benchmarks/probes/data_server_probes.py   # e.g. an older tree

The script only uses APIs that existed before the fixes, so the same probes run on both.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

warnings.filterwarnings("ignore")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

import nibabel as nib  # noqa: E402
import torch  # noqa: E402

SMALL = {"channels": [8, 16, 32], "strides": [2, 2]}
PROBES: list[tuple[int, str, Callable[[Path], tuple[str, str]]]] = []


def probe(item: int, name: str):
    def register(fn):
        PROBES.append((item, name, fn))
        return fn

    return register


class _Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def captured_log():
    handler = _Log()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


# --------------------------------------------------------------------------- item 1: affines


def save_raw_affine(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """A NIfTI whose sform is written into the header bytes as given (nibabel refuses NaN)."""
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_qform(None)
    img.set_sform(np.eye(4), code=1)
    img.header.set_data_offset(352)  # header (348 bytes) + empty extension flag
    raw = bytearray(img.header.binaryblock)
    for row, offset in zip(np.asarray(affine, dtype=float)[:3], (280, 296, 312)):
        raw[offset : offset + 16] = struct.pack("<4f", *row)
    body = bytes(raw) + b"\0" * 4 + np.asarray(data).astype(img.get_data_dtype()).tobytes(order="F")
    with gzip.open(path, "wb") as f:
        f.write(body)


def _nifti_case(tmp: Path, image_affine, label_affine=None, name: str = "c") -> dict:
    rng = np.random.default_rng(0)
    image = rng.random((12, 10, 6)).astype(np.float32)
    save_raw_affine(tmp / f"{name}_image.nii.gz", image, image_affine)
    case = {"image": str(tmp / f"{name}_image.nii.gz"), "modality": "t1"}
    if label_affine is not None:
        label = np.zeros((12, 10, 6), np.uint8)
        label[3:6, 3:6, 2:4] = 1
        save_raw_affine(tmp / f"{name}_label.nii.gz", label, label_affine)
        case["label"] = str(tmp / f"{name}_label.nii.gz")
    return case


def _load_outcome(case: dict, words: tuple[str, ...], **kwargs) -> tuple[str, str]:
    from omnifm.data.ingest import CaseError, load_case

    try:
        load_case(case, **kwargs)
    except CaseError as err:
        ok = any(w in str(err) for w in words)
        return ("clean" if ok else "silent"), f"CaseError: {err}"
    except Exception as err:  # noqa: BLE001
        return "crash", f"{type(err).__name__}: {err}"
    return "silent", "accepted"


NAN_ORIGIN = np.array([[1, 0, 0, np.nan], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
SHIFTED = np.array([[1, 0, 0, 40.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


@probe(1, "NaN image origin, label from another grid")
def _(tmp):
    return _load_outcome(_nifti_case(tmp, NAN_ORIGIN, SHIFTED), ("affine", "not finite", "orientation"))


@probe(1, "NaN image origin, no label")
def _(tmp):
    return _load_outcome(_nifti_case(tmp, NAN_ORIGIN), ("affine", "not finite"))


@probe(1, "Inf in the label affine")
def _(tmp):
    return _load_outcome(_nifti_case(tmp, np.eye(4), np.diag([1, np.inf, 1, 1.0])), ("affine", "not finite"))


@probe(1, "singular image affine (zero column)")
def _(tmp):
    return _load_outcome(_nifti_case(tmp, np.diag([1, 0, 1, 1.0])), ("affine", "singular"))


@probe(1, "NaN affine through the integrity gate (by case index)")
def _(tmp):
    from omnifm.data.integrity import verify_cases
    from omnifm.data.site_config import parse_site_config

    config = parse_site_config(
        {"format": "nifti", "data_root": str(tmp), "datalist": "x.json", "modalities": ["t1"],
         "label_map": {"0": "background", "1": "tumour"}}, tmp, check_paths=False)
    cases = [_nifti_case(tmp, np.eye(4), np.eye(4), "a"), _nifti_case(tmp, NAN_ORIGIN, SHIFTED, "b")]
    report = verify_cases(cases, config, ["background", "tumour"])
    bad = dict(report.bad)
    if 1 not in bad:
        return "silent", "case 1 reported good"
    return ("clean" if "affine" in bad[1] or "orientation" in bad[1] else "silent"), f"case 1: {bad[1]}"


# --------------------------------------------------------------------------- item 2: DICOM orientation


def _series(tmp: Path, rotate: list[float] | None, index: int = 3) -> Path:
    import pydicom

    from omnifm.data.dicom_series import write_dicom_series

    stored = np.random.default_rng(1).integers(0, 1000, size=(8, 16, 12)).astype(np.int16)
    folder = tmp / "series"
    files = write_dicom_series(folder, stored, (1.0, 1.0, 2.0), "MR")
    if rotate is not None:
        ds = pydicom.dcmread(files[index])
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in rotate]
        ds.save_as(files[index])
    return folder


@probe(2, "one slice rotated by 90 degrees")
def _(tmp):
    return _load_outcome({"image": str(_series(tmp, [0, 1, 0, -1, 0, 0])), "modality": "t1"}, ("orientation",))


@probe(2, "one slice tilted by 20 degrees")
def _(tmp):
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    return _load_outcome({"image": str(_series(tmp, [1, 0, 0, 0, c, s])), "modality": "t1"}, ("orientation",))


@probe(2, "first slice rotated (the one MONAI reads the orientation from)")
def _(tmp):
    return _load_outcome({"image": str(_series(tmp, [0, 1, 0, -1, 0, 0], 0)), "modality": "t1"}, ("orientation",))


@probe(2, "mixed orientations through omnifm-prepare-data")
def _(tmp):
    from omnifm.data.ingest import prepare_dataset

    _series(tmp / "in", [0, 1, 0, -1, 0, 0])
    with contextlib.redirect_stdout(io.StringIO()):
        summary = prepare_dataset(tmp / "in", tmp / "out", fmt="dicom")
    if summary.converted:
        return "silent", "converted"
    reason = summary.skipped[0].reason
    return ("clean" if "orientation" in reason else "silent"), f"skipped: {reason}"


# --------------------------------------------------------------------------- item 3: prepare-data output


def _cli(args: list[str]) -> tuple[str, str]:
    """Run omnifm-prepare-data as a user would; clean = exit 2 with a one-line error, no traceback."""
    run = subprocess.run([sys.executable, "-m", "omnifm.tools.prepare_data", *args], capture_output=True, text=True,
                         timeout=300)
    err = run.stderr.strip().splitlines()
    tail = err[-1] if err else ""
    if "Traceback" in run.stderr:
        return "crash", f"exit {run.returncode}, traceback: {tail}"
    if run.returncode == 2 and len(err) == 1:
        return "clean", f"exit 2: {tail}"
    return "silent", f"exit {run.returncode}: {tail or run.stdout.strip().splitlines()[-1:]}"


def _nifti_input(tmp: Path) -> Path:
    (tmp / "in").mkdir()
    _nifti_case(tmp / "in", np.eye(4), np.eye(4), "case")
    return tmp / "in"


@probe(3, "--output is an existing file")
def _(tmp):
    (tmp / "out").write_text("x")
    return _cli(["--input", str(_nifti_input(tmp)), "--output", str(tmp / "out")])


@probe(3, "--output below a file")
def _(tmp):
    (tmp / "f").write_text("x")
    return _cli(["--input", str(_nifti_input(tmp)), "--output", str(tmp / "f" / "out")])


@probe(3, "--output on a read-only file system")
def _(tmp):
    return _cli(["--input", str(_nifti_input(tmp)), "--output", "/sys/omnifm_probe_out"])


@probe(3, "--output/images is a file")
def _(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "images").write_text("x")
    return _cli(["--input", str(_nifti_input(tmp)), "--output", str(tmp / "out")])


# --------------------------------------------------------------------------- item 4: plausibility


def _config(tmp: Path, **fields) -> tuple[str, str]:
    from omnifm.data.site_config import SiteConfigError, parse_site_config

    data = {"format": "phantom", "modalities": ["t1"], "label_map": {"0": "background", "1": "tumour"}, **fields}
    field = next(iter(fields))
    try:
        parse_site_config(data, tmp)
    except SiteConfigError as err:
        return ("clean" if field in str(err) else "silent"), str(err)[:120]
    except Exception as err:  # noqa: BLE001
        return "crash", f"{type(err).__name__}: {err}"
    return "silent", "accepted"


@probe(4, 'site config "spacing" [0.001]*3')
def _(tmp):
    return _config(tmp, spacing=[0.001] * 3)


@probe(4, 'site config "spacing" [500, 500, 500]')
def _(tmp):
    return _config(tmp, spacing=[500.0] * 3)


@probe(4, 'site config "phantom.shape" [100000, 64, 24]')
def _(tmp):
    return _config(tmp, phantom={"shape": [100000, 64, 24]})


@probe(4, 'site config "phantom.cases" 10**7')
def _(tmp):
    return _config(tmp, phantom={"cases": 10**7})


@probe(4, "load_case(spacing=(0.001,)*3)")
def _(tmp):
    from omnifm.data.ingest import load_case

    try:
        load_case(_nifti_case(tmp, np.eye(4), np.eye(4)), spacing=(0.001, 0.001, 0.001))
    except ValueError as err:
        return ("clean" if "spacing" in str(err) else "silent"), f"{type(err).__name__}: {str(err)[:100]}"
    except Exception as err:  # noqa: BLE001
        return "crash", f"{type(err).__name__}"
    return "silent", "accepted"


@probe(4, "omnifm-prepare-data --spacing 0.001 0.001 0.001")
def _(tmp):
    return _cli(["--input", str(_nifti_input(tmp)), "--output", str(tmp / "out"), "--spacing", "0.001", "0.001", "0.001"])


@probe(4, "an upload of 5000 prototypes (spec allows 4)")
def _(tmp):
    rows = np.random.default_rng(0).normal(size=(5000, 32)).tolist()
    return _accept_outcome(meta={"omnifm_prototypes": rows, "omnifm_prototype_counts": [8] * 5000}, dim=32)


# --------------------------------------------------------------------------- items 5-7: aggregator


SHAPES = {"a": (2, 3), "b": (4,)}


class _Engine:
    """The part of FLARE's server engine the aggregator may use: the job's clients."""

    def __init__(self, clients: tuple[str, ...]) -> None:
        self.clients = [type("Client", (), {"name": name})() for name in clients]

    def get_clients(self) -> list:
        return self.clients

    def __getattr__(self, name: str):  # fire_event etc.: nothing to do in a probe
        return lambda *args, **kwargs: None


def _agg_ctx(dim: int | None = None, current: int = 0, clients: tuple[str, ...] = ()):
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.model import make_model_learnable
    from nvflare.app_common.app_constant import AppConstants

    from omnifm.algorithms import make_run_spec
    from omnifm.knowledge import KnowledgeBank

    ctx = FLContext()
    weights = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    bank = None if dim is None else KnowledgeBank(dim=dim).to_plain()
    spec = make_run_spec("omnifm", model=SMALL)
    meta = {"omnifm_spec": spec, "omnifm_bank": bank, "omnifm_state": {}}
    ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(weights, meta), private=True, sticky=False)
    ctx.set_prop(AppConstants.CURRENT_ROUND, current, private=True, sticky=False)
    if clients:
        engine = _Engine(clients)
        ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    return ctx


def _upload(site: str, value: float = 1.0, n=10, meta: dict | None = None, **weights):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.app_common.app_constant import AppConstants

    data = {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}
    data.update(weights)
    dxo = DXO(DataKind.WEIGHTS, data=data, meta=dict(meta or {}))
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, n)
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    return shareable


def _accept_outcome(meta: dict | None = None, n=10, dim: int | None = 32, **weights) -> tuple[str, str]:
    """clean: rejected with a warning naming the site and the round goes on; silent: accepted and
    aggregated; crash: accept or aggregate raised."""
    from omnifm.fl.aggregator import OmniFMAggregator

    agg, ctx = OmniFMAggregator(), _agg_ctx(dim)
    panics: list[str] = []
    agg.system_panic = lambda reason, fl_ctx: panics.append(reason)
    with captured_log() as log:
        try:
            accepted = agg.accept(_upload("site-bad", n=n, meta=meta, **weights), ctx)
        except Exception as err:  # noqa: BLE001
            return "crash", f"accept raised {type(err).__name__}: {str(err)[:80]}"
    if not accepted:
        named = "site-bad" in log.text
        reason = next((line for line in log.lines if "site-bad" in line), log.text[-100:])
        return ("clean" if named else "silent"), reason[:140]
    agg.accept(_upload("site-good", 2.0), ctx)
    try:
        agg.aggregate(ctx)
    except Exception as err:  # noqa: BLE001
        return "crash", f"accepted, then aggregate failed for everyone: {type(err).__name__}: {str(err)[:80]}"
    return "silent", "accepted and aggregated"


@probe(5, "weights as an object array")
def _(tmp):
    return _accept_outcome(a=np.array([[1, 2, 3], [4, 5, 6]], dtype=object))


@probe(5, "weights as a string array")
def _(tmp):
    return _accept_outcome(a=np.full((2, 3), "x"))


@probe(5, "weights as a bool array")
def _(tmp):
    return _accept_outcome(a=np.ones((2, 3), bool))


@probe(5, 'retrieval id "abc"')
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": ["abc"], "omnifm_retrieval_counts": [1]})


@probe(5, "retrieval id NaN")
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": [float("nan")], "omnifm_retrieval_counts": [1]})


@probe(5, "retrieval ids not a list (an int)")
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": 7, "omnifm_retrieval_counts": 1})


@probe(5, "retrieval ids a dict")
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": {"0": 1}, "omnifm_retrieval_counts": {"0": 1}})


@probe(5, 'retrieval count "x"')
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": [0], "omnifm_retrieval_counts": ["x"]})


@probe(5, "retrieval count NaN")
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": [0], "omnifm_retrieval_counts": [float("nan")]})


@probe(5, "retrieval count None")
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": [0], "omnifm_retrieval_counts": [None]})


@probe(5, "retrieval ids and counts of different lengths")
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": [0, 1], "omnifm_retrieval_counts": [3]})


@probe(5, "prototype counts not numbers")
def _(tmp):
    return _accept_outcome({"omnifm_prototypes": [[0.1] * 32], "omnifm_prototype_counts": ["abc"]})


@probe(6, "n_samples = 10**400")
def _(tmp):
    return _accept_outcome(n=10**400)


@probe(6, "n_samples = True")
def _(tmp):
    return _accept_outcome(n=True)


@probe(6, "retrieval count 10**30")
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": [0], "omnifm_retrieval_counts": [10**30]}, dim=32)


@probe(6, "negative retrieval count")
def _(tmp):
    return _accept_outcome({"omnifm_retrieval_ids": [0], "omnifm_retrieval_counts": [-5]}, dim=32)


@probe(6, "metric is a string")
def _(tmp):
    return _accept_outcome({"omnifm_metrics": {"loss": "low"}})


@probe(6, "metric is a list")
def _(tmp):
    return _accept_outcome({"omnifm_metrics": {"loss": [0.1, 0.2]}})


@probe(6, "metrics not a dict")
def _(tmp):
    return _accept_outcome({"omnifm_metrics": [0.1]})


@probe(6, "metric NaN")
def _(tmp):
    return _accept_outcome({"omnifm_metrics": {"loss": float("nan")}})


@probe(7, "prototypes of half the dimension (2 x 16 for d=32)")
def _(tmp):
    return _accept_outcome({"omnifm_prototypes": [[0.1] * 16, [0.2] * 16], "omnifm_prototype_counts": [8, 8]})


@probe(7, "prototypes as one flat list of 64 numbers")
def _(tmp):
    return _accept_outcome({"omnifm_prototypes": [0.1] * 64, "omnifm_prototype_counts": [8, 8]})


@probe(7, "prototypes of twice the dimension (1 x 64)")
def _(tmp):
    return _accept_outcome({"omnifm_prototypes": [[0.1] * 64], "omnifm_prototype_counts": [8]})


@probe(7, "prototypes as a string")
def _(tmp):
    return _accept_outcome({"omnifm_prototypes": "0.1,0.2", "omnifm_prototype_counts": [8]})


@probe(7, "prototypes as a 3-D list")
def _(tmp):
    return _accept_outcome({"omnifm_prototypes": [[[0.1] * 32]], "omnifm_prototype_counts": [8]})


# --------------------------------------------------------------------------- item 8: resume and corrupt files


def _saved_job(folder: Path) -> None:
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext

    from omnifm.fl.persistor import OmniFMPersistor

    persistor = OmniFMPersistor("omnifm", model=SMALL)
    ctx = FLContext()
    ctx.set_prop(FLContextKey.APP_ROOT, str(folder), private=True, sticky=False)
    persistor.save_model(persistor.load_model(ctx), ctx)


def _resume_outcome(tmp: Path, damage: Callable[[Path], None], file_word: str, warn_word: str = "") -> tuple[str, str]:
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext

    from omnifm.fl.persistor import OmniFMPersistor

    _saved_job(tmp / "job1")
    damage(tmp / "job1")
    ctx = FLContext()
    ctx.set_prop(FLContextKey.APP_ROOT, str(tmp / "job2"), private=True, sticky=False)
    with captured_log() as log:
        try:
            OmniFMPersistor("omnifm", model=SMALL, source_dir=str(tmp / "job1")).load_model(ctx)
        except ValueError as err:
            return ("clean" if file_word in str(err) else "crash"), f"ValueError: {str(err)[:140]}"
        except Exception as err:  # noqa: BLE001
            return "crash", f"{type(err).__name__}: {str(err)[:100]!r}"
    if warn_word and warn_word in log.text:
        return "clean", next(line for line in log.lines if warn_word in line)[:140]
    return "silent", "resumed without a word"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _bank_of_dim(folder: Path, dim: int) -> None:
    from omnifm.knowledge import KnowledgeBank

    torch.save({"bank": KnowledgeBank(dim=dim).state_dict(), "round": 0}, folder / "knowledge_bank.pt")


class _Opaque:  # pickled as a class reference: weights_only loading refuses it
    pass


@probe(8, "resume from a bank of another dimension")
def _(tmp):
    return _resume_outcome(tmp, lambda f: _bank_of_dim(f, 16), "knowledge_bank.pt")


@probe(8, "resume with the bank file missing")
def _(tmp):
    return _resume_outcome(tmp, lambda f: (f / "knowledge_bank.pt").unlink(), "knowledge_bank.pt", "knowledge_bank.pt")


@probe(8, "resume from a truncated model file")
def _(tmp):
    return _resume_outcome(tmp, lambda f: _truncate(f / "FL_global_model.pt"), "FL_global_model.pt")


@probe(8, "resume from an empty model file")
def _(tmp):
    return _resume_outcome(tmp, lambda f: (f / "FL_global_model.pt").write_bytes(b""), "FL_global_model.pt")


@probe(8, "resume from a model file that is text")
def _(tmp):
    return _resume_outcome(tmp, lambda f: (f / "FL_global_model.pt").write_text("hello"), "FL_global_model.pt")


@probe(8, "resume from a model file holding a pickled object")
def _(tmp):
    return _resume_outcome(tmp, lambda f: torch.save({"model": _Opaque()}, f / "FL_global_model.pt"), "FL_global_model.pt")


@probe(8, "resume from a model file without its keys")
def _(tmp):
    return _resume_outcome(tmp, lambda f: torch.save({"round": 3}, f / "FL_global_model.pt"), "FL_global_model.pt")


@probe(8, "resume from a truncated bank file")
def _(tmp):
    return _resume_outcome(tmp, lambda f: _truncate(f / "knowledge_bank.pt"), "knowledge_bank.pt")


@probe(8, "HE resume: truncated encrypted model file")
def _(tmp):
    try:
        from omnifm.fl.he_persistor import load_encrypted
    except ImportError:
        return "skipped", "tenseal not installed"
    (tmp / "FL_global_model_encrypted.pt").write_bytes(b"PK\x03\x04 broken")
    try:
        load_encrypted(tmp)
    except ValueError as err:
        return ("clean" if "FL_global_model_encrypted.pt" in str(err) else "crash"), str(err)[:140]
    except Exception as err:  # noqa: BLE001
        return "crash", f"{type(err).__name__}: {str(err)[:100]!r}"
    return "silent", "loaded"


def _trainer():
    from omnifm.algorithms import make_run_spec
    from omnifm.engine import SiteTrainer, TrainConfig

    rng = np.random.default_rng(0)
    volumes = [{"image": rng.normal(size=(1, 32, 32, 4)).astype(np.float32), "label": np.zeros((1, 32, 32, 4), np.uint8)}]
    spec = make_run_spec("omnifm", model=SMALL, num_prototypes=2)
    config = TrainConfig(local_epochs=1, batch_size=4, min_prototype_count=2)
    return SiteTrainer(spec, config, volumes, volumes, device=torch.device("cpu"))


def _personal_outcome(tmp: Path, damage: Callable[[Path, dict], None], words: tuple[str, ...]) -> tuple[str, str]:
    trainer = _trainer()
    path = tmp / "omnifm_personal" / "omnifm-0123456789.pt"
    trainer.save_personal(path, 2)
    damage(path, trainer.personal_state())
    try:
        trainer.load_personal(path)
    except ValueError as err:
        ok = path.name in str(err) and any(w in str(err) for w in words)
        return ("clean" if ok else "crash"), f"ValueError: {str(err)[:140]}"
    except Exception as err:  # noqa: BLE001
        return "crash", f"{type(err).__name__}: {str(err)[:100]!r}"
    return "silent", "restored"


@probe(8, "site: truncated personal file")
def _(tmp):
    return _personal_outcome(tmp, lambda p, s: _truncate(p), ("move", "delete", "remove"))


@probe(8, "site: empty personal file")
def _(tmp):
    return _personal_outcome(tmp, lambda p, s: p.write_bytes(b""), ("move", "delete", "remove"))


@probe(8, "site: personal file holding a pickled object")
def _(tmp):
    return _personal_outcome(tmp, lambda p, s: torch.save({"personal": _Opaque()}, p), ("move", "delete", "remove"))


def _poison(path: Path, state: dict, key_filter: Callable[[str], bool], value: float) -> None:
    bad = {k: (torch.full_like(v, value) if key_filter(k) and v.is_floating_point() else v) for k, v in state.items()}
    torch.save({"personal": bad, "round": 2}, path)


@probe(9, "personal state full of NaN")
def _(tmp):
    return _personal_outcome(tmp, lambda p, s: _poison(p, s, lambda k: True, float("nan")), ("NaN", "finite"))


@probe(9, "one personal parameter Inf")
def _(tmp):
    first = []
    def only_first(key: str) -> bool:
        if not first and not key.startswith("buffer/"):
            first.append(key)
        return key in first
    return _personal_outcome(tmp, lambda p, s: _poison(p, s, only_first, float("inf")), ("NaN", "finite"))


@probe(9, "NaN in the file's alphabetically last tensor")
def _(tmp):
    def last_float(p, s):
        last = sorted(k for k, v in s.items() if v.is_floating_point())[-1]
        _poison(p, s, lambda k: k == last, float("nan"))
    return _personal_outcome(tmp, last_float, ("NaN", "finite"))


# --------------------------------------------------------------------------- item 10: orphan temp files

_KILLER = textwrap.dedent(
    """
    import os, signal, sys, torch
    from omnifm.checkpoint import atomic_torch_save

    class Kill:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of writing the checkpoint

    atomic_torch_save({"model": {"w": torch.zeros(1 << 18)}, "kill": Kill()}, sys.argv[1])
    """
)


def _killed_save(path: Path) -> int:
    run = subprocess.run([sys.executable, "-c", _KILLER, str(path)], capture_output=True)
    return run.returncode


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in keep)


@probe(10, "server: kill -9 during a model save, then resume")
def _(tmp):
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext

    from omnifm.fl.persistor import OmniFMPersistor

    _saved_job(tmp / "job1")
    code = _killed_save(tmp / "job1" / "FL_global_model.pt")
    before = _leftovers(tmp / "job1", {"FL_global_model.pt", "knowledge_bank.pt"})
    ctx = FLContext()
    ctx.set_prop(FLContextKey.APP_ROOT, str(tmp / "job2"), private=True, sticky=False)
    OmniFMPersistor("omnifm", model=SMALL, source_dir=str(tmp / "job1")).load_model(ctx)
    after = _leftovers(tmp / "job1", {"FL_global_model.pt", "knowledge_bank.pt"})
    detail = f"exit {code}; temp files after the kill {len(before)}, after the restart {len(after)}"
    return ("clean" if before and not after else "silent"), detail


@probe(10, "site: kill -9 during a personal save, then restart")
def _(tmp):
    trainer = _trainer()
    path = tmp / "omnifm_personal" / "omnifm-0123456789.pt"
    trainer.save_personal(path, 1)
    code = _killed_save(path)
    before = _leftovers(path.parent, {path.name})
    _trainer().load_personal(path)
    after = _leftovers(path.parent, {path.name})
    detail = f"exit {code}; temp files after the kill {len(before)}, after the restart {len(after)}"
    return ("clean" if before and not after else "silent"), detail


@probe(10, "a foreign .tmp file next to the checkpoint is left alone")
def _(tmp):
    trainer = _trainer()
    path = tmp / "omnifm_personal" / "omnifm-0123456789.pt"
    trainer.save_personal(path, 1)
    (path.parent / "notes.tmp").write_text("someone else's")
    _trainer().load_personal(path)
    kept = (path.parent / "notes.tmp").exists()
    return ("clean" if kept else "crash"), "kept" if kept else "a file we did not write was deleted"


# --------------------------------------------------------------------------- item 11: nothing accepted


def _error_reply(site: str, code: str):
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.shareable import make_reply
    from nvflare.app_common.app_constant import AppConstants

    reply = make_reply(code)
    reply.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    reply.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    return reply


def _submission_event(agg, ctx, reply) -> None:
    """What FLARE's ServerRunner does with every result before the workflow sees it."""
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey

    ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_RESULT, reply, private=True, sticky=False)
    agg.handle_event(EventType.BEFORE_PROCESS_SUBMISSION, ctx)


def _nothing_accepted(tmp, replies: list, expect: dict[str, tuple[str, ...]]) -> tuple[str, str]:
    from omnifm.fl.aggregator import OmniFMAggregator

    agg, ctx = OmniFMAggregator(), _agg_ctx(None, clients=tuple(expect))
    panics: list[str] = []
    agg.system_panic = lambda reason, fl_ctx: panics.append(reason)
    for kind, reply in replies:
        if kind == "error":
            _submission_event(agg, ctx, reply)
        else:
            _submission_event(agg, ctx, reply)
            agg.accept(reply, ctx)
    try:
        agg.aggregate(ctx)
    except RuntimeError:
        pass
    message = panics[0] if panics else ""
    told = all(site in message and any(w in message for w in words) for site, words in expect.items())
    return ("clean" if told else "silent"), message[:200]


@probe(11, "one rejected, one error reply, one silent site")
def _(tmp):
    replies = [("result", _upload("site-1", float("nan"))), ("error", _error_reply("site-2", "EXECUTION_EXCEPTION"))]
    expect = {"site-1": ("NaN",), "site-2": ("EXECUTION_EXCEPTION",), "site-3": ("no reply", "no result")}
    return _nothing_accepted(tmp, replies, expect)


@probe(11, "every site replied with an error")
def _(tmp):
    replies = [("error", _error_reply("site-1", "BAD_TASK_DATA")), ("error", _error_reply("site-2", "EXECUTION_EXCEPTION"))]
    expect = {"site-1": ("BAD_TASK_DATA",), "site-2": ("EXECUTION_EXCEPTION",)}
    return _nothing_accepted(tmp, replies, expect)


# --------------------------------------------------------------------------- item 12: server_round


def _round_outcome(uploads) -> tuple[str, str]:
    from omnifm.algorithms import make_run_spec, server_round

    spec = make_run_spec("fedavg", model=SMALL)
    glob = {"w": np.zeros((2, 3), np.float32)}
    try:
        weights, _ = server_round(spec, glob, {"omnifm_bank": None, "omnifm_state": {}}, uploads)
    except ValueError as err:
        named = any(u.site in str(err) for u in uploads if u.site.startswith("bad"))
        return ("clean" if named else "crash"), f"ValueError: {str(err)[:140]}"
    except Exception as err:  # noqa: BLE001
        return "crash", f"{type(err).__name__}: {str(err)[:100]}"
    return "silent", f"combined: w = {weights['w'].ravel()[:2].tolist()}"


def _up(site, shape=(2, 3), value=1.0, n=10, **kw):
    from omnifm.algorithms import Upload

    return Upload({"w": np.full(shape, value, np.float32)}, n, site=site, **kw)


@probe(12, "server_round: an upload of the wrong (broadcastable) shape")
def _(tmp):
    return _round_outcome([_up("good"), _up("bad", shape=(1, 3))])


@probe(12, "server_round: negative n_samples")
def _(tmp):
    return _round_outcome([_up("good", n=10), _up("bad", value=5.0, n=-5)])


@probe(12, "server_round: NaN weights")
def _(tmp):
    return _round_outcome([_up("good"), _up("bad", value=float("nan"))])


@probe(12, "server_round: a missing parameter")
def _(tmp):
    from omnifm.algorithms import Upload

    return _round_outcome([_up("good"), Upload({}, 10, site="bad")])


@probe(12, "server_round: n_samples 0")
def _(tmp):
    return _round_outcome([_up("good"), _up("bad", n=0)])


# --------------------------------------------------------------------------- main


def main() -> int:
    import omnifm

    print(f"code under test: {Path(omnifm.__file__).parent}")
    results = []
    for item, name, fn in PROBES:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
            try:
                outcome, detail = fn(Path(tmp))
            except Exception as err:  # noqa: BLE001 - the probe's own set-up failed
                outcome, detail = "crash", f"probe raised {type(err).__name__}: {str(err)[:100]}"
        results.append((item, name, outcome, detail))
        print(f"{item:>2} {outcome:<7} {name}: {detail}", flush=True)
    print()
    print("| item | tried | clean error | silent | crash |")
    print("|---|---|---|---|---|")
    for item in sorted({r[0] for r in results}) + [None]:
        rows = [r for r in results if item is None or r[0] == item]
        counts = Counter(r[2] for r in rows)
        label = "all" if item is None else item
        tried = len(rows) - counts["skipped"]
        print(f"| {label} | {tried} | {counts['clean']} | {counts['silent']} | {counts['crash']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
