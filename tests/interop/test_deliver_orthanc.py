"""``results.deliver.send`` to a real Orthanc, the PACS most sites can try the node with."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from dicom_samples import ct_dataset, write_files
from orthanc import OrthancServer, run_orthanc
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from scanet_node.results.deliver import Peer, send

OUR_AET = "SCANET"


def sc_dataset(ct: Dataset) -> Dataset:
    """A small 8-bit Secondary Capture filed in the same study as ``ct``."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = ct.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = ct.PatientName
    ds.PatientID = ct.PatientID
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 900
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(256, dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def sr_dataset(ct: Dataset) -> Dataset:
    """A stand-in Comprehensive 3D SR (no content tree): Orthanc stores it by its UIDs."""
    ds = Dataset()
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = ct.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = ct.PatientName
    ds.PatientID = ct.PatientID
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path) as server:
        yield server


def peer(server: OrthancServer, ae_title: str | None = None) -> Peer:
    return Peer(ae_title or server.ae_title, server.host, server.dicom_port, name="ORTHANC")


def test_send_is_stored_once_even_when_repeated(orthanc: OrthancServer, tmp_path: Path) -> None:
    ct = ct_dataset()
    sc, sr = sc_dataset(ct), sr_dataset(ct)
    uids = sorted(str(ds.SOPInstanceUID) for ds in (ct, sc, sr))
    [ct_path] = write_files([ct], tmp_path / "out")
    outcome = send([ct_path, sc, sr], peer(orthanc), calling_aet=OUR_AET, timeout=10)
    assert outcome.ok, outcome.detail
    assert outcome.sent == 3 and set(outcome.statuses.values()) == {0}
    assert sorted(orthanc.instances()) == uids

    again = send([ct, sc, sr], peer(orthanc), calling_aet=OUR_AET, timeout=10)
    assert again.ok and again.sent == 3, again.detail
    assert sorted(orthanc.instances()) == uids

    stored = dcmread(BytesIO(orthanc.get_instance_file(orthanc.instance_ids()[ct.SOPInstanceUID])))
    assert stored.SOPClassUID == ct.SOPClassUID
    assert stored.PixelData == ct.PixelData


def test_wrong_called_aet_is_rejected_permanently(orthanc: OrthancServer) -> None:
    outcome = send([ct_dataset()], peer(orthanc, "NOTORTHANC"), calling_aet=OUR_AET, timeout=10)
    assert not outcome.ok and outcome.permanent and outcome.status == "rejected"
    assert "called AE title not recognised" in outcome.detail
    assert orthanc.instances() == []


def test_down_then_up_again(orthanc: OrthancServer) -> None:
    earlier, first, second = ct_dataset(), ct_dataset(index=1), ct_dataset(index=2)
    assert send([earlier], peer(orthanc), calling_aet=OUR_AET, timeout=10).ok
    orthanc.stop()
    down = send([first], peer(orthanc), calling_aet=OUR_AET, timeout=5)
    assert not down.ok and not down.permanent and down.status == "unreachable"
    assert f"ORTHANC at 127.0.0.1:{orthanc.dicom_port} refused the connection" in down.detail

    orthanc.start()
    up = send([first, second], peer(orthanc), calling_aet=OUR_AET, timeout=10)
    assert up.ok and up.sent == 2, up.detail
    stored = [earlier.SOPInstanceUID, first.SOPInstanceUID, second.SOPInstanceUID]
    assert sorted(orthanc.instances()) == sorted(stored)
