"""The SR and Secondary Capture builders: every object is written, read back and validated.

dciodvfy (dicom3tools) checks the IODs; dsrdump (DCMTK) reads the SR as a PACS would.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from peers import dcmtk, require_tool
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm
from pydicom.uid import (
    Comprehensive3DSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from scanet_node.results import (
    AlgorithmInfo,
    AnalysisResult,
    OverlaySlice,
    ResultsError,
    StudyRefs,
    build,
    codes,
    write_png,
)
from scanet_node.results.sc import build_overlays, build_summary, composite
from scanet_node.results.sr import build_sr

ROWS, COLS = 64, 48
SHA = "0123456789abcdef" * 4
#: dciodvfy does not know private coding schemes; PS3.3 8.2 allows them ("99" prefix).
ALLOWED_WARNINGS = ("Unrecognized defined term <99SCANET>",)


def ct_header(study_uid: str, series_uid: str, index: int, *, cta: bool) -> Dataset:
    """A CT Image Storage header with the Type 1 and 2 attributes of a scanner's image."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
    ds.PatientName = "Müller^Test"
    ds.PatientID = "PID-4711"
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "F"
    ds.StudyDate = "20261129"
    ds.StudyTime = "101500" if cta else "094500"
    ds.AccessionNumber = "ACC-CTA" if cta else "ACC-NCCT"
    ds.StudyID = "2" if cta else "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.Manufacturer = "SYNTHETIC"
    ds.ManufacturerModelName = "Phantom"
    ds.SeriesNumber = 3 if cta else 2
    ds.SeriesDescription = "CTA head" if cta else "Head 5mm"
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [-12.0, -16.0, 5.0 * index]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.6]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    return ds


def make_study(
    *, cross_study: bool = True, seed: str = "job-1", predecessor: Dataset | None = None
) -> StudyRefs:
    """NCCT and CTA of one patient, in two studies unless ``cross_study`` is False."""
    ncct_study = generate_uid(entropy_srcs=[seed, "ncct-study"])
    cta_study = generate_uid(entropy_srcs=[seed, "cta-study"]) if cross_study else ncct_study
    ncct_series, cta_series = generate_uid(), generate_uid()
    ncct = [ct_header(ncct_study, ncct_series, i, cta=False) for i in range(4)]
    cta = [ct_header(cta_study, cta_series, i, cta=True) for i in range(6)]
    return StudyRefs(target=cta[0], ncct=ncct, cta=cta, uid_seed=seed, predecessor=predecessor)


def algorithm(*, synthetic: bool = True) -> AlgorithmInfo:
    return AlgorithmInfo(
        name="SCANet",
        version="0.1.0 scanet-112",
        checkpoint_sha256=SHA,
        synthetic=synthetic,
        threshold=0.5,
        input_size=112,
    )


def attention_blob() -> np.ndarray:
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    blob = np.exp(-((yy - ROWS / 2) ** 2 + (xx - COLS / 2) ** 2) / 40.0)
    return blob.astype(np.float32)


def analysed(study: StudyRefs, *, attention: np.ndarray | None = None) -> AnalysisResult:
    weights = np.linspace(1.0, 2.0, 26)
    weights = (weights / weights.sum()).tolist()
    hu = (35.0 + 20.0 * np.sin(np.arange(COLS) / 4.0))[None, :].repeat(ROWS, axis=0)
    overlay = OverlaySlice(
        source=study.ncct[2],
        hu=hu.astype(np.float32),
        attention=attention_blob() if attention is None else attention,
        slab=12,
        slice_weight=weights[12],
    )
    return AnalysisResult(
        status="analysed",
        algorithm=algorithm(),
        probability=0.734,
        positive=True,
        slice_weights=weights,
        overlays=[overlay],
        attention_point=ATTENTION_POINT,
        attention_slab=12,
    )


#: NCCT patient coordinates (LPS mm) of the highest attention, as the worker maps it back.
ATTENTION_POINT = (-3.5, 2.25, 61.0)

DETAIL = "no CTA of this patient arrived within 3600 s of the NCCT"


def not_analysable() -> AnalysisResult:
    return AnalysisResult(
        status="not_analysable", algorithm=algorithm(), reason="cta_missing", detail=DETAIL
    )


def save(ds: Dataset, path: Path) -> Dataset:
    """Write as a DICOM file and read it back."""
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def content_items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def by_meaning(ds: Dataset, meaning: str) -> list[Dataset]:
    return [
        item for item in content_items(ds) if item.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def evidence_uids(ds: Dataset, keyword: str) -> set[str]:
    return {
        ref.ReferencedSOPInstanceUID
        for study in ds.get(keyword, [])
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }


def assert_valid_iod(path: Path) -> None:
    dciodvfy = require_tool("dciodvfy", "apt-get install dicom3tools")
    out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"{path.name}: {errors}"
    warnings = [
        line
        for line in lines
        if line.startswith("Warning") and not any(w in line for w in ALLOWED_WARNINGS)
    ]
    assert not warnings, f"{path.name}: {warnings}"


@pytest.fixture(scope="module")
def analysed_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyRefs, list[Path]]:
    study = make_study()
    folder = tmp_path_factory.mktemp("analysed")
    paths = []
    for i, ds in enumerate(build(study, analysed(study))):
        paths.append(folder / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return study, paths


@pytest.fixture(scope="module")
def refused_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyRefs, list[Path]]:
    study = make_study()
    folder = tmp_path_factory.mktemp("refused")
    paths = []
    for i, ds in enumerate(build(study, not_analysable())):
        paths.append(folder / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return study, paths


def test_build_returns_sr_summary_then_overlays(
    analysed_files: tuple[StudyRefs, list[Path]],
) -> None:
    study, paths = analysed_files
    read = [pydicom.dcmread(p) for p in paths]
    assert [ds.SOPClassUID for ds in read] == [
        Comprehensive3DSRStorage,
        SecondaryCaptureImageStorage,
        SecondaryCaptureImageStorage,
    ]
    assert [ds.SeriesNumber for ds in read] == [9900, 9902, 9901]
    for ds in read:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.StudyInstanceUID == study.target.StudyInstanceUID
        assert ds.AccessionNumber == "ACC-CTA"
        assert ds.PatientName == "Müller^Test"
        assert ds.PatientID == "PID-4711"
        assert ds.Manufacturer == "scanet-node project"
        assert ds.ManufacturerModelName == "scanet-node"
        assert "synthetic-trained" in ds.SeriesDescription


def test_analysed_sr_reports_probability_class_algorithm_and_sources(
    analysed_files: tuple[StudyRefs, list[Path]],
) -> None:
    study, paths = analysed_files
    sr = pydicom.dcmread(paths[0])
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    (probability,) = by_meaning(sr, "Probability")
    value = probability.MeasuredValueSequence[0]
    assert float(value.NumericValue) == pytest.approx(73.4)
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    assert value.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    (threshold,) = by_meaning(sr, "Threshold Value")
    assert float(threshold.MeasuredValueSequence[0].NumericValue) == pytest.approx(50.0)
    (predicted,) = by_meaning(sr, codes.PREDICTED_MTICI_2C_OR_BETTER.meaning)
    assert predicted.ConceptCodeSequence[0].CodeValue == dcm.SCT.Yes.value
    (qc,) = by_meaning(sr, codes.IMAGE_QUALITY_CONTROL.meaning)
    assert qc.ConceptCodeSequence[0].CodeValue == codes.QC_PASSED.value

    names = {item.TextValue for item in by_meaning(sr, "Algorithm Name")}
    versions = {item.TextValue for item in by_meaning(sr, "Algorithm Version")}
    parameters = {item.TextValue for item in by_meaning(sr, "Algorithm Parameters")}
    assert names == {"SCANet"}
    assert versions == {"0.1.0 scanet-112"}
    assert {
        f"checkpoint-sha256={SHA}",
        "threshold=0.5",
        "input-size=112",
        "training-data=synthetic",
    } <= parameters
    (statement,) = by_meaning(sr, codes.RESEARCH_USE_STATEMENT.meaning)
    assert "RESEARCH USE" in statement.TextValue

    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in content_items(sr)
        if item.ValueType == "IMAGE"
    }
    ncct = {ds.SOPInstanceUID for ds in study.ncct}
    cta = {ds.SOPInstanceUID for ds in study.cta}
    assert referenced == ncct | cta
    # The CTA is in the SR's study, the NCCT in another one.
    assert evidence_uids(sr, "CurrentRequestedProcedureEvidenceSequence") == cta
    assert evidence_uids(sr, "PertinentOtherEvidenceSequence") == ncct

    (scheme,) = [
        item
        for item in sr.CodingSchemeIdentificationSequence
        if item.CodingSchemeDesignator == "99SCANET"
    ]
    assert scheme.CodingSchemeName
    assert scheme.CodingSchemeResponsibleOrganization == "scanet-node project"


def test_sr_in_the_same_study_has_no_other_evidence(tmp_path: Path) -> None:
    study = make_study(cross_study=False)
    sr = save(build_sr(study, analysed(study)), tmp_path / "sr.dcm")
    uids = {ds.SOPInstanceUID for ds in study.ncct + study.cta}
    assert evidence_uids(sr, "CurrentRequestedProcedureEvidenceSequence") == uids
    assert "PertinentOtherEvidenceSequence" not in sr


def test_highdicom_reads_the_measurement_group(
    analysed_files: tuple[StudyRefs, list[Path]],
) -> None:
    import highdicom as hd

    sr = hd.sr.srread(analysed_files[1][0])
    (group,) = sr.content.get_image_measurement_groups()
    assert group.tracking_identifier == "SCANet recanalization prediction"
    assert group.finding_type == codes.RECANALIZATION_PREDICTION
    (probability,) = group.get_measurements(name=dcm.DCM.Probability)
    assert probability.value == pytest.approx(73.4)
    assert probability.unit == dcm.UCUM.Percent
    (predicted,) = group.get_qualitative_evaluations(name=codes.PREDICTED_MTICI_2C_OR_BETTER)
    assert predicted.value == dcm.SCT.Yes


def test_attention_point_round_trips_through_highdicom(
    analysed_files: tuple[StudyRefs, list[Path]],
) -> None:
    """TID 1410 group: a SCOORD3D POINT in the NCCT's frame of reference, its slab and weight."""
    import highdicom as hd

    study, paths = analysed_files
    sr = hd.sr.srread(paths[0])
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert group.tracking_identifier == "SCANet highest attention"
    assert group.finding_type == codes.HIGHEST_ATTENTION
    region = group.roi
    assert isinstance(region, hd.sr.Scoord3DContentItem)
    assert region.graphic_type == hd.sr.GraphicTypeValues3D.POINT
    assert region.frame_of_reference_uid == study.ncct[0].FrameOfReferenceUID
    np.testing.assert_allclose(region.value, [ATTENTION_POINT], atol=1e-6)
    (slab,) = group.get_measurements(name=codes.ATTENTION_SLAB)
    assert slab.value == 13  # slab index 12, reported 1-based
    (weight,) = group.get_measurements(name=codes.ATTENTION_SLAB_WEIGHT)
    assert weight.value == pytest.approx(
        100 * (1 + 12 / 25) / np.linspace(1, 2, 26).sum(), abs=0.05
    )
    # the prediction's own group is still the only image measurement group
    assert len(sr.content.get_image_measurement_groups()) == 1


def test_refused_sr_has_no_attention_point(refused_files: tuple[StudyRefs, list[Path]]) -> None:
    import highdicom as hd

    sr = hd.sr.srread(refused_files[1][0])
    assert sr.content.get_planar_roi_measurement_groups() == []


def test_not_analysable_sr_says_why(refused_files: tuple[StudyRefs, list[Path]]) -> None:
    import highdicom as hd

    paths = refused_files[1]
    assert len(paths) == 2  # SR and summary, no overlays
    sr = pydicom.dcmread(paths[0])
    assert not by_meaning(sr, "Probability")
    assert not [item for item in content_items(sr) if item.ValueType == "NUM"]
    (qc,) = by_meaning(sr, codes.IMAGE_QUALITY_CONTROL.meaning)
    assert qc.ConceptCodeSequence[0].CodeValue == codes.NOT_ANALYSABLE.value
    (reason,) = by_meaning(sr, codes.REASON_NOT_ANALYSABLE.meaning)
    assert reason.ConceptCodeSequence[0].CodeValue == codes.REASONS["cta_missing"].value
    (detail,) = by_meaning(sr, codes.NOT_ANALYSABLE_DETAIL.meaning)
    assert detail.TextValue == f"not analysable (cta_missing): {DETAIL}"

    (group,) = hd.sr.srread(paths[0]).content.get_image_measurement_groups()
    assert group.get_measurements() == []


def test_predecessor_is_referenced(tmp_path: Path) -> None:
    first_study = make_study(seed="job-1")
    first = save(build_sr(first_study, not_analysable()), tmp_path / "first.dcm")
    study = dataclasses.replace(first_study, uid_seed="job-1-amended", predecessor=first)
    sr = save(build_sr(study, analysed(study)), tmp_path / "second.dcm")
    (item,) = sr.PredecessorDocumentsSequence
    assert item.StudyInstanceUID == first.StudyInstanceUID
    (series,) = item.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert sr.SOPInstanceUID != first.SOPInstanceUID


def test_predecessor_with_the_same_seed_is_refused() -> None:
    study = make_study(seed="job-1")
    first = build_sr(study, not_analysable())
    with pytest.raises(ResultsError, match="new seed"):
        build_sr(dataclasses.replace(study, predecessor=first), not_analysable())


def test_uids_are_a_function_of_the_seed() -> None:
    study = make_study(seed="job-7")
    result = analysed(study)
    uids = [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in build(study, result)]
    again = [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in build(study, result)]
    other = dataclasses.replace(study, uid_seed="job-8")
    elsewhere = [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in build(other, result)]
    assert uids == again
    assert len({uid for pair in uids for uid in pair}) == 6
    assert not {uid for pair in uids for uid in pair} & {u for pair in elsewhere for u in pair}


def test_overlay_is_rgb_and_coloured_where_attention_is_high(tmp_path: Path) -> None:
    study = make_study()
    (overlay,) = build_overlays(study, analysed(study))
    (plain,) = build_overlays(study, analysed(study, attention=np.zeros((ROWS, COLS), np.float32)))
    read = save(overlay, tmp_path / "overlay.dcm")
    grey = save(plain, tmp_path / "plain.dcm")
    assert read.PhotometricInterpretation == "RGB"
    assert read.BitsAllocated == 8
    assert read.Modality == "OT"
    pixels, plain_pixels = read.pixel_array, grey.pixel_array
    assert pixels.shape == (read.Rows, read.Columns, 3) == (512, 768, 3)
    # The slice fills the left 512 x 512, centred; the attention blob is at its centre.
    centre = pixels[256, 256].astype(int)
    assert np.abs(centre - plain_pixels[256, 256].astype(int)).max() > 40
    assert centre.max() - centre.min() > 40  # coloured, not grey
    edge = pixels[256, 60]
    assert (edge == plain_pixels[256, 60]).all() and edge[0] == edge[1] == edge[2]
    (source,) = read.SourceImageSequence
    assert source.ReferencedSOPInstanceUID == study.ncct[2].SOPInstanceUID
    assert read.PatientOrientation == ["L", "P"]
    assert "slab 13/26" in read.ImageComments
    assert "P(mTICI >= 2c) = 73.4 %" in read.ImageComments
    assert "RESEARCH USE" in read.ImageComments
    assert read.DerivationDescription


def test_composite_keeps_low_attention_grey() -> None:
    hu = np.full((4, 4), 40.0, np.float32)
    attention = np.zeros((4, 4), np.float32)
    attention[0, 0], attention[1, 1] = 0.05, 1.0
    rgb = composite(hu, attention)
    assert rgb.dtype == np.uint8
    assert (rgb[0, 0] == rgb[2, 2]).all() and rgb[2, 2, 0] == rgb[2, 2, 1] == rgb[2, 2, 2] == 128
    assert len(set(rgb[1, 1].tolist())) > 1


def test_summary_images(tmp_path: Path) -> None:
    study = make_study()
    shown = save(build_summary(study, analysed(study)), tmp_path / "analysed.dcm")
    refused = save(build_summary(study, not_analysable()), tmp_path / "refused.dcm")
    for ds in (shown, refused):
        assert ds.pixel_array.shape == (640, 960, 3)
        assert ds.StudyInstanceUID == study.target.StudyInstanceUID
    assert "P(mTICI >= 2c) = 73.4 %" in shown.ImageComments
    assert "NOT ANALYSABLE (cta_missing)" in refused.ImageComments
    assert shown.SOPInstanceUID == refused.SOPInstanceUID  # same seed, same slot


def test_write_png(analysed_files: tuple[StudyRefs, list[Path]], tmp_path: Path) -> None:
    from PIL import Image

    overlay = pydicom.dcmread(analysed_files[1][2])
    path = write_png(overlay, tmp_path / "png" / "overlay.png")
    with Image.open(path) as image:
        assert image.mode == "RGB"
        assert image.size == (768, 512)


@pytest.mark.parametrize("fixture", ["analysed_files", "refused_files"])
def test_dciodvfy_accepts_every_object(fixture: str, request: pytest.FixtureRequest) -> None:
    _, paths = request.getfixturevalue(fixture)
    for path in paths:
        assert_valid_iod(path)


@pytest.mark.dcmtk
@pytest.mark.parametrize("fixture", ["analysed_files", "refused_files"])
def test_dsrdump_reads_the_sr(fixture: str, request: pytest.FixtureRequest) -> None:
    _, paths = request.getfixturevalue(fixture)
    out = subprocess.run(
        [dcmtk("dsrdump"), "-Ee", str(paths[0])],
        capture_output=True,
        text=True,
        errors="replace",  # the patient name is in ISO_IR 100, printed as is
        check=False,
    )
    dump = out.stdout + out.stderr
    assert out.returncode == 0, dump
    assert "error" not in dump.lower()
    assert "SCANet" in dump
    if fixture == "analysed_files":
        assert '"73.4" (%,UCUM,"Percent")' in dump
        assert "SCOORD3D" in dump and "POINT" in dump and "-3.5/2.25/61" in dump
    else:
        assert "Not analysable" in dump


def _broken(study: StudyRefs, **changes: object) -> AnalysisResult:
    return dataclasses.replace(analysed(study), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"probability": 1.2}, "not a probability"),
        ({"positive": False}, "does not match"),
        ({"slice_weights": [1 / 25] * 25}, "25 values"),
        ({"slice_weights": [0.5] * 26}, "summing to 1"),
        ({"algorithm": dataclasses.replace(algorithm(), checkpoint_sha256="abc")}, "sha256"),
        ({"algorithm": dataclasses.replace(algorithm(), threshold=1.5)}, "threshold"),
        ({"reason": "no_cta"}, "no reason"),
        ({"attention_slab": None}, "go together"),
        ({"attention_point": (1.0, float("nan"), 2.0)}, "not x, y, z"),
        ({"attention_slab": 26}, "not in 0..25"),
    ],
)
def test_invalid_results_are_refused(change: dict[str, object], message: str) -> None:
    study = make_study()
    with pytest.raises(ResultsError, match=message):
        build(study, _broken(study, **change))


def test_invalid_overlays_and_studies_are_refused() -> None:
    study = make_study()
    result = analysed(study)
    small = dataclasses.replace(result.overlays[0], attention=np.zeros((4, 4), np.float32))
    with pytest.raises(ResultsError, match="attention has shape"):
        build_overlays(study, dataclasses.replace(result, overlays=[small]))
    hot = dataclasses.replace(result.overlays[0], attention=result.overlays[0].attention * 3)
    with pytest.raises(ResultsError, match="outside"):
        build_overlays(study, dataclasses.replace(result, overlays=[hot]))
    foreign = dataclasses.replace(result.overlays[0], source=study.cta[0])
    with pytest.raises(ResultsError, match="not one of the NCCT"):
        build_overlays(study, dataclasses.replace(result, overlays=[foreign]))
    other_patient = copy.deepcopy(study.cta[1])
    other_patient.PatientID = "SOMEONE-ELSE"
    mixed = dataclasses.replace(study, cta=[*study.cta[:1], other_patient, *study.cta[2:]])
    with pytest.raises(ResultsError, match="another patient"):
        build_sr(mixed, result)
    with pytest.raises(ResultsError, match="needs the NCCT and the CTA"):
        build_sr(dataclasses.replace(study, ncct=[]), result)
    no_uid = copy.deepcopy(study.target)
    del no_uid.SOPInstanceUID
    with pytest.raises(ResultsError, match="target has no SOPInstanceUID"):
        build_sr(dataclasses.replace(study, target=no_uid), result)
    refused = dataclasses.replace(not_analysable(), detail=" ")
    with pytest.raises(ResultsError, match="detail"):
        build_sr(study, refused)


def test_every_qc_reason_has_a_private_code() -> None:
    from scanet_node.imaging.qc import REASONS

    assert set(REASONS) <= set(codes.REASONS)
    everything = [
        value for value in vars(codes).values() if isinstance(value, type(codes.QC_PASSED))
    ] + list(codes.REASONS.values())
    values = [code.value for code in everything]
    assert len(set(values)) == len({(c.value, c.meaning) for c in everything})
    assert all(
        len(v) <= 16 and c.scheme_designator == "99SCANET"
        for v, c in zip(values, everything, strict=True)
    )
    assert all(len(code.meaning) <= 64 for code in everything)


def test_import_is_light() -> None:
    code = (
        "import sys, scanet_node.results\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('highdicom', 'matplotlib')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
