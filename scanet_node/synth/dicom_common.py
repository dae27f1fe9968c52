"""What every DICOM object of a synthetic study shares.

The made-up patient and study (:class:`StudyIdentity`), the equipment that "acquired" it, the
technique of each acquisition (:class:`Acquisition`, reported in the CT images and in the dose
SR), the Patient, General Study, General Equipment and SOP Common attributes, and the DICOM
value formats (DA, TM, DS) the writers use.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from scanet_node import __version__

logger = logging.getLogger(__name__)

MANUFACTURER: Final = "SCANET-SYNTH"
MODEL_NAME: Final = "Synthetic CT 64"
DEVICE_SERIAL_NUMBER: Final = "SYN-0001"
STATION_NAME: Final = "SYNTHCT01"
INSTITUTION_NAME: Final = "Synthetic Cohort"
SOFTWARE_VERSIONS: Final = f"scanet-node {__version__} synth"
STUDY_DESCRIPTION: Final = "CT HEAD STROKE PROTOCOL"


@dataclass(frozen=True)
class StudyIdentity:
    """The (made-up) patient and the study, as the caller draws them.

    ``study_date`` is YYYYMMDD and ``study_time`` HHMMSS; the series follow minutes after.
    """

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    accession: str
    study_uid: str
    study_date: str
    study_time: str
    study_id: str = "1"

    def __post_init__(self) -> None:
        checks = {
            "patient_id": len(self.patient_id) <= 64 and "\\" not in self.patient_id,
            "birth_date": re.fullmatch(r"\d{8}", self.birth_date) is not None,
            "sex": self.sex in ("M", "F", "O", ""),
            "age": re.fullmatch(r"\d{3}[DWMY]", self.age) is not None,
            "accession": len(self.accession) <= 16,
            "study_uid": len(self.study_uid) <= 64
            and re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))+", self.study_uid) is not None,
            "study_date": re.fullmatch(r"\d{8}", self.study_date) is not None,
            "study_time": re.fullmatch(r"\d{6}(\.\d{1,6})?", self.study_time) is not None,
            "study_id": len(self.study_id) <= 16,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid study identity: {', '.join(bad)}")


@dataclass(frozen=True)
class Acquisition:
    """Technique of one series as the scanner would report it."""

    role: str
    series_number: int
    description: str
    kernel: str
    image_type: tuple[str, ...]
    window: tuple[float, float, str]
    offset_s: float  # series start after the study time
    kvp: float = 120.0
    tube_current_ma: int = 0
    exposure_time_ms: int = 0
    revolution_s: float = 1.0
    ctdivol_mgy: float = 0.0
    single_collimation_mm: float = 0.6
    total_collimation_mm: float = 19.2
    spiral_pitch: float | None = None
    contrast: bool = False
    phase: str = "ncct"

    @property
    def exposure_mas(self) -> int:
        """Exposure in mAs: tube current times exposure time."""
        return round(self.tube_current_ma * self.exposure_time_ms / 1000)


def code(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item: value, coding scheme designator and meaning."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def common_dataset(identity: StudyIdentity, sop_class_uid: str) -> Dataset:
    """Patient, General Study, General Equipment and SOP Common attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationVersionName = "SCANET_SYNTH"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = identity.study_date
    ds.InstanceCreationTime = identity.study_time
    ds.SOPClassUID = sop_class_uid
    ds.StudyDate = identity.study_date
    ds.StudyTime = identity.study_time
    ds.AccessionNumber = identity.accession
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION_NAME
    ds.ReferringPhysicianName = ""
    ds.StationName = STATION_NAME
    ds.StudyDescription = STUDY_DESCRIPTION
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = DEVICE_SERIAL_NUMBER
    ds.SoftwareVersions = SOFTWARE_VERSIONS
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.sex
    ds.PatientAge = identity.age
    ds.StudyInstanceUID = identity.study_uid
    ds.StudyID = identity.study_id
    return ds


def parse_datetime(date: str, time_of_day: str) -> datetime:
    """A DICOM DA and TM (fraction optional) as one datetime."""
    whole, _, fraction = time_of_day.partition(".")
    whole = whole.ljust(6, "0")
    parsed = datetime.strptime(date + whole, "%Y%m%d%H%M%S")
    if fraction:
        parsed += timedelta(microseconds=int(fraction.ljust(6, "0")[:6]))
    return parsed


def as_da(when: datetime) -> str:
    """A datetime as DICOM DA."""
    return when.strftime("%Y%m%d")


def as_tm(when: datetime) -> str:
    """A datetime as DICOM TM, to the microsecond."""
    return when.strftime("%H%M%S.%f")


def as_ds(value: float) -> str:
    """A number as a valid DS string (at most 16 characters; whole numbers without ".0")."""
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return str(format_number_as_ds(number))
