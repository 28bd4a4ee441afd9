"""Tests of the ``omnifm-make-phantom`` console command."""

from __future__ import annotations

import json

import pytest

from omnifm.tools.make_phantom import build_parser, main

TINY = ["--sites", "2", "--cases", "2", "--seed", "3", "--shape", "32", "32", "8"]


def test_cli_writes_a_federation_and_reuses_it(tmp_path, capsys) -> None:
    out = tmp_path / "fed"
    assert main(["--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] site-1: t1ce, 2 cases" in printed and "[2/2] site-2: ct, 2 cases" in printed
    assert "tumour-free" in printed and "spacing" in printed
    table = [line.split() for line in printed.splitlines() if line.startswith("site-")]
    assert [row[:3] for row in table] == [["site-1", "t1ce", "2"], ["site-2", "ct", "2"]]
    for site in ("site-1", "site-2"):
        datalist = json.loads((out / site / "datalist.json").read_text())
        assert [case["id"] for case in datalist["cases"]] == ["case_000", "case_001"]
        assert (out / site / datalist["cases"][1]["image"]).is_file()
    assert main(["--out", str(out), *TINY]) == 0
    assert printed.count("(reused)") == 0 and capsys.readouterr().out.count("(reused)") == 2


def test_cli_modalities_and_dicom(tmp_path, capsys) -> None:
    pytest.importorskip("pydicom")
    args = ["--out", str(tmp_path), "--sites", "1", "--cases", "1", "--shape", "16", "16", "2"]
    assert main([*args, "--modalities", "pet", "--format", "dicom"]) == 0
    assert "site-1: pet" in capsys.readouterr().out
    assert len(list((tmp_path / "site-1" / "images" / "case_000").iterdir())) == 2


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_cli_writes_a_spect_site_next_to_mr(tmp_path, capsys, fmt: str) -> None:
    if fmt == "dicom":
        pytest.importorskip("pydicom")
    args = ["--out", str(tmp_path), "--sites", "2", "--cases", "1", "--shape", "16", "16", "3", "--format", fmt]
    assert main([*args, "--modalities", "t1", "spect"]) == 0
    printed = capsys.readouterr().out
    assert "site-1: t1" in printed and "site-2: spect" in printed
    datalist = json.loads((tmp_path / "site-2" / "datalist.json").read_text())
    assert datalist["cases"][0]["modality"] == "spect"
    image = tmp_path / "site-2" / datalist["cases"][0]["image"]
    if fmt == "dicom":
        import pydicom

        slices = sorted(image.iterdir())
        assert len(slices) == 3 and pydicom.dcmread(slices[0]).Modality == "NM"
    else:
        assert image.is_file() and image.name.endswith(".nii.gz")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sites", "1"], "--out"),
        (["--out", "x", "--modalities", "xray"], "invalid choice"),
        (["--out", "x", "--format", "png"], "invalid choice"),
        (["--out", "x", "--shape", "32", "32"], "--shape"),
        (["--out", "x", "--cases", "two"], "invalid int"),
    ],
)
def test_cli_rejects_bad_arguments(argv: list[str], message: str, capsys) -> None:
    assert main(argv) != 0
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cases", "0"], "cases"),
        (["--sites", "0"], "sites"),
        (["--seed", "-1"], "seed"),
        (["--shape", "4", "4", "4"], "shape"),
    ],
)
def test_cli_reports_invalid_values(tmp_path, extra: list[str], message: str, capsys) -> None:
    assert main(["--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert "error" in err and message in err
    assert not (tmp_path / "out").exists()


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["--out", "o"])
    assert (args.sites, args.cases, args.seed, args.format, args.shape) == (3, 24, 0, "nifti", [64, 64, 24])
    assert args.modalities is None
