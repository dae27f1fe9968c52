"""The structured report: a TID 1500 Measurement Report of the SCANet prediction.

Implements PS3.16 TID 1500 "Measurement Report" with one TID 1501 "Measurement and
Qualitative Evaluation Group" (TID 4019 Algorithm Identification, TID 300 measurements of the
probability and the threshold, coded qualitative evaluations) and the TID 1500 "Qualitative
Evaluations" container for the free-text statements, in a Comprehensive 3D SR instance
(PS3.3 A.35.13).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from scanet_node.results import _common, codes
from scanet_node.results.types import AnalysisResult, ResultsError, StudyRefs

if TYPE_CHECKING:
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

logger = logging.getLogger(__name__)

TRACKING_IDENTIFIER = "SCANet recanalization prediction"
ATTENTION_TRACKING_IDENTIFIER = "SCANet highest attention"
#: UID of the device observer: one device, so one UID on every report (PS3.16 TID 1004).
DEVICE_OBSERVER_UID = _common.uid("scanet-node", "device-observer")


def build_sr(
    study: StudyRefs,
    result: AnalysisResult,
    *,
    series_number: int = 9900,
    instance_number: int = 1,
) -> Dataset:
    """Build the SR of one analysis, filed in ``study.target``'s study.

    TID 1500 Measurement Report (PS3.16) in a Comprehensive 3D SR (PS3.3 A.35.13). An
    analysed study reports the probability of mTICI >= 2c in percent, the class at the
    model's threshold, the threshold and QC passed; a refused study reports "Not analysable",
    the coded reason and the sentence behind it. NCCT and CTA instances from another study
    than the target's are listed in the Pertinent Other Evidence Sequence.

    Parameters
    ----------
    study
        Where the report is filed and what it derives from; every UID comes from its seed.
    result
        What the analysis found.
    series_number, instance_number
        Of the SR series and instance.

    Raises
    ------
    ResultsError
        When an input cannot make a valid report; the message names it.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    _common.validate(study, result)
    seed = study.uid_seed
    algo = result.algorithm
    parameters = [
        f"checkpoint-sha256={algo.checkpoint_sha256}",
        f"threshold={algo.threshold:g}",
        f"input-size={algo.input_size}",
    ]
    if algo.synthetic:
        parameters.append("training-data=synthetic")
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algo.name,
        version=algo.version,
        parameters=parameters,
        family=dcm.DCM.ArtificialIntelligence,
        manufacturer=_common.MANUFACTURER,
    )
    observer = hd.sr.ObserverContext(
        observer_type=dcm.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_OBSERVER_UID,
            name=_common.MODEL_NAME,
            manufacturer_name=_common.MANUFACTURER,
            model_name=algo.name,
        ),
    )
    measurements: list[hd.sr.Measurement] = []
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    texts = [(codes.RESEARCH_USE_STATEMENT, _common.research_statement(result))]
    if result.status == "analysed":
        assert result.probability is not None  # checked by validate()
        measurements = [
            hd.sr.Measurement(
                name=dcm.DCM.Probability,
                value=_common.percent(result.probability),
                unit=dcm.UCUM.Percent,
                algorithm_id=algorithm_id,
            ),
            hd.sr.Measurement(
                name=dcm.DCM.ThresholdValue,
                value=_common.percent(algo.threshold),
                unit=dcm.UCUM.Percent,
            ),
        ]
        evaluations = [
            hd.sr.QualitativeEvaluation(
                name=codes.PREDICTED_MTICI_2C_OR_BETTER,
                value=dcm.SCT.Yes if result.positive else dcm.SCT.No,
            ),
            hd.sr.QualitativeEvaluation(name=codes.IMAGE_QUALITY_CONTROL, value=codes.QC_PASSED),
        ]
    else:
        assert result.reason is not None and result.detail is not None  # checked by validate()
        reason = codes.REASONS.get(result.reason)
        if reason is None:
            logger.warning(
                "no private code for reason %s; reporting it as %r",
                result.reason,
                codes.REASON_OTHER.meaning,
            )
            reason = codes.REASON_OTHER
        evaluations = [
            hd.sr.QualitativeEvaluation(
                name=codes.IMAGE_QUALITY_CONTROL, value=codes.NOT_ANALYSABLE
            ),
            hd.sr.QualitativeEvaluation(name=codes.REASON_NOT_ANALYSABLE, value=reason),
        ]
        texts.insert(
            0,
            (codes.NOT_ANALYSABLE_DETAIL, f"not analysable ({result.reason}): {result.detail}"),
        )
    sources = _common.unique([*study.ncct, *study.cta])
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_common.uid(seed, "sr", "tracking"), identifier=TRACKING_IDENTIFIER
        ),
        finding_type=codes.RECANALIZATION_PREDICTION,
        algorithm_id=algorithm_id,
        finding_sites=[hd.sr.FindingSite(anatomic_location=dcm.SCT.Brain)],
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources]
        or None,
    )
    groups: list[Any] = [group]
    if result.attention_point is not None:
        groups.append(_attention_group(study, result, seed, algorithm_id))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=dcm.LN.HeadCT,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_text_evaluations(texts))
    target = _common.header(study.target)
    coding_schemes = [_coding_scheme()]
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[target, *sources],
            content=report[0],
            series_instance_uid=_common.uid(seed, "sr", "series"),
            series_number=series_number,
            sop_instance_uid=_common.uid(seed, "sr", "instance"),
            instance_number=instance_number,
            manufacturer=_common.MANUFACTURER,
            manufacturer_model_name=_common.MODEL_NAME,
            software_versions=_common.SOFTWARE_VERSION,
            series_description=_common.series_description(result, "result"),
            is_complete=True,
            is_final=False,
            is_verified=False,
            previous_versions=[study.predecessor] if study.predecessor is not None else None,
            coding_schemes=coding_schemes,
        )
    except (ValueError, TypeError) as exc:
        raise ResultsError(f"the SR cannot be built: {exc}") from exc
    logger.debug(
        "built SR %s (%s)",
        sr.SOPInstanceUID,
        result.status,
        extra={"study_uid": sr.StudyInstanceUID},
    )
    return sr


def _attention_group(
    study: StudyRefs, result: AnalysisResult, seed: str, algorithm_id: hd.sr.AlgorithmIdentification
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 with a SCOORD3D POINT: where the model looked most, for a viewer to jump to.

    The point is in the patient coordinates of the NCCT's frame of reference (mapped back from
    the template through the inverse registration); the measurements are its template slab
    (1..26, inferior to superior) and that slab's share of the slice attention.
    """
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes as dcm

    assert result.attention_point is not None and result.attention_slab is not None
    slab = int(result.attention_slab)
    weight = result.slice_weights[slab] if len(result.slice_weights) > slab else 0.0
    region = hd.sr.ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([result.attention_point], dtype=np.float64),
        frame_of_reference_uid=str(study.ncct[0].FrameOfReferenceUID),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_common.uid(seed, "sr", "attention"), identifier=ATTENTION_TRACKING_IDENTIFIER
        ),
        referenced_region=region,
        finding_type=codes.HIGHEST_ATTENTION,
        algorithm_id=algorithm_id,
        finding_sites=[hd.sr.FindingSite(anatomic_location=dcm.SCT.Brain)],
        measurements=[
            hd.sr.Measurement(
                name=codes.ATTENTION_SLAB,
                value=slab + 1,
                unit=hd.sr.CodedConcept("{slab}", "UCUM", "slab"),
            ),
            hd.sr.Measurement(
                name=codes.ATTENTION_SLAB_WEIGHT,
                value=_common.percent(float(weight)),
                unit=dcm.UCUM.Percent,
            ),
        ],
    )


def _text_evaluations(texts: list[tuple[Code, str]]) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: the "Qualitative Evaluations" container, here with TEXT items only."""
    import highdicom as hd

    container = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=name,
                value=_common.ascii_text(text),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for name, text in texts
        ]
    )
    return container


def _coding_scheme() -> CodingSchemeIdentificationItem:
    """PS3.3 C.12.1.1.2: a private scheme names itself and who is responsible for it."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        designator=codes.CODING_SCHEME_DESIGNATOR,
        name=codes.CODING_SCHEME_NAME,
        version=codes.CODING_SCHEME_VERSION,
        responsible_organization=codes.CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
    )
