"""Series on disk -> volume in HU, and the NCCT/CTA choice of whole studies.

The synthetic cohort in every variant (one plan, so every variant shows the same head in the
same pose), every transfer syntax the listener accepts, Enhanced CT built here with pydicom,
and series that are broken in the ways scanners and networks break them.
"""

from __future__ import annotations

import importlib
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_samples import ct_dataset
from peers import dcmtk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from scipy import ndimage

from scanet_node.errors import ImagingError
from scanet_node.imaging.classify import select_series
from scanet_node.imaging.classify_read import choose_series, facts_from_header
from scanet_node.imaging.series import AIR_HU, Volume, find_series, load_series
from scanet_node.synth.cohort import VARIANTS, plan_study, write_study

PLAN = plan_study(3, 0)


@dataclass(frozen=True)
class Study:
    folder: Path
    manifest: dict[str, Any]

    def entry(self, role: str) -> dict[str, Any]:
        return next(s for s in self.manifest["series"] if s["role"] == role)

    def series(self, role: str) -> Path:
        return self.folder / self.entry(role)["folder"]

    def landmark(self, name: str) -> np.ndarray:
        return np.array(self.manifest["landmarks"][name]["patient"], dtype=float)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Study]:
    """One small study per variant, all of one plan (~12 s in all)."""
    out = tmp_path_factory.mktemp("imaging-cohort")
    written = {}
    for variant in VARIANTS:
        manifest = write_study(out / variant, PLAN, small=True, variant=variant)
        written[variant] = Study(out / variant / PLAN.case_id, manifest)
    return written


@pytest.fixture(scope="module")
def loaded(studies: dict[str, Study]) -> dict[tuple[str, str], Volume]:
    """The NCCT and CTA of every variant, loaded once."""
    return {
        (variant, role): load_series(study.series(role))
        for variant, study in studies.items()
        for role in ("ncct", "cta")
        if any(s["role"] == role for s in study.manifest["series"])
    }


@pytest.fixture(scope="module")
def full_size(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A full-size study with a 0.625 mm CTA (~300 slices of 512x512, ~8 s to write)."""
    out = tmp_path_factory.mktemp("imaging-full")
    manifest = write_study(out, PLAN, cta_slice_mm=0.625)
    return Study(out / PLAN.case_id, manifest)


def hu_at(volume: Volume, point: np.ndarray) -> float:
    """HU of the voxel nearest a patient point."""
    k, r, c = np.round(volume.patient_to_array(point)).astype(int)
    return float(volume.hu[k, r, c])


def sample(volume: Volume, points: np.ndarray) -> np.ndarray:
    """Trilinear HU at patient points."""
    return ndimage.map_coordinates(
        volume.hu, volume.patient_to_array(points).T, order=1, cval=AIR_HU
    )


# --------------------------------------------------------------------------------------------
# The synthetic cohort


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_manifest_series_are_chosen_in_every_variant(
    studies: dict[str, Study], variant: str
) -> None:
    study = studies[variant]
    selection = choose_series(study.folder)
    assert selection.ncct_uid == study.entry("ncct")["series_instance_uid"]
    if variant == "no-cta":
        assert selection.cta_uid is None
        assert "no CTA: no series qualified" in selection.reasons
    else:
        assert selection.cta_uid == study.entry("cta")["series_instance_uid"]
    roles = {s["series_instance_uid"]: s["role"] for s in study.manifest["series"]}
    for uid, role in selection.roles.items():
        expected = roles[uid] if roles[uid] in ("ncct", "cta") else "other"
        assert role.role == expected, (roles[uid], role.reason)
        assert not role.needs_image_check
    text = "\n".join(selection.reasons)
    assert "localizer (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)" in text
    assert "X-Ray Radiation Dose SR Storage is not a CT image" in text
    assert "image check: a head" in text  # the NCCT's tags are weak: the pixels decide


def test_standard_geometry_matches_the_manifest(
    studies: dict[str, Study], loaded: dict[tuple[str, str], Volume]
) -> None:
    study = studies["standard"]
    for role in ("ncct", "cta"):
        volume = loaded["standard", role]
        geometry = study.entry(role)["geometry"]
        assert volume.shape == (
            geometry["number_of_slices"],
            geometry["rows"],
            geometry["columns"],
        )
        assert volume.hu.dtype == np.float32 and not volume.hu.flags.writeable
        assert volume.spacing == pytest.approx(
            (geometry["spacing_between_slices_mm"], *geometry["pixel_spacing_mm"])
        )
        assert volume.corrections == () and volume.problems == ()
        assert volume.series_instance_uid == study.entry(role)["series_instance_uid"]
        assert volume.modality == "CT" and volume.number_of_instances == volume.shape[0]
        assert volume.slice_thickness == geometry["slice_thickness_mm"]
        assert volume.series_description == study.entry(role)["description"]
        # The affine maps (col, row, slice) to LPS: the first voxel, then the last.
        assert volume.affine[:3, 3] == pytest.approx(geometry["first_position"], abs=1e-3)
        last = volume.affine @ np.array([0, 0, volume.shape[0] - 1, 1])
        assert last[:3] == pytest.approx(geometry["last_position"], abs=1e-3)
        assert volume.array_to_patient([0, 0, 1]) - volume.affine[:3, 3] == pytest.approx(
            np.array(geometry["image_orientation"][:3]) * geometry["pixel_spacing_mm"][1]
        )
        # Outside the reconstruction circle (padding) is air, and nothing is below air.
        assert volume.hu[:, 0, 0].max() == AIR_HU and volume.hu.min() == AIR_HU


def test_clot_and_patent_m1_lie_where_the_manifest_says(
    studies: dict[str, Study], loaded: dict[tuple[str, str], Volume]
) -> None:
    for variant, study in studies.items():
        if variant == "no-cta":
            continue
        cta = loaded[variant, "cta"]
        clot_hu = study.manifest["occlusion"]["clot_hu"]
        clot = np.array(study.manifest["occlusion"]["clot_center_patient"])
        assert abs(hu_at(cta, clot) - clot_hu) < 25, variant
        assert hu_at(cta, study.landmark("patent_contralateral_m1")) > 200, variant


def test_reversed_order_is_sorted_by_position(
    studies: dict[str, Study], loaded: dict[tuple[str, str], Volume]
) -> None:
    assert studies["reversed"].entry("ncct")["instance_order"] == "head-to-feet"
    for role in ("ncct", "cta"):
        reversed_, standard = loaded["reversed", role], loaded["standard", role]
        assert np.array_equal(reversed_.hu, standard.hu)
        assert np.array_equal(reversed_.affine, standard.affine)
        assert reversed_.corrections == ()


@pytest.mark.parametrize("variant", ["jpeg-lossless", "rle"])
def test_compressed_variants_give_the_same_hu(
    loaded: dict[tuple[str, str], Volume], variant: str
) -> None:
    for role in ("ncct", "cta"):
        assert np.array_equal(loaded[variant, role].hu, loaded["standard", role].hu)
        assert np.array_equal(loaded[variant, role].affine, loaded["standard", role].affine)


def test_gantry_tilt_is_corrected_onto_an_orthogonal_grid(
    studies: dict[str, Study], loaded: dict[tuple[str, str], Volume]
) -> None:
    study = studies["gantry-tilt"]
    ncct = loaded["gantry-tilt", "ncct"]
    geometry = study.entry("ncct")["geometry"]
    assert geometry["gantry_tilt_deg"] == 15.0
    (note,) = ncct.corrections
    assert note.startswith("corrected gantry tilt of 15.0 deg")
    assert ncct.spacing[0] == pytest.approx(5.0 * math.cos(math.radians(15.0)), abs=1e-3)
    # The grid is orthogonal: the slice axis is the normal of the image planes.
    axes = ncct.affine[:3, :3] / np.array(ncct.spacing[::-1])
    assert axes.T @ axes == pytest.approx(np.eye(3), abs=1e-9)
    # Every slice moved, none was cut: the grid grew along the tilted column direction.
    assert ncct.shape[0] == geometry["number_of_slices"] and ncct.shape[1] > geometry["rows"]
    # Geometry against the untilted CTA of the same study: the same head at the same points.
    rng = np.random.default_rng(0)
    centre = study.landmark("grey_matter_caudate")
    points = centre + rng.uniform(-60.0, 60.0, (4000, 3)) * [1.0, 1.0, 0.8]
    cta = loaded["gantry-tilt", "cta"]
    assert np.corrcoef(sample(ncct, points), sample(cta, points))[0, 1] > 0.97
    shifted = sample(ncct, points + np.array([0.0, 5.0, 0.0]))  # what 5 mm of error would look like
    assert np.corrcoef(shifted, sample(cta, points))[0, 1] < 0.9
    # And against the manifest's pose: the tissues where it puts them.
    assert 30 <= hu_at(ncct, study.landmark("grey_matter_caudate")) <= 48
    assert 20 <= hu_at(ncct, study.landmark("white_matter_centrum")) <= 35
    assert -5 <= hu_at(ncct, study.landmark("csf_ventricle_atrium")) <= 15


def test_a_missing_slice_is_reported_and_filled(
    studies: dict[str, Study], loaded: dict[tuple[str, str], Volume]
) -> None:
    study = studies["missing-slice"]
    ncct, standard = loaded["missing-slice", "ncct"], loaded["standard", "ncct"]
    geometry = study.entry("ncct")["geometry"]
    gap = geometry["number_of_slices"] // 2
    z = [
        geometry["first_position"][2] + k * geometry["slice_step_mm"][2] for k in (gap - 1, gap + 1)
    ]
    assert ncct.corrections == (
        f"missing slice between z={z[0]:.2f} and z={z[1]:.2f} mm: filled by interpolation",
    )
    assert ncct.problems == ()
    assert ncct.shape == standard.shape and np.array_equal(ncct.affine, standard.affine)
    others = [k for k in range(ncct.shape[0]) if k != gap]
    assert np.array_equal(ncct.hu[others], standard.hu[others])
    assert np.allclose(ncct.hu[gap], (standard.hu[gap - 1] + standard.hu[gap + 1]) / 2)
    assert ncct.number_of_instances == geometry["number_of_slices"] - 1


def test_find_series_groups_a_study_folder(studies: dict[str, Study]) -> None:
    study = studies["standard"]
    found = find_series(study.folder)  # manifest.json lies beside the series: skipped
    by_uid = {s.series_instance_uid: s for s in found}
    assert set(by_uid) == {s["series_instance_uid"] for s in study.manifest["series"]}
    for entry in study.manifest["series"]:
        series = by_uid[entry["series_instance_uid"]]
        assert len(series.paths) == series.number_of_images == entry["instances"]
        assert int(series.header.InstanceNumber) == 1
        assert "PixelData" not in series.header
    assert [s.header.SeriesNumber for s in found] == sorted(s.header.SeriesNumber for s in found)


def test_full_size_study_loads_and_is_chosen(full_size: Study) -> None:
    cta_dir = full_size.series("cta")
    cta = load_series(cta_dir)
    assert cta.shape[1:] == (512, 512) and cta.shape[0] >= 250
    clot_hu = full_size.manifest["occlusion"]["clot_hu"]
    clot = np.array(full_size.manifest["occlusion"]["clot_center_patient"])
    assert abs(hu_at(cta, clot) - clot_hu) < 30
    assert hu_at(cta, full_size.landmark("patent_contralateral_m1")) > 200
    selection = choose_series(full_size.folder)
    assert selection.ncct_uid == full_size.entry("ncct")["series_instance_uid"]
    assert selection.cta_uid == full_size.entry("cta")["series_instance_uid"]


def test_a_series_can_be_averaged_to_coarser_pixels_as_it_is_decoded(full_size: Study) -> None:
    cta_dir = full_size.series("cta")
    full = load_series(cta_dir)
    coarse = load_series(cta_dir, max_pixel_mm=1.0)
    n = full.shape[0]
    assert coarse.shape == (n, 256, 256)
    assert coarse.spacing[0] == pytest.approx(full.spacing[0])
    assert coarse.spacing[1:] == pytest.approx(tuple(2 * s for s in full.spacing[1:]))
    # Each coarse pixel is the mean of its 2 x 2 block, and lies at the block's centre.
    blocks = full.hu.reshape(n, 256, 2, 256, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(coarse.hu, blocks, atol=1e-3)
    corners = np.array([[0, 0, 0], [n - 1, 255, 0], [n // 2, 100, 200]], dtype=float)
    np.testing.assert_allclose(
        coarse.array_to_patient(corners),
        full.array_to_patient(corners * [1, 2, 2] + [0, 0.5, 0.5]),
        atol=1e-6,
    )
    clot = np.array(full_size.manifest["occlusion"]["clot_center_patient"])
    assert abs(hu_at(coarse, clot) - full_size.manifest["occlusion"]["clot_hu"]) < 30
    assert coarse.corrections == full.corrections


# --------------------------------------------------------------------------------------------
# Series written here


def write_series(
    folder: Path,
    stored: np.ndarray,
    positions: list[tuple[float, float, float]] | np.ndarray,
    *,
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    intercept: float = -1024.0,
    slope: float = 1.0,
    bits_stored: int = 16,
    padding: int | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """A classic CT series of ``stored`` values (slices, rows, cols), one file per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    signed = stored.dtype.kind == "i"
    paths = []
    for k, image in enumerate(stored):
        ds = ct_dataset(study_uid, series_uid, index=k, size=image.shape[0])
        ds.Rows, ds.Columns = image.shape
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.ImageOrientationPatient = list(orientation)
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.BitsAllocated = 8 if stored.dtype.itemsize == 1 else 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if padding is not None:
            ds.PixelPaddingValue = padding
        ds.PixelData = np.ascontiguousarray(image).tobytes()
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def head_slices(count: int = 4, size: int = 64) -> np.ndarray:
    """HU images of a disk (brain, skull) with a smooth gradient and noise, -2048 outside."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    radius = np.hypot(y, x) / (size / 2)
    rng = np.random.default_rng(4)
    out = np.full((count, size, size), -2048.0)
    for k in range(count):
        hu = np.where(radius < 0.7, 30.0 + 20 * x / size + 3 * k, -1000.0)
        hu = np.where((radius >= 0.7) & (radius < 0.8), 1000.0, hu)
        hu += rng.normal(0, 3, hu.shape)
        out[k] = np.where(radius < 0.95, hu, -2048.0)
    return np.rint(out)


def axial_positions(count: int, step: float = 5.0) -> list[tuple[float, float, float]]:
    return [(-16.0, -16.0, k * step) for k in range(count)]


def transcode(src: Path, dst: Path, syntax: str) -> None:
    """Re-encode one file: GDCM, DCMTK's dcmcjpeg for lossy JPEG, pydicom for RLE and deflate."""
    gdcm_names = {
        ImplicitVRLittleEndian: "ImplicitVRLittleEndian",
        ExplicitVRBigEndian: "ExplicitVRBigEndian",
        JPEGLossless: "JPEGLosslessProcess14",
        JPEGLosslessSV1: "JPEGLosslessProcess14_1",
        JPEGLSLossless: "JPEGLSLossless",
        JPEGLSNearLossless: "JPEGLSNearLossless",
        JPEG2000Lossless: "JPEG2000Lossless",
        JPEG2000: "JPEG2000",
    }
    if syntax in gdcm_names:
        gdcm: Any = importlib.import_module("gdcm")
        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(
            gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, gdcm_names[syntax]))
        )
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
    elif syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
        option = "+eb" if syntax == JPEGBaseline8Bit else "+ee"
        done = subprocess.run(
            [dcmtk("dcmcjpeg"), option, str(src), str(dst)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    elif syntax == RLELossless:
        ds = dcmread(src)
        ds.compress(RLELossless)
        ds.save_as(dst, enforce_file_format=True)
    elif syntax == DeflatedExplicitVRLittleEndian:
        ds = dcmread(src)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(dst, enforce_file_format=True)
    else:
        shutil.copy(src, dst)
    assert dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax


LOSSLESS = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
]
LOSSY = [JPEGLSNearLossless, JPEG2000]
EIGHT_OR_TWELVE_BIT = [JPEGBaseline8Bit, JPEGExtended12Bit]


def test_every_syntax_the_listener_accepts_is_covered_here() -> None:
    from scanet_node.ingest.server import ACCEPTED_TRANSFER_SYNTAXES

    assert sorted(LOSSLESS + LOSSY + EIGHT_OR_TWELVE_BIT) == sorted(ACCEPTED_TRANSFER_SYNTAXES)


@pytest.mark.parametrize("syntax", LOSSLESS + LOSSY, ids=lambda s: s.name)
def test_every_16_bit_transfer_syntax_loads_the_same_hu(tmp_path: Path, syntax: str) -> None:
    hu = head_slices()
    stored = (hu + 1024).astype(np.int16)  # -2048 HU outside the circle: stored -1024
    source = write_series(tmp_path / "src", stored, axial_positions(4), padding=-1024)
    for path in source:
        transcode(path, tmp_path / f"{path.stem}.{syntax}.dcm", syntax)
    volume = load_series(sorted(tmp_path.glob(f"*.{syntax}.dcm")))
    expected = np.maximum(hu, AIR_HU)
    if syntax in LOSSLESS:
        assert np.array_equal(volume.hu, expected.astype(np.float32))
    else:
        assert float(np.mean(np.abs(volume.hu - expected))) < 5.0
    assert volume.spacing == (5.0, 0.5, 0.5)


@pytest.mark.dcmtk
@pytest.mark.parametrize("syntax", EIGHT_OR_TWELVE_BIT, ids=lambda s: s.name)
def test_lossy_jpeg_of_8_and_12_bits_loads_close_to_the_source(tmp_path: Path, syntax: str) -> None:
    hu = np.maximum(head_slices(), AIR_HU)
    if syntax == JPEGBaseline8Bit:
        slope, bits, dtype = 10.0, 8, np.uint8
    else:
        slope, bits, dtype = 1.0, 12, np.uint16
    stored = np.clip(np.rint((hu + 1024) / slope), 0, 2**bits - 1).astype(dtype)
    source = write_series(
        tmp_path / "src", stored, axial_positions(4), slope=slope, bits_stored=bits
    )
    for path in source:
        transcode(path, tmp_path / f"{path.stem}.jpeg.dcm", syntax)
    volume = load_series(sorted(tmp_path.glob("*.jpeg.dcm")))
    exact = stored.astype(np.float32) * slope - 1024
    assert float(np.mean(np.abs(volume.hu - exact))) < 3 * slope
    assert float(np.median(volume.hu[:, 32, 20:44])) == pytest.approx(35, abs=3 * slope)


def enhanced_ct(
    path: Path, hu: np.ndarray, positions: np.ndarray, intercepts: list[float], order: list[int]
) -> Dataset:
    """An Enhanced CT Image (one multi-frame file) with frames stored in ``order``.

    Orientation and pixel measures are shared; position and rescale are per frame.
    """

    def item(**values: object) -> Dataset:
        out = Dataset()
        for key, value in values.items():
            setattr(out, key, value)
        return out

    ds = ct_dataset(size=hu.shape[1])
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
    del ds.RescaleIntercept, ds.RescaleSlope, ds.SliceThickness
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.SeriesDescription = "CTA Head 1.0"
    ds.ContrastBolusAgentSequence = DicomSequence(
        [item(CodeValue="C-B0317", CodingSchemeDesignator="SRT", CodeMeaning="Iohexol")]
    )
    ds.NumberOfFrames = len(order)
    ds.SharedFunctionalGroupsSequence = DicomSequence(
        [
            item(
                PixelMeasuresSequence=DicomSequence(
                    [item(PixelSpacing=[0.5, 0.5], SliceThickness=1.0)]
                ),
                PlaneOrientationSequence=DicomSequence(
                    [item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]
                ),
            )
        ]
    )
    frames = []
    stored = []
    for k in order:
        frames.append(
            item(
                PlanePositionSequence=DicomSequence(
                    [item(ImagePositionPatient=[float(v) for v in positions[k]])]
                ),
                PixelValueTransformationSequence=DicomSequence(
                    [item(RescaleIntercept=intercepts[k], RescaleSlope=1, RescaleType="HU")]
                ),
            )
        )
        stored.append((hu[k] - intercepts[k]).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = np.stack(stored).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_enhanced_ct_frames_are_placed_and_rescaled_one_by_one(tmp_path: Path) -> None:
    hu = np.maximum(head_slices(count=6), AIR_HU)
    positions = np.array(axial_positions(6, step=1.0))
    intercepts = [-1024.0, -1000.0, -2048.0, -1024.0, -512.0, -1024.0]
    path = tmp_path / "enhanced.dcm"
    ds = enhanced_ct(path, hu, positions, intercepts, order=[3, 0, 5, 1, 4, 2])
    volume = load_series([path])
    assert np.array_equal(volume.hu, hu.astype(np.float32))
    assert volume.spacing == (1.0, 0.5, 0.5) and volume.slice_thickness == 1.0
    assert volume.sop_class_uid == EnhancedCTImageStorage and volume.number_of_instances == 1
    assert volume.affine[:3, 3] == pytest.approx(positions[0])
    # Its header facts count frames, and it classifies as the CTA it is.
    facts = facts_from_header(dcmread(path, stop_before_pixels=True), 1, 6)
    assert facts.images == 6 and facts.contrast_agent == "Iohexol"
    assert facts.plane == "axial" and facts.slice_thickness == 1.0
    assert select_series([(str(ds.SeriesInstanceUID), facts)], None).cta_uid is None  # 6 < 20
    found = find_series(tmp_path)
    assert len(found) == 1 and found[0].number_of_images == 6


def test_duplicate_positions_keep_one_image(tmp_path: Path) -> None:
    hu = head_slices(count=5)
    stored = (hu + 1024).astype(np.int16)
    positions = axial_positions(5)
    paths = write_series(tmp_path, stored, positions, padding=-1024)
    copy = dcmread(paths[2])
    copy.SOPInstanceUID = generate_uid()
    copy.InstanceNumber = 99
    copy.PixelData = np.zeros_like(stored[2]).tobytes()
    copy.save_as(tmp_path / "copy.dcm", enforce_file_format=True)
    volume = load_series(tmp_path)
    assert volume.shape[0] == 5 and volume.number_of_instances == 6
    assert np.array_equal(volume.hu, np.maximum(hu, AIR_HU).astype(np.float32))
    (note,) = volume.corrections
    assert note.startswith("1 duplicate slice position(s) (z=10.00 mm)")


def ramp(positions: list[tuple[float, float, float]], size: int = 16) -> np.ndarray:
    """Stored values that encode each slice's z: HU = 10 z."""
    return np.stack([np.full((size, size), 10 * p[2] + 1024, dtype=np.int16) for p in positions])


def test_uneven_spacing_is_resampled_to_the_median(tmp_path: Path) -> None:
    z = [0.0, 1.0, 2.0, 3.3, 4.3, 5.3, 6.3, 7.6, 8.6, 9.6]
    positions = [(0.0, 0.0, v) for v in z]
    volume = load_series(write_series(tmp_path, ramp(positions), positions))
    (note,) = volume.corrections
    assert note == "uneven slice spacing (1.00 to 1.30 mm): resampled to the median spacing 1 mm"
    slices = volume.shape[0]
    assert slices == 11 and volume.spacing[0] == pytest.approx(9.6 / 10)
    # HU encodes z, so interpolated slices must hold 10 z of their own position.
    z_of = np.array([volume.array_to_patient([k, 0, 0])[2] for k in range(slices)])
    assert volume.hu[:, 0, 0] == pytest.approx(10 * z_of, abs=1e-3)


def test_several_missing_slices_are_a_problem(tmp_path: Path) -> None:
    z = [0.0, 1.0, 2.0, 3.0, 4.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    positions = [(0.0, 0.0, v) for v in z]
    volume = load_series(write_series(tmp_path, ramp(positions), positions))
    assert volume.corrections == ()
    assert volume.problems == (
        "3 slices missing between z=4.00 and z=8.00 mm (gap 4.0 mm, spacing 1 mm): "
        "interpolated across, not to be trusted",
    )
    assert volume.shape[0] == 13 and volume.hu[:, 0, 0] == pytest.approx(10 * np.arange(13.0))


def test_reverse_normal_and_oblique_stacks_sort_along_the_normal(tmp_path: Path) -> None:
    # Feet-first-like orientation: the normal points to the feet; k must follow it.
    orientation = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    positions = [(0.0, 0.0, v) for v in (3.0, 0.0, 2.0, 1.0)]
    volume = load_series(
        write_series(tmp_path, ramp(positions), positions, orientation=orientation)
    )
    assert volume.hu[:, 0, 0] == pytest.approx([30, 20, 10, 0])
    assert volume.affine[:3, 2] == pytest.approx([0, 0, -1])


def test_inconsistent_series_are_refused(tmp_path: Path) -> None:
    hu = (head_slices(count=3) + 1024).astype(np.int16)
    uid = generate_uid()
    write_series(tmp_path / "a", hu, axial_positions(3), series_uid=uid)
    tilted = (1.0, 0.0, 0.0, 0.0, 0.9, 0.43589)
    write_series(tmp_path / "b", hu[:1], [(0.0, 0.0, 20.0)], orientation=tilted, series_uid=uid)
    files = sorted((tmp_path / "a").glob("*.dcm")) + sorted((tmp_path / "b").glob("*.dcm"))
    with pytest.raises(ImagingError, match="inconsistent image orientations"):
        load_series(files)
    small = (head_slices(count=1, size=32) + 1024).astype(np.int16)
    write_series(tmp_path / "c", small, [(0.0, 0.0, 20.0)], series_uid=uid)
    files = sorted((tmp_path / "a").glob("*.dcm")) + sorted((tmp_path / "c").glob("*.dcm"))
    with pytest.raises(ImagingError, match="different sizes in one series"):
        load_series(files)
    write_series(tmp_path / "d", hu[:1], [(0.0, 0.0, 20.0)])
    files = sorted((tmp_path / "a").glob("*.dcm")) + sorted((tmp_path / "d").glob("*.dcm"))
    with pytest.raises(ImagingError, match="belong to 2 series"):
        load_series(files)


def test_unreadable_and_empty_series_are_named(tmp_path: Path, studies: dict[str, Study]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImagingError, match="no files in the series"):
        load_series(tmp_path / "empty")
    with pytest.raises(ImagingError, match="is not a folder"):
        load_series(tmp_path / "nowhere")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(ImagingError, match=r"junk\.dcm: not a readable DICOM file"):
        load_series([junk])
    dose = next(studies["standard"].series("dose").glob("*.dcm"))
    with pytest.raises(ImagingError, match="no pixel data \\(X-Ray Radiation Dose SR Storage\\)"):
        load_series([dose])
    broken = dcmread(next(studies["standard"].series("ncct").glob("*.dcm")))
    del broken.ImagePositionPatient
    broken.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    with pytest.raises(ImagingError, match=r"broken\.dcm: ImagePositionPatient is missing"):
        load_series([tmp_path / "broken.dcm"])
    truncated = dcmread(next(studies["rle"].series("ncct").glob("*.dcm")))
    truncated.PixelData = truncated.PixelData[:200]
    truncated.save_as(tmp_path / "truncated.dcm", enforce_file_format=True)
    with pytest.raises(ImagingError, match=r"truncated\.dcm: cannot decode pixel data \(RLE"):
        load_series([tmp_path / "truncated.dcm"])


def test_a_series_that_cannot_be_loaded_is_left_out_of_the_choice(tmp_path: Path) -> None:
    study = tmp_path / "study"
    hu = (head_slices(count=25, size=32) + 1024).astype(np.int16)
    write_series(study / "ok", hu, axial_positions(25))
    odd = write_series(study / "odd", hu, axial_positions(25))
    broken = dcmread(odd[3])
    broken.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    broken.save_as(odd[3], enforce_file_format=True)
    selection = choose_series(study)
    text = "\n".join(selection.reasons)
    assert "left out, inconsistent image orientations" in text
    assert selection.ncct_uid is None and selection.cta_uid is None
