"""Small synthetic DICOM instances for the tests (no patient data: the names are made up)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "TESTPATIENT^SECRET"
PATIENT_ID = "PID-SECRET-4711"


def ct_dataset(
    study_uid: str | None = None,
    series_uid: str | None = None,
    *,
    index: int = 0,
    size: int = 32,
    description: str = "Head 5mm",
    contrast: str | None = None,
) -> Dataset:
    """One CT image with the attributes a scanner writes, small enough to send fast."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.StudyDate = "20261129"
    ds.Modality = "CT"
    ds.Manufacturer = "SYNTHETIC"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.SeriesDescription = description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = 5.0
    if contrast:
        ds.ContrastBolusAgent = contrast
    ds.ImagePositionPatient = [-120.0, -120.0, 5.0 * index]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    rng = np.random.default_rng(index)
    ds.PixelData = rng.integers(-1000, 1000, (size, size), dtype=np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def ct_series(count: int, **kwargs: object) -> list[Dataset]:
    """``count`` instances of one new series in one new study."""
    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        ct_dataset(study_uid, series_uid, index=i, **kwargs)  # type: ignore[arg-type]
        for i in range(count)
    ]


def write_files(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Write datasets as DICOM files; return their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def iter_spool(spool: Path) -> Iterator[Path]:
    """Every instance file in a spool (temporary files excluded)."""
    return (p for p in spool.rglob("*.dcm") if ".tmp" not in p.parts)
