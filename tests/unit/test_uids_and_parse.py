from __future__ import annotations

import zlib

import pytest
from dicom_samples import PATIENT_ID, ct_dataset
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from scanet_node.errors import IngestError
from scanet_node.ingest.parse import decode_elements, identify, patient_key
from scanet_node.ingest.spool import Spool
from scanet_node.ingest.uids import check_uid


@pytest.mark.parametrize(
    "uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "2.25.0", "1.02.3", "1" * 64]
)
def test_valid_uids(uid: str) -> None:
    assert check_uid(uid, "X") == uid


def test_padding_is_stripped() -> None:
    assert check_uid("1.2.3\x00", "X") == "1.2.3"


@pytest.mark.parametrize(
    "uid",
    [
        "../../x",
        "..",
        "1.2/3",
        "/etc/passwd",
        "1..2",
        ".1.2",
        "1.2.",
        "1.2.a",
        "1 .2",
        "1" * 65,
        "1.2\\3",
        "\x00",
    ],
)
def test_invalid_uids(uid: str) -> None:
    with pytest.raises(IngestError) as err:
        check_uid(uid, "StudyInstanceUID")
    assert err.value.status == 0xC220
    assert "StudyInstanceUID" in err.value.reason


def test_missing_uid() -> None:
    with pytest.raises(IngestError, match="SeriesInstanceUID is missing"):
        check_uid(None, "SeriesInstanceUID")


def test_spool_path_is_built_from_checked_uids_only() -> None:
    assert Spool.relative_path("1.2", "1.2.3", "1.2.3.4") == "1.2/1.2.3/1.2.3.4.dcm"
    with pytest.raises(IngestError):
        Spool.relative_path("1.2", "../../x", "1.2.3.4")


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    """The dataset as a peer sends it in a C-STORE: no preamble, no File Meta."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize(
    ("implicit", "syntax"), [(False, ExplicitVRLittleEndian), (True, ImplicitVRLittleEndian)]
)
def test_decode_and_identify(implicit: bool, syntax: str) -> None:
    ds = ct_dataset(contrast="Iohexol")
    decoded = decode_elements(encode(ds, implicit), syntax)
    ident = identify(decoded, ds.SOPClassUID, ds.SOPInstanceUID)
    assert ident.study_instance_uid == ds.StudyInstanceUID
    assert ident.series_instance_uid == ds.SeriesInstanceUID
    assert ident.modality == "CT"
    assert ident.image_type == "ORIGINAL\\PRIMARY\\AXIAL"
    assert ident.contrast_agent == "Iohexol"
    assert ident.slice_thickness == 5.0
    assert ident.series_number == 2 and ident.instance_number == 1
    assert ident.patient_key is not None and PATIENT_ID not in ident.patient_key


def test_decode_deflated() -> None:
    ds = ct_dataset()
    raw = encode(ds)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(raw) + packer.flush()
    decoded = decode_elements(deflated, DeflatedExplicitVRLittleEndian)
    assert decoded.SOPInstanceUID == ds.SOPInstanceUID
    with pytest.raises(IngestError, match="deflate"):
        decode_elements(b"\x00garbage" * 10, DeflatedExplicitVRLittleEndian)


@pytest.mark.parametrize("cut", [1, 7, 100, 600, 2000])
def test_truncated_dataset_is_refused(cut: int) -> None:
    raw = encode(ct_dataset())
    with pytest.raises(IngestError) as err:
        decode_elements(raw[:-cut], ExplicitVRLittleEndian)
    assert err.value.status == 0xC210
    assert "Cannot decode" in err.value.reason


def test_garbage_is_refused() -> None:
    with pytest.raises(IngestError) as err:
        decode_elements(b"\xff" * 300, ExplicitVRLittleEndian)
    assert err.value.status == 0xC210
    with pytest.raises(IngestError, match="empty"):
        decode_elements(b"", ExplicitVRLittleEndian)


def test_identify_refuses_missing_and_mismatched_uids() -> None:
    ds = ct_dataset()
    del ds.StudyInstanceUID
    with pytest.raises(IngestError, match="StudyInstanceUID is missing"):
        identify(ds, ds.SOPClassUID, ds.SOPInstanceUID)
    ds = ct_dataset()
    with pytest.raises(IngestError) as err:
        identify(ds, MRImageStorage, ds.SOPInstanceUID)
    assert err.value.status == 0xA900
    with pytest.raises(IngestError) as err:
        identify(ds, ds.SOPClassUID, generate_uid())
    assert err.value.status == 0xC221


def test_tolerant_reading_of_bad_optional_values() -> None:
    ds = ct_dataset()
    ds.SeriesNumber = None
    thickness = b"\x18\x00\x50\x00DS\x04\x005.0 "
    raw = encode(ds)
    assert thickness in raw
    decoded = decode_elements(
        raw.replace(thickness, thickness[:-4] + b"thk "), ExplicitVRLittleEndian
    )
    ident = identify(decoded, ds.SOPClassUID, ds.SOPInstanceUID)
    assert ident.slice_thickness is None and ident.series_number is None


def test_patient_key_depends_on_issuer() -> None:
    a, b = Dataset(), Dataset()
    a.PatientID = b.PatientID = "123"
    b.IssuerOfPatientID = "HOSP-B"
    assert patient_key(a) != patient_key(b)
    assert patient_key(Dataset()) is None
