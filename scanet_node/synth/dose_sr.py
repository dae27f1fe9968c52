"""The X-Ray Radiation Dose SR of a synthetic study: what each acquisition exposed the head to.

Implements TID 10011 "CT Radiation Dose" (PS3.16) with one TID 10013 "CT Irradiation Event
Data" per acquisition (localizer, NCCT, CTA), each with its CT Acquisition Parameters and, but
for the localizer, its CT Dose (CTDIvol, DLP); the IOD is PS3.3 A.35.8. The node must recognise
this series as one it does not analyse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, XRayRadiationDoseSRStorage

from scanet_node.synth.dicom_common import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    MODEL_NAME,
    STATION_NAME,
    Acquisition,
    StudyIdentity,
    as_da,
    as_ds,
    as_tm,
    code,
    common_dataset,
)
from scanet_node.synth.scanner_geometry import SeriesGeometry

logger = logging.getLogger(__name__)

DOSE_SERIES_NUMBER: Final = 501
#: The report is written this long after the study time.
REPORT_AFTER_S: Final = 600
#: CT Acquisition Type (CID 10013) of each role's acquisition.
_ACQUISITION_TYPES: Final = {
    "localizer": ("113805", "DCM", "Constant Angle Acquisition"),
    "ncct": ("113804", "DCM", "Sequenced Acquisition"),
    "cta": ("116152004", "SCT", "Spiral Acquisition"),
}


@dataclass(frozen=True)
class _Event:
    """One CT Acquisition content item, and when it irradiated and how much (DLP, mGy.cm)."""

    item: Dataset
    start: datetime
    end: datetime
    dlp: float | None


def build_dose_report(
    identity: StudyIdentity,
    study_start: datetime,
    acquisitions: Sequence[tuple[Acquisition, SeriesGeometry]],
    uid: Callable[..., str],
) -> Dataset:
    """X-Ray Radiation Dose SR of ``acquisitions`` (TID 10011, PS3.16; IOD PS3.3 A.35.8).

    ``uid(*parts)`` gives the study's UID for ``parts`` (the same parts, the same UID), so
    the report, its series and its irradiation events keep their UIDs across writes.
    """
    ds = _report_header(identity, study_start, uid)
    events = [_irradiation_event(acq, geometry, study_start, uid) for acq, geometry in acquisitions]
    ds.ContentSequence = DicomSequence(_report_content(identity, study_start, events, uid))
    return ds


def _report_header(
    identity: StudyIdentity, study_start: datetime, uid: Callable[..., str]
) -> Dataset:
    """The SR document's series, instance and document attributes, without content."""
    ds = common_dataset(identity, XRayRadiationDoseSRStorage)
    report_time = study_start + timedelta(seconds=REPORT_AFTER_S)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = uid("series", "dose")
    ds.SeriesNumber = DOSE_SERIES_NUMBER
    ds.SeriesDescription = "Dose Report"
    ds.SeriesDate = as_da(report_time)
    ds.SeriesTime = as_tm(report_time)
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.SOPInstanceUID = uid("image", "dose", 0)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.InstanceNumber = 1
    ds.ContentDate = as_da(report_time)
    ds.ContentTime = as_tm(report_time)
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = DicomSequence()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence(
        [code("113701", "DCM", "X-Ray Radiation Dose Report")]
    )
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "10011"
    ds.ContentTemplateSequence = DicomSequence([template])
    return ds


def _scan_extent(acq: Acquisition, geometry: SeriesGeometry) -> tuple[float, float]:
    """Scanning length (mm) and exposure time (s) of one acquisition."""
    if acq.role == "localizer":
        return geometry.rows * geometry.pixel_spacing[0], acq.exposure_time_ms / 1000
    length = geometry.number_of_slices * geometry.spacing_between_slices
    if acq.spiral_pitch is None:
        return length, acq.exposure_time_ms / 1000 * geometry.number_of_slices
    rotations = length / (acq.spiral_pitch * acq.total_collimation_mm)
    return length, rotations * acq.revolution_s


def _irradiation_event(
    acq: Acquisition, geometry: SeriesGeometry, study_start: datetime, uid: Callable[..., str]
) -> _Event:
    """TID 10013 CT Irradiation Event Data of one acquisition."""
    start = study_start + timedelta(seconds=acq.offset_s)
    length, seconds = _scan_extent(acq, geometry)
    children = [
        _text("125203", "Acquisition Protocol", acq.description),
        _code_item("123014", "Target Region", code("69536005", "SCT", "Head")),
        _code_item("113820", "CT Acquisition Type", code(*_ACQUISITION_TYPES[acq.role])),
        _uidref("113769", "Irradiation Event UID", uid("irradiation", acq.role)),
        _acquisition_parameters(acq, length, seconds),
    ]
    dlp = None
    if acq.role != "localizer":
        dlp = round(acq.ctdivol_mgy * length / 10.0, 2)
        children.append(_ct_dose(acq.ctdivol_mgy, dlp))
    item = _container("113819", "CT Acquisition", children)
    return _Event(item, start, start + timedelta(seconds=seconds), dlp)


def _acquisition_parameters(acq: Acquisition, length: float, seconds: float) -> Dataset:
    """CT Acquisition Parameters, with the CT X-Ray Source Parameters."""
    source = _container(
        "113831",
        "CT X-Ray Source Parameters",
        [
            _text("113832", "Identification of the X-Ray Source", "A"),
            _num("113733", "KVP", acq.kvp, "kV", "kV"),
            _num("113833", "Maximum X-Ray Tube Current", acq.tube_current_ma, "mA", "mA"),
            _num("113734", "X-Ray Tube Current", acq.tube_current_ma, "mA", "mA"),
            _num("113834", "Exposure Time per Rotation", acq.revolution_s, "s", "s"),
        ],
    )
    return _container(
        "113822",
        "CT Acquisition Parameters",
        [
            _num("113824", "Exposure Time", round(seconds, 3), "s", "s"),
            _num("113825", "Scanning Length", round(length, 2), "mm", "mm"),
            _num(
                "113826",
                "Nominal Single Collimation Width",
                acq.single_collimation_mm,
                "mm",
                "mm",
            ),
            _num(
                "113827",
                "Nominal Total Collimation Width",
                acq.total_collimation_mm,
                "mm",
                "mm",
            ),
            _num("113823", "Number of X-Ray Sources", 1, "{X-Ray sources}", "X-Ray sources"),
            source,
        ],
    )


def _ct_dose(ctdivol_mgy: float, dlp: float) -> Dataset:
    """CT Dose of one acquisition: mean CTDIvol in the head phantom, and the DLP."""
    return _container(
        "113829",
        "CT Dose",
        [
            _num("113830", "Mean CTDIvol", ctdivol_mgy, "mGy", "mGy"),
            _code_item(
                "113835",
                "CTDIw Phantom Type",
                code("113690", "DCM", "IEC Head Dosimetry Phantom"),
            ),
            _num("113838", "DLP", dlp, "mGy.cm", "mGy.cm"),
        ],
    )


def _report_content(
    identity: StudyIdentity,
    study_start: datetime,
    events: Sequence[_Event],
    uid: Callable[..., str],
) -> list[Dataset]:
    """The report's content: procedure, observer, irradiation times, totals and events."""
    total_dlp = 0.0
    for event in events:
        if event.dlp is not None:
            total_dlp += event.dlp
    first = min((e.start for e in events), default=study_start)
    last = max((e.end for e in events), default=study_start)
    scope = _code_item(
        "113705", "Scope of Accumulation", code("113014", "DCM", "Study"), "HAS OBS CONTEXT"
    )
    scope.ContentSequence = DicomSequence(
        [_uidref("110180", "Study Instance UID", identity.study_uid, "HAS PROPERTIES")]
    )
    return [
        _code_item(
            "121058",
            "Procedure reported",
            code("77477000", "SCT", "Computed Tomography X-Ray"),
            "HAS CONCEPT MOD",
        ),
        _code_item("121005", "Observer Type", code("121007", "DCM", "Device"), "HAS OBS CONTEXT"),
        _uidref("121012", "Device Observer UID", uid("device"), "HAS OBS CONTEXT"),
        _text("121013", "Device Observer Name", STATION_NAME, "HAS OBS CONTEXT"),
        _text("121014", "Device Observer Manufacturer", MANUFACTURER, "HAS OBS CONTEXT"),
        _text("121015", "Device Observer Model Name", MODEL_NAME, "HAS OBS CONTEXT"),
        _text("121016", "Device Observer Serial Number", DEVICE_SERIAL_NUMBER, "HAS OBS CONTEXT"),
        _datetime("113809", "Start of X-Ray Irradiation", first, "HAS OBS CONTEXT"),
        _datetime("113810", "End of X-Ray Irradiation", last, "HAS OBS CONTEXT"),
        scope,
        _container(
            "113811",
            "CT Accumulated Dose Data",
            [
                _num(
                    "113812",
                    "Total Number of Irradiation Events",
                    len(events),
                    "{events}",
                    "events",
                ),
                _num(
                    "113813",
                    "CT Dose Length Product Total",
                    round(total_dlp, 2),
                    "mGy.cm",
                    "mGy.cm",
                ),
            ],
        ),
        *(event.item for event in events),
        _code_item(
            "113854",
            "Source of Dose Information",
            code("113856", "DCM", "Automated Data Collection"),
        ),
    ]


def _content_item(
    relationship: str, value_type: str, value: str, meaning: str, scheme: str = "DCM"
) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = DicomSequence([code(value, scheme, meaning)])
    return item


def _container(value: str, meaning: str, children: Iterable[Dataset]) -> Dataset:
    item = _content_item("CONTAINS", "CONTAINER", value, meaning)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = DicomSequence(list(children))
    return item


def _num(
    value: str, meaning: str, number: float, unit: str, unit_meaning: str, rel: str = "CONTAINS"
) -> Dataset:
    item = _content_item(rel, "NUM", value, meaning)
    measured = Dataset()
    measured.NumericValue = as_ds(float(number))
    measured.MeasurementUnitsCodeSequence = DicomSequence([code(unit, "UCUM", unit_meaning)])
    item.MeasuredValueSequence = DicomSequence([measured])
    return item


def _text(value: str, meaning: str, text: str, rel: str = "CONTAINS") -> Dataset:
    item = _content_item(rel, "TEXT", value, meaning)
    item.TextValue = text
    return item


def _code_item(value: str, meaning: str, concept: Dataset, rel: str = "CONTAINS") -> Dataset:
    item = _content_item(rel, "CODE", value, meaning)
    item.ConceptCodeSequence = DicomSequence([concept])
    return item


def _uidref(value: str, meaning: str, uid: str, rel: str = "CONTAINS") -> Dataset:
    item = _content_item(rel, "UIDREF", value, meaning)
    item.UID = uid
    return item


def _datetime(value: str, meaning: str, when: datetime, rel: str = "CONTAINS") -> Dataset:
    item = _content_item(rel, "DATETIME", value, meaning)
    item.DateTime = when.strftime("%Y%m%d%H%M%S")
    return item
