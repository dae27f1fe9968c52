"""prepare(): a synthetic study's DICOM folder becomes the 2 x 26 x 224 x 224 SCANet input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_samples import ct_dataset, write_files
from pydicom.uid import generate_uid

from scanet_node.cli import main as cli_main
from scanet_node.imaging.model_input import ModelInput
from scanet_node.imaging.prepare import prepare
from scanet_node.imaging.qc import NotAnalysable
from scanet_node.synth.cohort import plan_study, write_study


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], ModelInput]:
    out = tmp_path_factory.mktemp("prepare")
    manifest = write_study(out, plan_study(21, 1), cta_slice_mm=1.25)
    study = out / manifest["case_id"]
    return study, manifest, prepare(study)


def test_the_input_tensor(prepared: tuple[Path, dict[str, Any], ModelInput]) -> None:
    _, manifest, model_input = prepared
    tensor = model_input.tensor
    assert tensor.shape == (2, 26, 224, 224) and tensor.dtype == np.float32
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    inside = tensor[0] > 0
    assert 0.15 < inside.mean() < 0.6  # the brain fills part of the box, zeros around it
    assert np.median(tensor[0][inside]) == pytest.approx(0.32, abs=0.08)  # ~32 HU of 0..100
    series = {s["role"]: s["series_instance_uid"] for s in manifest["series"]}
    assert model_input.ncct_series_uid == series["ncct"]
    assert model_input.cta_series_uid == series["cta"]
    assert model_input.study_instance_uid == manifest["study_instance_uid"]
    assert model_input.qc["registration_similarity"] > 0.8
    assert model_input.qc["brain_coverage"] == {"ncct": 1.0, "cta": 1.0}
    assert any(reason.startswith("NCCT") for reason in model_input.reasons)


def test_the_clot_lands_where_the_manifest_says(
    prepared: tuple[Path, dict[str, Any], ModelInput],
) -> None:
    _, manifest, model_input = prepared
    occ = manifest["occlusion"]
    mapped = model_input.registration.patient_to_mni(np.array(occ["clot_center_patient"]))
    # A patient who differs from the atlas keeps the residual of an affine registration
    # (clot: median 2.6 mm, 90th percentile 4 mm over 20 studies; here 3.1 mm).
    assert np.linalg.norm(mapped - np.array(occ["clot_center_mni"])) < 5.0

    # In the tensor, the CTA is dark at the clot and bright in the patent contralateral M1.
    def cta_at(mni: list[float]) -> float:
        col, row, slab = np.round(model_input.grid.mni_to_index(np.array(mni))).astype(int)
        return float(model_input.tensor[1, slab, row - 1 : row + 2, col - 1 : col + 2].max())

    assert cta_at(manifest["landmarks"]["patent_contralateral_m1"]["mni"]) > 2 * cta_at(
        occ["clot_center_mni"]
    )


def test_attention_maps_go_back_onto_the_native_ncct(
    prepared: tuple[Path, dict[str, Any], ModelInput],
) -> None:
    _, manifest, model_input = prepared
    clot_mni = np.array(manifest["occlusion"]["clot_center_mni"])
    slab = round(float(model_input.grid.mni_to_index(clot_mni)[2]))
    attention = np.zeros((26, 224, 224), np.float32)
    attention[slab] = 1.0
    native = model_input.slab_to_ncct(attention)
    assert native.shape == model_input.ncct_shape
    clot_lps = np.array(manifest["occlusion"]["clot_center_patient"])
    inverse = np.linalg.inv(model_input.ncct_affine)
    i, j, k = np.round(clot_lps @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
    # 5 mm NCCT slices and 5 mm slabs do not line up: one of the three reaches into the slab.
    assert native[k - 1 : k + 2, j, i].max() > 0.5
    assert native[0].max() == 0.0  # the lowest NCCT slice is far from that slab


def test_prepare_command_writes_input_and_picture(
    prepared: tuple[Path, dict[str, Any], ModelInput], tmp_path: Path
) -> None:
    study, manifest, _ = prepared
    assert cli_main(["prepare", str(study), "--out", str(tmp_path)]) == 0
    with np.load(tmp_path / "model_input.npz") as npz:
        assert npz["tensor"].shape == (2, 26, 224, 224)
    meta = json.loads((tmp_path / "model_input.json").read_text())
    assert meta["study_instance_uid"] == manifest["study_instance_uid"]
    assert meta["windows_hu"] == {"ncct": [0.0, 100.0], "cta": [0.0, 600.0]}
    assert (tmp_path / "model_input.png").read_bytes().startswith(b"\x89PNG")


def test_no_cta_is_not_analysable(tmp_path: Path) -> None:
    manifest = write_study(tmp_path, plan_study(21, 2), small=True, variant="no-cta")
    with pytest.raises(NotAnalysable) as err:
        prepare(tmp_path / manifest["case_id"])
    assert err.value.reason == "no_cta"


def test_a_series_that_is_not_a_head_is_not_analysable(tmp_path: Path) -> None:
    """A water cylinder scanned as 'Head' with and without contrast: tags say yes, pixels no."""
    study_uid = generate_uid()
    for description, contrast in (("Head 5mm", None), ("CTA Head", "Iohexol")):
        series_uid = generate_uid()
        datasets = []
        yy, xx = np.mgrid[:128, :128]
        cylinder = ((yy - 64) ** 2 + (xx - 64) ** 2 < 50**2).astype(np.int16)
        for index in range(40):
            ds = ct_dataset(
                study_uid,
                series_uid,
                index=index,
                size=128,
                description=description,
                contrast=contrast,
            )
            ds.SliceThickness = 5.0 if contrast is None else 1.0
            ds.ImagePositionPatient = [-64.0, -64.0, index * float(ds.SliceThickness)]
            ds.PixelSpacing = [1.0, 1.0]
            ds.PixelData = (cylinder * 1000 - 1000).astype(np.int16).tobytes()  # water in air
            datasets.append(ds)
        write_files(datasets, tmp_path / "study" / series_uid)
    with pytest.raises(NotAnalysable) as err:
        prepare(tmp_path / "study")
    assert err.value.reason in {"not_a_head", "no_ncct", "no_cta"}
    assert "head" in str(err.value) or "qualified" in str(err.value)


def test_a_ct_that_misses_the_top_of_the_brain_is_not_analysable(tmp_path: Path) -> None:
    manifest = write_study(tmp_path, plan_study(21, 3), small=True)
    study = tmp_path / manifest["case_id"]
    ncct = next(s for s in manifest["series"] if s["role"] == "ncct")
    files = sorted((study / ncct["folder"]).glob("*.dcm"))
    from pydicom import dcmread

    by_height = sorted(files, key=lambda p: float(dcmread(p).ImagePositionPatient[2]))
    for path in by_height[-8:]:  # the top 40 mm: the vertex is not scanned
        path.unlink()
    with pytest.raises(NotAnalysable) as err:
        prepare(study)
    assert err.value.reason == "incomplete_coverage", err.value
    assert "NCCT covers" in str(err.value)
