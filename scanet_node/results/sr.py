"""The structured report: a TID 1500 Measurement Report of the SCANet prediction.

Implements PS3.16 TID 1500 "Measurement Report" with one TID 1501 "Measurement and
Qualitative Evaluation Group" (TID 4019 Algorithm Identification, TID 300 measurements of the
probability and the threshold, coded qualitative evaluations) and the TID 1500 "Qualitative
Evaluations" container for the free-text statements, in a Comprehensive 3D SR instance
(PS3.3 A.35.13).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from scanet_node.catalog.models import JobOutcome
from scanet_node.config import RESULTS_SERIES_NUMBER
from scanet_node.results import _common, codes
from scanet_node.results.types import (
    AlgorithmInfo,
    AnalysisResult,
    ResultsError,
    StudyRefs,
)

if TYPE_CHECKING:
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

logger = logging.getLogger(__name__)

TRACKING_IDENTIFIER = "SCANet recanalization prediction"
ATTENTION_TRACKING_IDENTIFIER = "SCANet highest attention"
#: UID of the device observer: one device, so one UID on every report (PS3.16 TID 1004).
DEVICE_OBSERVER_UID = _common.uid("scanet-node", "device-observer")


class _Findings(NamedTuple):
    """What the report states: measurements, coded evaluations, and the free-text statements."""

    measurements: list[hd.sr.Measurement]
    evaluations: list[hd.sr.QualitativeEvaluation]
    texts: list[tuple[Code, str]]


def build_sr(
    study: StudyRefs,
    result: AnalysisResult,
    *,
    series_number: int = RESULTS_SERIES_NUMBER,
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
    _common.validate(study, result)
    algorithm_id = _algorithm_identification(result.algorithm)
    sources = _common.unique([*study.ncct, *study.cta])
    findings = _findings(result, algorithm_id)
    groups: list[Any] = [_prediction_group(study.uid_seed, findings, algorithm_id, sources)]
    if result.attention_point is not None:
        groups.append(_attention_group(study, result, study.uid_seed, algorithm_id))
    content = _report_content(result, groups, findings.texts)
    sr = _comprehensive_sr(study, result, content, sources, series_number, instance_number)
    logger.debug(
        "built SR %s (%s)",
        sr.SOPInstanceUID,
        result.status,
        extra={"study_uid": sr.StudyInstanceUID},
    )
    return sr


def _algorithm_identification(algo: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019: the model, its version and the weights, threshold and input it ran with."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    parameters = [
        f"checkpoint-sha256={algo.checkpoint_sha256}",
        f"threshold={algo.threshold:g}",
        f"input-size={algo.input_size}",
    ]
    if algo.synthetic:
        parameters.append("training-data=synthetic")
    return hd.sr.AlgorithmIdentification(
        name=algo.name,
        version=algo.version,
        parameters=parameters,
        family=dcm.DCM.ArtificialIntelligence,
        manufacturer=_common.MANUFACTURER,
    )


def _findings(result: AnalysisResult, algorithm_id: hd.sr.AlgorithmIdentification) -> _Findings:
    """The prediction (probability, threshold, class, QC passed), or "not analysable" with
    its coded reason; the research use statement either way."""
    texts = [(codes.RESEARCH_USE_STATEMENT, _common.research_statement(result))]
    if result.status == JobOutcome.ANALYSED:
        return _Findings(
            _prediction_measurements(result, algorithm_id), _prediction_evaluations(result), texts
        )
    assert result.reason is not None and result.detail is not None  # checked by validate()
    texts.insert(
        0,
        (codes.NOT_ANALYSABLE_DETAIL, f"not analysable ({result.reason}): {result.detail}"),
    )
    return _Findings([], _refusal_evaluations(result.reason), texts)


def _prediction_measurements(
    result: AnalysisResult, algorithm_id: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    """TID 300: the probability of mTICI >= 2c and the model's threshold, in percent."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    assert result.probability is not None  # checked by validate()
    return [
        hd.sr.Measurement(
            name=dcm.DCM.Probability,
            value=_common.percent(result.probability),
            unit=dcm.UCUM.Percent,
            algorithm_id=algorithm_id,
        ),
        hd.sr.Measurement(
            name=dcm.DCM.ThresholdValue,
            value=_common.percent(result.algorithm.threshold),
            unit=dcm.UCUM.Percent,
        ),
    ]


def _prediction_evaluations(result: AnalysisResult) -> list[hd.sr.QualitativeEvaluation]:
    """The class at the threshold, and image quality control passed."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    return [
        hd.sr.QualitativeEvaluation(
            name=codes.PREDICTED_MTICI_2C_OR_BETTER,
            value=dcm.SCT.Yes if result.positive else dcm.SCT.No,
        ),
        hd.sr.QualitativeEvaluation(name=codes.IMAGE_QUALITY_CONTROL, value=codes.QC_PASSED),
    ]


def _refusal_evaluations(reason_code: str) -> list[hd.sr.QualitativeEvaluation]:
    """Image quality control "not analysable", and the reason's private code (or "other")."""
    import highdicom as hd

    reason = codes.REASONS.get(reason_code)
    if reason is None:
        logger.warning(
            "no private code for reason %s; reporting it as %r",
            reason_code,
            codes.REASON_OTHER.meaning,
        )
        reason = codes.REASON_OTHER
    return [
        hd.sr.QualitativeEvaluation(name=codes.IMAGE_QUALITY_CONTROL, value=codes.NOT_ANALYSABLE),
        hd.sr.QualitativeEvaluation(name=codes.REASON_NOT_ANALYSABLE, value=reason),
    ]


def _prediction_group(
    seed: str,
    findings: _Findings,
    algorithm_id: hd.sr.AlgorithmIdentification,
    sources: list[Dataset],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the prediction's measurements and evaluations, with the images it used."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_common.uid(seed, "sr", "tracking"), identifier=TRACKING_IDENTIFIER
        ),
        finding_type=codes.RECANALIZATION_PREDICTION,
        algorithm_id=algorithm_id,
        finding_sites=[hd.sr.FindingSite(anatomic_location=dcm.SCT.Brain)],
        measurements=findings.measurements or None,
        qualitative_evaluations=findings.evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources]
        or None,
    )


def _report_content(
    result: AnalysisResult, groups: list[Any], texts: list[tuple[Code, str]]
) -> Dataset:
    """The TID 1500 root container: observer (the device), procedure, the groups, the texts."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    observer = hd.sr.ObserverContext(
        observer_type=dcm.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_OBSERVER_UID,
            name=_common.MODEL_NAME,
            manufacturer_name=_common.MANUFACTURER,
            model_name=result.algorithm.name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=dcm.LN.HeadCT,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_text_evaluations(texts))
    content: Dataset = report[0]
    return content


def _comprehensive_sr(
    study: StudyRefs,
    result: AnalysisResult,
    content: Dataset,
    sources: list[Dataset],
    series_number: int,
    instance_number: int,
) -> Dataset:
    """The Comprehensive 3D SR instance around ``content``, filed in the target's study."""
    import highdicom as hd

    seed = study.uid_seed
    evidence = [_common.header(study.target), *sources]
    try:
        return hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=content,
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
            coding_schemes=[_coding_scheme()],
        )
    except (ValueError, TypeError) as exc:
        raise ResultsError(f"the SR cannot be built: {exc}") from exc


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
