"""The synthetic cohort as a user gets it: `scanet-node synth`, manifests, labels.csv, PNGs."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from peers import dcmtk
from pydicom import dcmread

from scanet_node.synth.cohort import plan_study, write_study
from scanet_node.synth.render import load_series_hu

SYNTH = [sys.executable, "-m", "scanet_node", "synth"]


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_synth_command_writes_a_reproducible_cohort(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *SYNTH,
            "--out",
            str(tmp_path / "a"),
            "--studies",
            "2",
            "--seed",
            "5",
            "--small",
            "--render",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 2 synthetic studies" in done.stdout
    assert "oracle ROC-AUC" in done.stdout and "SYNTHETIC DATA" in done.stdout
    rows = list(csv.DictReader((tmp_path / "a" / "labels.csv").open()))
    assert [r["case_id"] for r in rows] == ["SYN0005-0000", "SYN0005-0001"]
    for row in rows:
        manifest = json.loads((tmp_path / "a" / row["case_id"] / "manifest.json").read_text())
        assert manifest["synthetic"] is True
        assert int(row["label"]) == manifest["outcome"]["label"]
        assert float(row["probability"]) == manifest["outcome"]["probability"]
        assert manifest["study_instance_uid"] == row["study_instance_uid"]
        assert (tmp_path / "a" / row["case_id"] / "ncct_clot_slice.png").stat().st_size > 1000
        assert (tmp_path / "a" / row["case_id"] / "cta_mip_clot.png").stat().st_size > 1000
    again = subprocess.run(
        [*SYNTH, "--out", str(tmp_path / "b"), "--studies", "1", "--seed", "5", "--small"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    first = tree_digest(tmp_path / "a" / "SYN0005-0000")
    second = tree_digest(tmp_path / "b" / "SYN0005-0000")
    first = {k: v for k, v in first.items() if not k.endswith(".png")}
    assert first == second  # same seed, same bytes


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    plan = plan_study(11, 0)
    manifest = write_study(out, plan, small=False, cta_slice_mm=1.25)
    return out / plan.case_id, manifest


def test_every_file_reads_with_pydicom_and_dcmdump(study: tuple[Path, dict]) -> None:
    folder, manifest = study
    files = sorted(folder.rglob("*.dcm"))
    roles = {s["role"] for s in manifest["series"]}
    assert roles == {"ncct", "cta", "localizer", "cta_mip", "dose"}
    study_uids = set()
    for path in files[:: max(1, len(files) // 40)]:
        ds = dcmread(path)
        study_uids.add(ds.StudyInstanceUID)
        done = subprocess.run(
            [dcmtk("dcmdump"), "+E", str(path)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0 and "E:" not in done.stderr, done.stderr
    assert study_uids == {manifest["study_instance_uid"]}


def _series(manifest: dict, role: str) -> dict:
    return next(s for s in manifest["series"] if s["role"] == role)


def _hu_at(folder: Path, point_lps: np.ndarray, slices: int = 1) -> float:
    """3x3 median HU at a patient point; with slices=2, the higher of the two nearest slices."""
    volume, positions = load_series_hu(folder)
    first = dcmread(next(folder.glob("*.dcm")))
    spacing = np.array(first.PixelSpacing, dtype=float)  # row, column spacing
    values = []
    for k in np.argsort(np.abs(positions[:, 2] - point_lps[2]))[:slices]:
        origin = positions[k]
        col = round(float(point_lps[0] - origin[0]) / spacing[1])
        row = round(float(point_lps[1] - origin[1]) / spacing[0])
        values.append(float(np.median(volume[k, row - 1 : row + 2, col - 1 : col + 2])))
    return max(values)


def test_hounsfield_units_where_the_manifest_says(study: tuple[Path, dict]) -> None:
    folder, manifest = study
    occ = manifest["occlusion"]
    marks = {k: np.array(v["patient"]) for k, v in manifest["landmarks"].items()}
    ncct = folder / _series(manifest, "ncct")["folder"]
    cta = folder / _series(manifest, "cta")["folder"]
    # Parenchyma and CSF on the 5 mm NCCT (3x3 median against noise).
    assert 30 <= _hu_at(ncct, marks["grey_matter_caudate"]) <= 45
    assert 20 <= _hu_at(ncct, marks["white_matter_centrum"]) <= 35
    assert -5 <= _hu_at(ncct, marks["csf_ventricle_atrium"]) <= 15
    # The clot lies in the CSF of the Sylvian cistern; on 5 mm slices the slab averages the
    # 3 mm thrombus with that CSF, so the hyperdense vessel is subtle (as on real 5 mm NCCT),
    # yet in its best-centred slice it stands well above the CSF around it.
    csf = _hu_at(ncct, marks["csf_ventricle_atrium"])
    assert _hu_at(ncct, marks["clot_center"], slices=2) > csf + 20
    # CTA: filling defect at the clot, contrast in the patent M1.
    assert abs(_hu_at(cta, marks["clot_center"]) - occ["clot_hu"]) < 30
    assert _hu_at(cta, marks["patent_contralateral_m1"]) > 200
    assert np.allclose(marks["clot_center"], occ["clot_center_patient"])


def test_geometry_and_tags_match_the_manifest(study: tuple[Path, dict]) -> None:
    folder, manifest = study
    ncct = _series(manifest, "ncct")
    cta = _series(manifest, "cta")
    ncct_ds = dcmread(sorted((folder / ncct["folder"]).glob("*.dcm"))[0])
    cta_ds = dcmread(sorted((folder / cta["folder"]).glob("*.dcm"))[0])
    assert ncct_ds.Modality == cta_ds.Modality == "CT"
    assert "ContrastBolusAgent" not in ncct_ds and cta_ds.ContrastBolusAgent
    assert float(ncct_ds.SliceThickness) == 5.0
    assert float(cta_ds.SliceThickness) == 1.25
    assert ncct_ds.Rows == ncct_ds.Columns == 512
    assert 0.4 <= float(ncct_ds.PixelSpacing[0]) <= 0.5
    assert ncct_ds.PatientID == manifest["patient_id"]
    assert ncct_ds.SeriesInstanceUID == ncct["series_instance_uid"]
    assert len(list((folder / cta["folder"]).glob("*.dcm"))) == cta["instances"]
    assert ncct_ds.Manufacturer == "SCANET-SYNTH"
