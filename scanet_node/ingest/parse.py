"""Reading the identifying attributes of a received dataset, without decoding pixels.

The encoded dataset is walked element by element with pydicom's element
generator; an element cut short or a stream that ends inside an element is an
undecodable dataset, which pydicom's ``dcmread`` would otherwise accept silently.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from scanet_node.dicom_status import Status
from scanet_node.errors import IngestError
from scanet_node.ingest.uids import check_uid

logger = logging.getLogger(__name__)


_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class Identity:
    """The attributes the catalog keeps of one instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    patient_key: str | None
    study_date: str | None
    study_description: str | None
    accession_number: str | None
    modality: str | None
    series_number: int | None
    series_description: str | None
    image_type: str | None
    contrast_agent: str | None
    slice_thickness: float | None
    body_part_examined: str | None
    instance_number: int | None


def decode_elements(encoded: bytes, transfer_syntax: str) -> Dataset:
    """Decode the top level of an encoded dataset (no File Meta), checking its framing.

    Raises
    ------
    IngestError
        0xC210 when the stream is not a complete dataset in ``transfer_syntax``.
    """
    tsyntax = UID(transfer_syntax)
    if tsyntax == DeflatedExplicitVRLittleEndian:
        try:
            encoded = zlib.decompressobj(-zlib.MAX_WBITS).decompress(encoded)
        except zlib.error as exc:
            raise IngestError(Status.CANNOT_DECODE, "Cannot decode: bad deflate stream") from exc
    if not tsyntax.is_transfer_syntax:
        raise IngestError(Status.CANNOT_DECODE, "Cannot decode: unknown transfer syntax")
    fp = BytesIO(encoded)
    elements: dict[Any, Any] = {}
    end = 0
    try:
        for raw in data_element_generator(fp, tsyntax.is_implicit_VR, tsyntax.is_little_endian):
            # Undefined-length sequences come back decoded, as DataElement.
            if (
                isinstance(raw, RawDataElement)
                and raw.length != _UNDEFINED_LENGTH
                and raw.value is not None
                and len(raw.value) != raw.length
            ):
                raise IngestError(
                    Status.CANNOT_DECODE, f"Cannot decode: element {raw.tag} is truncated"
                )
            elements[raw.tag] = raw
            end = fp.tell()
    except IngestError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage
        raise IngestError(Status.CANNOT_DECODE, f"Cannot decode: {type(exc).__name__}") from exc
    if not elements:
        raise IngestError(Status.CANNOT_DECODE, "Cannot decode: empty dataset")
    if end != len(encoded):
        raise IngestError(Status.CANNOT_DECODE, "Cannot decode: dataset ends inside an element")
    return Dataset(elements)


def _get(ds: Dataset, keyword: str) -> Any:
    """An attribute's value, or None when absent, empty or unreadable (tolerant reading)."""
    try:
        value = ds.get(keyword)
    except Exception:
        logger.warning("unreadable %s ignored", keyword)
        return None
    if value is None or value == "":
        return None
    return value


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    return str(value)[:limit]


def _number(ds: Dataset, keyword: str, kind: type[int] | type[float]) -> Any:
    value = _get(ds, keyword)
    try:
        return None if value is None else kind(value)
    except (TypeError, ValueError):
        logger.warning("non-numeric %s ignored", keyword)
        return None


def _raw_text(ds: Dataset, tag: int) -> str:
    """An element's value from its raw bytes, not through pydicom's value conversion.

    Used for patient identifiers, whose values must never reach a log line: some
    of pydicom's validation warnings quote the value they reject.
    """
    if tag not in ds:
        return ""
    elem = ds.get_item(tag)
    value = elem.value if elem is not None else None
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    return "" if value is None else str(value).strip(" \x00")


def patient_key(ds: Dataset) -> str | None:
    """A one-way key for the patient (issuer + Patient ID), to pair studies without PHI."""
    patient_id = _raw_text(ds, 0x00100020)
    if not patient_id:
        return None
    return patient_key_of(_raw_text(ds, 0x00100021), patient_id)


def patient_key_of(issuer: str, patient_id: str) -> str:
    """The catalog's ``patient_key`` of an issuer and Patient ID (also used for registry rows)."""
    return hashlib.sha256(f"{issuer}\\{patient_id}".encode()).hexdigest()


def identify(ds: Dataset, affected_sop_class: str, affected_sop_instance: str) -> Identity:
    """Validate the identifying UIDs of a dataset against its C-STORE request.

    Raises
    ------
    IngestError
        0xC220 for a missing or invalid UID, 0xA900 when the dataset's SOP Class
        differs from the request's, 0xC221 when its SOP Instance UID does.
    """
    study = check_uid(_get(ds, "StudyInstanceUID"), "StudyInstanceUID")
    series = check_uid(_get(ds, "SeriesInstanceUID"), "SeriesInstanceUID")
    sop_instance = check_uid(_get(ds, "SOPInstanceUID"), "SOPInstanceUID")
    sop_class = check_uid(_get(ds, "SOPClassUID"), "SOPClassUID")
    if sop_class != str(affected_sop_class).rstrip("\x00 "):
        raise IngestError(
            Status.MISMATCH_SOP_CLASS, "SOPClassUID differs from Affected SOP Class UID"
        )
    if sop_instance != str(affected_sop_instance).rstrip("\x00 "):
        raise IngestError(
            Status.MISMATCH_SOP_INSTANCE, "SOPInstanceUID differs from Affected SOP Instance UID"
        )
    return Identity(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        patient_key=patient_key(ds),
        study_date=_text(ds, "StudyDate", 8),
        study_description=_text(ds, "StudyDescription", 64),
        accession_number=_text(ds, "AccessionNumber", 16),
        modality=_text(ds, "Modality", 16),
        series_number=_number(ds, "SeriesNumber", int),
        series_description=_text(ds, "SeriesDescription", 64),
        image_type=_text(ds, "ImageType", 128),
        contrast_agent=_text(ds, "ContrastBolusAgent", 64),
        slice_thickness=_number(ds, "SliceThickness", float),
        body_part_examined=_text(ds, "BodyPartExamined", 16),
        instance_number=_number(ds, "InstanceNumber", int),
    )
