"""No patient identifier leaves a site: DICOM tags, names, file names and paths never reach the server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from omnifm.data.phantom import write_phantom_site

from test_simulator import JOB, SITES, _shrink, _simulate  # noqa: E402  (same folder)

PATIENT = "DOE^JANE^FAKE"
PATIENT_ID = "JD-4711-FAKE"
MARKERS = ("DOE", "JANE", PATIENT_ID, "Doe_Jane")


def _identified_dicom_site(root: Path) -> Path:
    """A DICOM site whose tags, folder names and file names all carry a (fake) patient identity."""
    data = root / "hospital_data"
    entries = write_phantom_site(data, "ct", 6, seed=3, shape=(32, 32, 8), fmt="dicom")
    cases = []
    for i, entry in enumerate(entries):
        series = Path(entry["image"])
        named = series.parent / f"Doe_Jane_{i}"
        series.rename(named)
        for k, dcm in enumerate(sorted(named.iterdir())):
            ds = pydicom.dcmread(dcm)
            ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
            ds.save_as(named / f"Doe_Jane_slice_{k:03d}.dcm")
            dcm.unlink()
        cases.append({"id": f"case_{i:03d}", "image": str(named.relative_to(data)),
                      "label": str(Path(entry["label"]).relative_to(data)), "modality": "ct"})
    (data / "datalist.json").write_text(json.dumps({"cases": cases}))
    return data


def _texts(folder: Path, skip: Path | None = None):
    for path in folder.rglob("*"):
        if path.is_file() and (skip is None or skip not in path.parents):
            yield path, path.read_bytes().decode("latin-1")


@pytest.mark.slow
@pytest.mark.dicom
def test_identifiers_never_reach_the_server(tmp_path):
    data = _identified_dicom_site(tmp_path)
    workspace = tmp_path / "ws"
    (workspace / "local").mkdir(parents=True)
    site_config = {
        "format": "dicom", "data_root": str(data), "modalities": ["ct"],
        "label_map": {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"},
        "split": {"val_fraction": 0.34, "seed": 0},
    }
    (workspace / "local" / "omnifm_site.json").write_text(json.dumps(site_config))
    job = tmp_path / "omnifm_seg"
    shutil.copytree(JOB, job)
    _shrink(job, "omnifm")

    proc = _simulate(job, workspace)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "data (local/omnifm_site.json): site data: format dicom" in log, "the sites trained on the DICOM data"

    server = workspace / "server"
    assert (server / "simulate_job/app_server/FL_global_model.pt").is_file()
    # The simulator copies <workspace>/local (where this test put the *site* config) into every
    # participant's local/, the server's included; in a deployment the server never has it.
    copied_site_config = server / "local"
    texts = list(_texts(server, skip=copied_site_config))
    assert any("round 1" in text for _, text in texts), "the server's logs were searched"
    leaks = [(str(p.relative_to(server)), m) for p, text in texts for m in (*MARKERS, str(data)) if m in text]
    assert not leaks, f"identifiers reached the server: {leaks[:5]}"
    for site in SITES:  # the sites' own logs do not name the patient either
        site_logs = [text for p, text in _texts(workspace / site) if p.suffix in (".txt", ".json")]
        assert not [m for m in MARKERS if any(m in t for t in site_logs)]
