"""NCCT/CTA classification as pure decisions on hand-made facts, and the image check on
hand-made volumes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    SecondaryCaptureImageStorage,
    XRayRadiationDoseSRStorage,
)

from scanet_node.imaging.classify import (
    ClassificationRules,
    ImageEvidence,
    SeriesFacts,
    classify_series,
    select_series,
)
from scanet_node.imaging.classify_read import facts_from_header, image_evidence
from scanet_node.imaging.series import Volume

AXIAL = ("ORIGINAL", "PRIMARY", "AXIAL")

NCCT_IMAGE = ImageEvidence(
    vessel_fraction=0.00005,
    intracranial_ml=1400.0,
    skull_coverage_mm=140.0,
    head_width_mm=175.0,
    is_head=True,
)
CTA_IMAGE = replace(NCCT_IMAGE, vessel_fraction=0.01)
UNCLEAR_IMAGE = replace(NCCT_IMAGE, vessel_fraction=0.004)
CHEST_IMAGE = ImageEvidence(0.0, 0.0, 0.0, 0.0, False)


def ct(description: str = "", **changes: object) -> SeriesFacts:
    """Facts of an original axial CT series of 40 images; override what a test needs."""
    base = SeriesFacts(
        modality="CT",
        sop_class_uid=CTImageStorage,
        series_description=description,
        image_type=AXIAL,
        slice_thickness=1.0,
        number_of_instances=40,
        rows=512,
        columns=512,
        body_part="HEAD",
        convolution_kernel="H31s",
        plane="axial",
        series_number=2,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Tag rules


def test_contrast_agent_and_description_make_a_confident_cta() -> None:
    role = classify_series(ct("CTA Head Neck 0.6 Hv36", contrast_agent="Iohexol 350 mgI/ml"))
    assert role.role == "cta" and role.score == 1.0 and not role.needs_image_check
    assert "ContrastBolusAgent 'Iohexol 350 mgI/ml'" in role.reason
    assert "matches 'CTA'" in role.reason


@pytest.mark.parametrize(
    "description",
    ["CT Head w/o contrast", "Kopf nativ 5mm", "Brain WO", "NCCT 5.0", "CCT sine", "non-contrast"],
)
def test_explicit_non_contrast_descriptions_make_an_ncct(description: str) -> None:
    role = classify_series(ct(description, slice_thickness=5.0))
    assert role.role == "ncct" and role.score >= 0.9, role
    assert "NCCT:" in role.reason and "matches" in role.reason


@pytest.mark.parametrize("agent", ["NONE", "no", "N/A", "-"])
def test_a_contrast_agent_that_says_none_is_ncct_evidence(agent: str) -> None:
    role = classify_series(ct("Head 5.0", contrast_agent=agent, slice_thickness=5.0))
    assert role.role == "ncct" and "says none" in role.reason


@pytest.mark.parametrize(
    "description",
    ["Angio Circle of Willis", "COW 0.625", "CT_ANGIO_HEAD", "Arterial phase", "Head & Neck C+"],
)
def test_cta_descriptions_without_contrast_agent(description: str) -> None:
    role = classify_series(ct(description))
    assert role.role == "cta" and role.score == 0.9, role


def test_contradicting_tags_ask_for_the_image_check_which_decides() -> None:
    facts = ct("Head w/o contrast", contrast_agent="Omnipaque 350", slice_thickness=1.0)
    role = classify_series(facts)
    assert role.role == "other" and role.needs_image_check
    assert "tags contradict" in role.reason and "image check needed" in role.reason
    as_cta = classify_series(replace(facts, image=CTA_IMAGE))
    assert as_cta.role == "cta" and not as_cta.needs_image_check
    assert "tags contradict" in as_cta.reason and "decides" in as_cta.reason
    assert classify_series(replace(facts, image=NCCT_IMAGE)).role == "ncct"
    unclear = classify_series(replace(facts, image=UNCLEAR_IMAGE))
    assert unclear.role == "other" and "inconclusive" in unclear.reason


def test_silent_tags_ask_for_the_image_check() -> None:
    facts = ct("Series 3", slice_thickness=5.0)
    role = classify_series(facts)
    assert role.role == "other" and role.needs_image_check and "silent" in role.reason
    decided = classify_series(replace(facts, image=NCCT_IMAGE))
    assert decided.role == "ncct" and decided.score == 0.7
    assert "0.005 % of it at 150-500 HU" in decided.reason


def test_a_head_description_alone_is_a_provisional_ncct() -> None:
    role = classify_series(ct("Head 5.0 H31s", slice_thickness=5.0))
    assert role.role == "ncct" and role.needs_image_check and role.score < 0.5
    assert "weak" in role.reason and "no ContrastBolusAgent" in role.reason
    confirmed = classify_series(ct("Head 5.0 H31s", slice_thickness=5.0, image=NCCT_IMAGE))
    assert confirmed.role == "ncct" and not confirmed.needs_image_check
    # The image check overrules weak tags: this "Head" series is full of contrast.
    assert classify_series(ct("Head 1.0", image=CTA_IMAGE)).role == "cta"


def test_the_protocol_name_counts_only_when_the_description_is_silent() -> None:
    shared = "Stroke CTA protocol"
    assert classify_series(ct("Head w/o", protocol_name=shared)).role == "ncct"
    role = classify_series(ct("Series 3", protocol_name=shared))
    assert role.role == "cta" and role.needs_image_check and "protocol name" in role.reason


def test_clear_tags_win_over_a_disagreeing_image_check_with_a_lower_score() -> None:
    role = classify_series(ct("CTA Head", contrast_agent="Iohexol", image=NCCT_IMAGE))
    assert role.role == "cta" and role.score == 0.5 and "disagrees" in role.reason
    agreed = classify_series(ct("CTA Head", image=CTA_IMAGE))
    assert agreed.role == "cta" and agreed.score == 1.0 and "agrees" in agreed.reason


def test_a_mip_that_claims_to_be_a_cta_is_other() -> None:
    mip = ct(
        "CTA Head Neck Arterial",
        contrast_agent="Iohexol",
        image_type=("DERIVED", "SECONDARY", "MIP"),
    )
    role = classify_series(mip)
    assert role.role == "other" and "projection" in role.reason and "MIP" in role.reason
    # A thick slab series without MIP in its ImageType fails on its thickness instead.
    slab = ct("CTA Arterial", contrast_agent="Iohexol", image_type=("DERIVED", "SECONDARY"))
    role = classify_series(replace(slab, slice_thickness=10.0))
    assert role.role == "other" and "exceeds the 2.5 mm" in role.reason
    # And one that says MIP in its description is excluded by the pattern.
    role = classify_series(ct("CTA MIP 10mm", contrast_agent="Iohexol", slice_thickness=10.0))
    assert role.role == "other" and "exclusion 'MIP'" in role.reason


def test_a_localizer_is_other() -> None:
    role = classify_series(
        ct("Head", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), number_of_instances=1)
    )
    assert role.role == "other" and role.reason.startswith("localizer")
    role = classify_series(ct("Topogram 0.6 T20s", number_of_instances=40))
    assert role.role == "other" and "exclusion 'Topogram'" in role.reason


def test_a_dose_report_and_a_secondary_capture_are_other() -> None:
    dose = SeriesFacts(
        modality="SR",
        sop_class_uid=XRayRadiationDoseSRStorage,
        series_description="Dose Report",
        number_of_instances=1,
    )
    role = classify_series(dose)
    assert role.role == "other"
    assert "X-Ray Radiation Dose SR Storage is not a CT image" in role.reason
    capture = ct("CTA summary", sop_class_uid=SecondaryCaptureImageStorage)
    assert "Secondary Capture Image Storage" in classify_series(capture).reason
    assert "modality MR" in classify_series(ct("CTA", modality="MR", sop_class_uid="")).reason


def test_too_few_images_another_body_part_or_no_head_are_other() -> None:
    assert "fewer than the 20" in classify_series(ct("CTA", number_of_instances=5)).reason
    chest = classify_series(ct("Thorax w/o", body_part="CHEST"))
    assert chest.role == "other" and "'CHEST' is not the head" in chest.reason
    no_head = classify_series(ct("Head w/o", slice_thickness=5.0, image=CHEST_IMAGE))
    assert no_head.role == "other" and "not a head" in no_head.reason


def test_slice_thickness_limits() -> None:
    assert classify_series(ct("CTA", slice_thickness=2.5)).role == "cta"
    thick_cta = classify_series(ct("CTA", slice_thickness=3.0))
    assert thick_cta.role == "other" and "CTA evidence" in thick_cta.reason
    assert classify_series(ct("Head w/o", slice_thickness=5.0)).role == "ncct"
    assert classify_series(ct("Head w/o", slice_thickness=10.0)).role == "other"
    loose = ClassificationRules(cta_max_slice_thickness_mm=3.0)
    assert classify_series(ct("CTA", slice_thickness=3.0), loose).role == "cta"


def test_the_configuration_extends_the_patterns() -> None:
    facts = ct("Gefaesse Kopf 0.75")
    assert classify_series(facts).needs_image_check
    rules = ClassificationRules().extended(cta=[r"gef(ä|ae)(ss|ß)e"], exclude=[r"\bkey\b"])
    role = classify_series(facts, rules)
    assert role.role == "cta" and "matches 'Gefaesse'" in role.reason
    assert rules.cta_patterns[: len(ClassificationRules().cta_patterns)] == (
        ClassificationRules().cta_patterns
    )
    with pytest.raises(ValueError, match="cta_patterns: '\\(' is not a valid pattern"):
        ClassificationRules().extended(cta=["("])
    with pytest.raises(ValueError, match="vessel_fraction"):
        ClassificationRules(cta_min_vessel_fraction=0.0001)


# --------------------------------------------------------------------------------------------
# Choosing among several series


def test_select_prefers_thin_original_axial_and_records_why() -> None:
    agent = {"contrast_agent": "Iohexol 350"}
    candidates = [
        ("1.1", ct("Topogram", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_number=1)),
        ("1.2", ct("Head 5.0 w/o", slice_thickness=5.0, series_number=2)),
        ("1.3", ct("Head 0.75 w/o", slice_thickness=0.75, number_of_instances=200)),
        ("1.4", ct("Head 0.75 w/o Bone", slice_thickness=0.75, convolution_kernel="H70h")),
        ("1.5", ct("CTA 2.0 axial", slice_thickness=2.0, image_type=("DERIVED", "SECONDARY"))),
        ("1.6", ct("CTA 0.625", slice_thickness=0.625, number_of_instances=300, **agent)),
        ("1.7", ct("CTA 1.25", slice_thickness=1.25, number_of_instances=150, **agent)),
        ("1.8", ct("CTA sag 1.0", slice_thickness=1.0, plane="sagittal", **agent)),
        ("1.9", ct("CTA MIP", image_type=("DERIVED", "SECONDARY", "MIP"), **agent)),
    ]
    selection = select_series(candidates)
    assert selection.ncct_uid == "1.3"
    assert selection.cta_uid == "1.6"
    assert selection.roles["1.9"].role == "other"
    text = "\n".join(selection.reasons)
    assert "NCCT: chose series 2 'Head 0.75 w/o' (1.3) over" in text
    assert "'Head 0.75 w/o Bone' (1.4) (soft over sharp kernel)" in text
    assert "'Head 5.0 w/o' (1.2) (thinner (0.75 mm over 5 mm))" in text
    assert "(1.5) (original over derived)" in text
    assert "(1.7) (thinner (0.62 mm over 1.25 mm))" in text
    assert "(1.8) (axial over sagittal)" in text
    # Every series has its line, with the reason for its role.
    assert sum(line.startswith("series ") for line in selection.reasons) == len(candidates)


def test_select_with_equal_series_takes_more_images_then_the_lower_number() -> None:
    a = ct("CTA", number_of_instances=280, series_number=5)
    b = ct("CTA", number_of_instances=300, series_number=6)
    c = ct("CTA", number_of_instances=300, series_number=7)
    selection = select_series([("a", a), ("b", b), ("c", c)])
    assert selection.cta_uid == "b"
    text = "\n".join(selection.reasons)
    assert "more images (300 over 280)" in text and "lower series number" in text


def test_select_reports_a_missing_role() -> None:
    selection = select_series([("1", ct("Head w/o", slice_thickness=5.0))])
    assert selection.ncct_uid == "1" and selection.cta_uid is None
    assert "no CTA: no series qualified" in selection.reasons
    empty = select_series([])
    assert empty.ncct_uid is None and empty.cta_uid is None
    waiting = select_series([("2", ct("Series 2"))])
    assert "no CTA: no series qualified (1 series await an image check)" in waiting.reasons


def test_select_prefers_a_confident_series_and_says_when_no_image_check_ran() -> None:
    provisional = ct("Head 5.0", slice_thickness=1.0, series_number=2)
    confident = ct("Head w/o", slice_thickness=1.0, series_number=3)
    selection = select_series([("p", provisional), ("c", confident)])
    assert selection.ncct_uid == "c"
    assert "confident over uncertain" in "\n".join(selection.reasons)
    alone = select_series([("p", provisional)])
    assert alone.ncct_uid == "p"
    assert "on tags alone; no image check ran" in "\n".join(alone.reasons)


# --------------------------------------------------------------------------------------------
# Facts from headers


def test_facts_from_a_classic_header() -> None:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.SeriesDescription = "CTA Head Neck 0.75 Hv36"
    ds.ProtocolName = "Stroke"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ContrastBolusAgent = "Iohexol 350 mgI/ml"
    ds.SliceThickness = "0.75"
    ds.Rows = ds.Columns = 512
    ds.BodyPartExamined = "HEAD"
    ds.ConvolutionKernel = ["Hv36", "3"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.966, 0.259]  # 15 degrees gantry tilt
    ds.SeriesNumber = 3
    facts = facts_from_header(ds, 280)
    assert facts == SeriesFacts(
        modality="CT",
        sop_class_uid=CTImageStorage,
        series_description="CTA Head Neck 0.75 Hv36",
        protocol_name="Stroke",
        image_type=AXIAL,
        contrast_agent="Iohexol 350 mgI/ml",
        slice_thickness=0.75,
        number_of_instances=280,
        rows=512,
        columns=512,
        body_part="HEAD",
        convolution_kernel="Hv36\\3",
        plane="axial",
        series_number=3,
    )
    assert facts.images == 280


def test_facts_from_an_enhanced_header() -> None:
    def item(**values: object) -> Dataset:
        out = Dataset()
        for key, value in values.items():
            setattr(out, key, value)
        return out

    ds = Dataset()
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.Modality = "CT"
    ds.SeriesDescription = "Angio"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    agent = item(CodeValue="C-B0317", CodingSchemeDesignator="SRT", CodeMeaning="Iohexol")
    ds.ContrastBolusAgentSequence = DicomSequence([agent])
    shared = item(
        PixelMeasuresSequence=DicomSequence([item(PixelSpacing=[0.5, 0.5], SliceThickness=0.6)]),
        PlaneOrientationSequence=DicomSequence([item(ImageOrientationPatient=[1, 0, 0, 0, 0, -1])]),
        CTReconstructionSequence=DicomSequence([item(ConvolutionKernel="Hv40")]),
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    facts = facts_from_header(ds, 1, 320)
    assert facts.contrast_agent == "Iohexol"
    assert facts.slice_thickness == 0.6
    assert facts.convolution_kernel == "Hv40"
    assert facts.plane == "coronal"
    assert facts.images == 320 and facts.number_of_instances == 1
    assert classify_series(facts).role == "cta"


# --------------------------------------------------------------------------------------------
# The image check on hand-made volumes


def phantom_head(vessels: bool, width_mm: float = 180.0, skull: bool = True) -> Volume:
    """An ellipsoidal head on a 1 mm grid: skin, a 6 mm skull, brain, optionally bright tubes
    (about 1 % of the intracranial space, as the synthetic CTAs with cortical arteries)."""
    shape = (120, 240, 240) if width_mm < 240 else (60, 400, 400)
    k, r, c = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    centre = [(n - 1) / 2 for n in shape]
    semi = (0.75 * width_mm / 2 if width_mm < 240 else 200.0, width_mm * 0.6, width_mm / 2)
    radius = np.sqrt(
        sum(((x - m) / s) ** 2 for x, m, s in zip((k, r, c), centre, semi, strict=True))
    )
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[radius < 1.0] = 40.0
    thickness = 6.0 / min(semi[1:])
    if skull:
        hu[(radius < 1.0 - 0.02) & (radius >= 1.0 - 0.02 - thickness)] = 1200.0
    if vessels:  # a CTA's many arteries: 25 tubes running head to feet, one across
        tube = (k - centre[0]) ** 2 + (r - centre[1] - 20) ** 2 < 4.0
        for dr in range(-40, 41, 20):
            for dc in range(-40, 41, 20):
                tube |= (r - centre[1] - dr) ** 2 + (c - centre[2] - dc) ** 2 < 4.0
        hu[tube & (radius < 0.8)] = 350.0
    return Volume(hu=hu, affine=np.eye(4), spacing=(1.0, 1.0, 1.0), series_instance_uid="1.2")


def test_image_evidence_tells_a_cta_from_an_ncct() -> None:
    ncct = image_evidence(phantom_head(vessels=False))
    cta = image_evidence(phantom_head(vessels=True))
    rules = ClassificationRules()
    assert ncct.is_head and cta.is_head
    assert ncct.vessel_fraction <= rules.ncct_max_vessel_fraction
    assert cta.vessel_fraction >= rules.cta_min_vessel_fraction
    assert 150 <= ncct.head_width_mm <= 200
    assert ncct.skull_coverage_mm >= 60 and ncct.intracranial_ml > 500
    assert "a head: skull ring over" in ncct.summary


def test_image_evidence_says_when_it_is_not_a_head() -> None:
    boneless = image_evidence(phantom_head(vessels=False, skull=False))
    assert not boneless.is_head and boneless.intracranial_ml == 0
    chest = image_evidence(phantom_head(vessels=False, width_mm=340.0))
    assert not chest.is_head and chest.head_width_mm > 300
    assert chest.summary.startswith("not a head")


def test_rules_from_the_configuration(tmp_path: Path) -> None:
    from node_config import make_settings

    from scanet_node.imaging.classify import rules_from_settings

    settings = make_settings(
        tmp_path, imaging={"extra_cta_patterns": ["gef(ä|ae)(ss|ß)e"], "min_images": 5}
    )
    rules = rules_from_settings(settings.imaging)
    assert rules.cta_patterns[-1] == "gef(ä|ae)(ss|ß)e"
    assert rules.min_images == 5
    assert rules.ncct_max_slice_thickness_mm == 5.5
