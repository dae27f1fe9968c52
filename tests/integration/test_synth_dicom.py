"""Synthetic studies written as DICOM files, read back with pydicom and DCMTK.

Small (128x128) studies of the real phantom, one per variant, written once per module.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from peers import dcmtk, require_tool
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    XRayRadiationDoseSRStorage,
)

from scanet_node.synth.dicom import StudyFiles, WriteOptions, write_study
from scanet_node.synth.dicom_common import StudyIdentity
from scanet_node.synth.phantom import Phantom
from scanet_node.synth.scanner_geometry import Pose
from scanet_node.synth.vessels import Occlusion

SEED = 20261129
IDENTITY = StudyIdentity(
    patient_name="SYNTH^CASE0001",
    patient_id="SYN-0001",
    birth_date="19510203",
    sex="F",
    age="075Y",
    accession="A000100001",
    study_uid="1.2.826.0.1.3680043.8.498.4711",
    study_date="20261129",
    study_time="235900",  # the series run past midnight
)
IMAGE_ROLES = ("localizer", "ncct", "cta", "cta_mip")


@pytest.fixture(scope="module")
def occlusion() -> Occlusion:
    return Occlusion(side="L", site="M1", length_mm=10.0, clot_hu=65.0)


@pytest.fixture(scope="module")
def phantom(occlusion: Occlusion) -> Phantom:
    return Phantom(occlusion, contrast_hu=380.0)


@pytest.fixture(scope="module")
def pose() -> Pose:
    return Pose.random(np.random.default_rng(SEED))


class StudyWriter:
    """Writes small studies of one phantom and pose into fresh folders, strictly validated."""

    def __init__(self, root: Path, phantom: Phantom, pose: Pose) -> None:
        self.root = root
        self.phantom = phantom
        self.pose = pose

    def __call__(self, name: str, **options: Any) -> StudyFiles:
        out = self.root / name
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(config.settings, "writing_validation_mode", config.RAISE)
            return write_study(
                out,
                self.phantom,
                self.pose,
                IDENTITY,
                WriteOptions(small=True, **options),
                np.random.default_rng(SEED),
            )


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory, phantom: Phantom, pose: Pose) -> StudyWriter:
    return StudyWriter(tmp_path_factory.mktemp("synth"), phantom, pose)


@pytest.fixture(scope="module")
def standard(writer: StudyWriter) -> StudyFiles:
    return writer("standard")


def all_files(study: StudyFiles) -> list[Path]:
    return [path for series in study.series for path in series.files]


def read_strict(path: Path, *, pixels: bool = False) -> Dataset:
    """Read a file with pydicom raising on any invalid value, touching every element."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config.settings, "reading_validation_mode", config.RAISE)
        ds = dcmread(path, stop_before_pixels=not pixels)
        for element in ds.iterall():
            _ = element.value
    return ds


def hu_volume(study: StudyFiles, role: str) -> tuple[npt.NDArray[np.float64], list[Dataset]]:
    """A series as HU slices ordered along the slice normal, with their datasets."""
    datasets: list[Dataset] = [dcmread(p) for p in study.by_role(role).files]
    normal = np.cross(*np.reshape(datasets[0].ImageOrientationPatient, (2, 3)))
    datasets.sort(key=lambda ds: float(normal @ np.asarray(ds.ImagePositionPatient, float)))
    volume = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]
    )
    return volume, datasets


def voxel_at(datasets: list[Dataset], point: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    """(slice, row, column) nearest to a patient point, from IPP, IOP and PixelSpacing."""
    first = np.asarray(datasets[0].ImagePositionPatient, float)
    step = np.asarray(datasets[1].ImagePositionPatient, float) - first
    orientation = np.asarray(datasets[0].ImageOrientationPatient, float)
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    matrix = np.column_stack([step, orientation[3:] * row_spacing, orientation[:3] * col_spacing])
    k, r, c = np.rint(np.linalg.solve(matrix, point - first)).astype(int)
    return int(k), int(r), int(c)


# --------------------------------------------------------------------------------------------
# The standard study


def test_standard_study_has_the_series_of_a_stroke_protocol(standard: StudyFiles) -> None:
    assert standard.roles() == ["localizer", "ncct", "cta", "cta_mip", "dose"]
    folders = [s.folder.name for s in standard.series]
    assert folders == ["1_localizer", "2_ncct", "3_cta", "4_cta_mip", "501_dose"]
    ncct, cta = standard.by_role("ncct"), standard.by_role("cta")
    assert 32 <= len(ncct.files) <= 37
    assert ncct.files[0].name == "IM00001.dcm"
    assert cta.geometry is not None and len(cta.files) == cta.geometry.number_of_slices
    assert len(standard.by_role("cta_mip").files) == len(cta.files) // 4  # 10 mm of 2.5 mm
    assert set(standard.timings) >= {"sample_s", "noise_s", "write_s", "total_s"}
    manifest = json.loads(json.dumps(standard.as_manifest(standard.series[0].folder.parent)))
    assert [m["folder"] for m in manifest] == folders
    assert manifest[1]["geometry"]["slice_thickness_mm"] == 5.0
    assert manifest[1]["instance_order"] == "feet-to-head"


def test_every_file_reads_strictly_with_pydicom(standard: StudyFiles) -> None:
    for path in all_files(standard):
        ds = read_strict(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Manufacturer == "SCANET-SYNTH"
        assert ds.PatientID == IDENTITY.patient_id
    one = read_strict(standard.by_role("cta").files[3], pixels=True)
    assert one.pixel_array.shape == (128, 128)


@pytest.mark.dcmtk
def test_every_file_passes_dcmdump(standard: StudyFiles) -> None:
    files = [str(p) for p in all_files(standard)]
    result = subprocess.run([dcmtk("dcmdump"), *files], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.count("(0008,0016) UI =CTImageStorage") == len(files) - 1


@pytest.mark.dcmtk
def test_dose_report_passes_dsrdump(standard: StudyFiles) -> None:
    path = standard.by_role("dose").files[0]
    result = subprocess.run(
        [dcmtk("dsrdump"), str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "X-Ray Radiation Dose SR Document" in out
    assert '<CONTAINER:(,,"X-Ray Radiation Dose Report")=SEPARATE>' in out
    assert out.count('(,,"CT Acquisition")') == 3
    assert out.count('"Mean CTDIvol"') == 2  # the localizer has no CT Dose
    assert '"CT Dose Length Product Total"' in out


def test_dose_report_content(standard: StudyFiles) -> None:
    ds = read_strict(standard.by_role("dose").files[0])
    assert ds.SOPClassUID == XRayRadiationDoseSRStorage
    assert ds.Modality == "SR"
    assert ds.ConceptNameCodeSequence[0].CodeValue == "113701"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "10011"

    def items(node: Dataset) -> Iterator[Dataset]:
        for item in node.get("ContentSequence", []):
            yield item
            yield from items(item)

    numbers = {
        item.ConceptNameCodeSequence[0].CodeMeaning: float(
            item.MeasuredValueSequence[0].NumericValue
        )
        for item in items(ds)
        if item.ValueType == "NUM"
    }
    assert numbers["Total Number of Irradiation Events"] == 3
    assert 800 < numbers["CT Dose Length Product Total"] < 3000


def test_dciodvfy_finds_no_errors(standard: StudyFiles) -> None:
    tool = require_tool("dciodvfy", "apt-get install dicom3tools")
    for series in standard.series:
        result = subprocess.run(
            [tool, str(series.files[0])], capture_output=True, text=True, check=False
        )
        lines = (result.stdout + result.stderr).splitlines()
        problems = [
            line
            for line in lines
            if line.startswith(("Error", "Warning")) and "DICOMDIR" not in line
        ]
        assert problems == [], series.role


def test_uids_are_shared_and_unique_as_they_should_be(standard: StudyFiles) -> None:
    datasets = {s.role: [read_strict(p) for p in s.files] for s in standard.series}
    flat = [ds for group in datasets.values() for ds in group]
    assert {ds.StudyInstanceUID for ds in flat} == {IDENTITY.study_uid}
    assert len({ds.SOPInstanceUID for ds in flat}) == len(flat)
    series_uids = {role: {ds.SeriesInstanceUID for ds in group} for role, group in datasets.items()}
    assert all(len(uids) == 1 for uids in series_uids.values())
    assert len(set().union(*series_uids.values())) == len(series_uids)
    images = [ds for role in IMAGE_ROLES for ds in datasets[role]]
    assert {ds.FrameOfReferenceUID for ds in images} == {standard.frame_of_reference_uid}
    assert all(ds.SOPClassUID == CTImageStorage for ds in images)
    assert {ds.AccessionNumber for ds in flat} == {IDENTITY.accession}


def test_image_attributes_by_role(standard: StudyFiles) -> None:
    first = {s.role: read_strict(s.files[0]) for s in standard.series}
    assert list(first["localizer"].ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert list(first["ncct"].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert list(first["cta"].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert list(first["cta_mip"].ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert "ContrastBolusAgent" not in first["ncct"]
    assert "ContrastBolusAgent" not in first["localizer"]
    assert first["cta"].ContrastBolusAgent == "Iohexol 350 mgI/ml"
    assert first["cta"].ContrastBolusRoute == "IV"
    assert first["cta_mip"].ContrastBolusAgent == first["cta"].ContrastBolusAgent
    assert first["ncct"].SeriesDescription == "Head 5.0 H31s"
    assert first["cta"].SeriesDescription == "CTA Head Neck 2.5 Hv36 Arterial"
    assert first["cta_mip"].SeriesDescription == "CTA MIP 10mm"
    assert len(first["cta_mip"].SourceImageSequence) == 4
    for role in ("ncct", "cta", "cta_mip"):
        ds = first[role]
        assert (ds.PixelRepresentation, ds.BitsStored, ds.RescaleIntercept) == (1, 16, -1024)
        assert ds.PixelPaddingValue == -1024
        assert ds.BodyPartExamined == "HEAD" and ds.PatientPosition == "HFS"
        assert float(ds.CTDIvol) > 0 and float(ds.KVP) == 120
    assert first["localizer"].SeriesDate == "20261129"  # 23:59:20
    assert first["ncct"].SeriesDate == "20261130"  # 00:00:15
    assert first["localizer"].PixelRepresentation == 0


def test_positions_step_along_the_slice_normal(standard: StudyFiles) -> None:
    for role in ("ncct", "cta", "cta_mip"):
        datasets = [read_strict(p) for p in standard.by_role(role).files]
        datasets.sort(key=lambda ds: int(ds.InstanceNumber))
        normal = np.cross(*np.reshape(datasets[0].ImageOrientationPatient, (2, 3)))
        positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=float)
        steps = np.diff(positions, axis=0)
        spacing = float(datasets[0].SpacingBetweenSlices)
        assert np.allclose(steps @ normal, spacing, atol=2e-3)
        assert np.allclose(np.cross(steps, normal), 0.0, atol=2e-3)
        locations = [float(ds.SliceLocation) for ds in datasets]
        assert np.all(np.diff(locations) > 0)  # feet to head


def test_ncct_pixels_are_ct_like(standard: StudyFiles) -> None:
    volume, _ = hu_volume(standard, "ncct")
    middle = volume[len(volume) // 2]
    assert (middle == -2048).sum() > 0  # corners outside the reconstruction circle
    inside = middle[middle > -2048]
    assert inside.min() >= -1024 and inside.max() <= 3071
    assert ((inside > 20) & (inside < 50)).mean() > 0.2  # brain
    assert (inside > 700).mean() > 0.02  # skull
    assert (inside < -900).mean() > 0.1  # air around the head
    # The reconstruction circle takes in the whole head: its rim is air on every slice above
    # the neck.
    rows, cols = np.mgrid[0:128, 0:128]
    radius = np.hypot(rows - 63.5, cols - 63.5)
    rim = (radius > 60) & (radius < 63)
    assert (volume[:, rim] > -2048).all()
    assert (volume[2:, rim] < -900).all()


def test_clot_is_dark_and_the_contralateral_m1_bright_on_cta(
    standard: StudyFiles, occlusion: Occlusion, pose: Pose
) -> None:
    cta, datasets = hu_volume(standard, "cta")
    clot_mni = np.asarray(occlusion.clot_center_mni, dtype=float)
    clot = cta[voxel_at(datasets, pose.to_patient(clot_mni))]
    mirror = cta[voxel_at(datasets, pose.to_patient(clot_mni * [-1.0, 1.0, 1.0]))]
    assert 30 <= clot <= 120
    assert mirror > 200
    assert mirror - clot > 150
    ncct, ncct_datasets = hu_volume(standard, "ncct")
    assert ncct[voxel_at(ncct_datasets, pose.to_patient(clot_mni * [-1.0, 1.0, 1.0]))] < 80


def test_the_same_inputs_write_the_same_study(writer: StudyWriter, standard: StudyFiles) -> None:
    again = writer("again", with_cta=False, extras=False)
    other = writer("no-extras-twice", with_cta=False, extras=False)
    assert [p.read_bytes() for p in again.series[0].files] == [
        p.read_bytes() for p in other.series[0].files
    ]
    # Different options are a different series; the NCCT pixels stay the same.
    assert again.by_role("ncct").series_uid != standard.by_role("ncct").series_uid
    a = dcmread(again.by_role("ncct").files[5]).pixel_array
    b = dcmread(standard.by_role("ncct").files[5]).pixel_array
    assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------------
# Variants


@pytest.fixture(scope="module")
def reversed_study(writer: StudyWriter) -> StudyFiles:
    return writer("reversed", reversed_order=True)


def test_reversed_order_numbers_the_images_head_to_feet(
    reversed_study: StudyFiles, standard: StudyFiles
) -> None:
    for role in ("ncct", "cta", "cta_mip"):
        series = reversed_study.by_role(role)
        assert series.head_first
        datasets = [read_strict(p) for p in series.files]  # in the order written
        numbers = [int(ds.InstanceNumber) for ds in datasets]
        assert numbers == list(range(1, len(datasets) + 1))
        z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        assert np.all(np.diff(z) < 0)
        mtimes = [p.stat().st_mtime_ns for p in series.files]
        assert mtimes == sorted(mtimes)
        top = dcmread(standard.by_role(role).files[-1]).pixel_array
        assert np.array_equal(dcmread(series.files[0]).pixel_array, top)


def test_gantry_tilt_shears_the_ncct(writer: StudyWriter) -> None:
    study = writer("tilt", gantry_tilt_deg=15.0, with_cta=False, extras=False)
    datasets = [read_strict(p) for p in study.by_role("ncct").files]
    angle = np.radians(15.0)
    for ds in datasets:
        assert float(ds.GantryDetectorTilt) == 15.0
        assert np.allclose(ds.ImageOrientationPatient, [1, 0, 0, 0, np.cos(angle), np.sin(angle)])
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=float)
    assert np.allclose(np.diff(positions, axis=0), [0.0, 0.0, 5.0], atol=2e-3)


def test_one_ncct_slice_missing(writer: StudyWriter, standard: StudyFiles) -> None:
    study = writer("missing", missing_ncct_slice=True, with_cta=False, extras=False)
    series = study.by_role("ncct")
    full = standard.by_role("ncct")
    assert len(series.files) == len(full.files) - 1
    missing = sorted(set(full.instance_numbers) - set(series.instance_numbers))
    assert missing == list(series.missing_instance_numbers)
    assert 1 < missing[0] < len(full.files)
    numbers = sorted(int(read_strict(p).InstanceNumber) for p in series.files)
    assert missing[0] not in numbers
    assert series.as_manifest(study.series[0].folder.parent)["missing_instance_numbers"] == missing


def test_study_without_cta(writer: StudyWriter) -> None:
    study = writer("no-cta", with_cta=False)
    assert study.roles() == ["localizer", "ncct", "dose"]
    dose = read_strict(study.by_role("dose").files[0])
    events = [
        item
        for item in dose.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "CT Acquisition"
    ]
    assert len(events) == 2


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(RLELossless, id="rle"),
        pytest.param(JPEGLosslessSV1, id="jpeg-lossless"),
    ],
)
def compressed(request: pytest.FixtureRequest, writer: StudyWriter) -> Iterator[StudyFiles]:
    if request.param == JPEGLosslessSV1:
        pytest.importorskip("gdcm", reason="python-gdcm encodes JPEG Lossless")
        pytest.importorskip("libjpeg", reason="pylibjpeg-libjpeg decodes JPEG Lossless")
    yield writer(f"ts-{request.param}", transfer_syntax=request.param)


def test_compressed_variants_decode_to_the_same_pixels(
    compressed: StudyFiles, standard: StudyFiles
) -> None:
    for role in IMAGE_ROLES:
        plain_series = standard.by_role(role)
        packed_series = compressed.by_role(role)
        assert [p.name for p in packed_series.files] == [p.name for p in plain_series.files]
        for plain_path, packed_path in zip(plain_series.files, packed_series.files, strict=True):
            packed = read_strict(packed_path, pixels=True)
            assert packed.file_meta.TransferSyntaxUID == packed_series.transfer_syntax
            assert packed["PixelData"].is_undefined_length
            plain = dcmread(plain_path)
            assert np.array_equal(packed.pixel_array, plain.pixel_array)
    dose = dcmread(compressed.by_role("dose").files[0])
    assert dose.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


@pytest.mark.dcmtk
def test_compressed_files_pass_dcmdump(compressed: StudyFiles) -> None:
    files = [str(p) for p in all_files(compressed)]
    result = subprocess.run([dcmtk("dcmdump"), *files], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_unknown_transfer_syntax_is_refused(writer: StudyWriter) -> None:
    with pytest.raises(ValueError, match="transfer syntax"):
        writer("bad", transfer_syntax="1.2.840.10008.1.2.4.50")


def test_invalid_identity_is_refused() -> None:
    with pytest.raises(ValueError, match="birth_date, sex, age, study_uid, study_time"):
        replace(
            IDENTITY,
            birth_date="1951-02-03",
            sex="X",
            age="75",
            study_uid="1.2.03",
            study_time="23:59",
        )
