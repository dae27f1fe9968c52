"""The listener over real sockets on 127.0.0.1, with pynetdicom as the sending peer."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeFactory, wait_for
from dicom_samples import PATIENT_ID, PATIENT_NAME, ct_dataset, ct_series, iter_spool
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pynetdicom import _config
from scu import association

from scanet_node.cli import main as cli_main
from scanet_node.service import Node


def spool_files(node: Node) -> list[Path]:
    return sorted(iter_spool(node.spool.root))


def tmp_files(node: Node) -> list[Path]:
    return list((node.spool.root / ".tmp").iterdir())


def test_echo_with_pynetdicom_and_the_cli(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    with association(node) as assoc:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
    host, port = node.listener.address
    assert cli_main(["echo", host, str(port), "--called-aet", "SCANET"]) == 0
    assert "success" in capsys.readouterr().out
    assert cli_main(["echo", host, str(port), "--called-aet", "NOTUS"]) == 1


def test_instance_is_kept_as_received_and_catalogued(node: Node) -> None:
    ds = ct_dataset(contrast="Iopromide")
    with association(node, transfer_syntaxes=[ImplicitVRLittleEndian]) as assoc:
        status = assoc.send_c_store(ds)
    assert status.Status == 0x0000
    path = node.spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    stored = dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    study = node.catalog.get_study(ds.StudyInstanceUID)
    assert study is not None and study.num_instances == 1
    series = study.series[0]
    assert (series.modality, series.contrast_agent, series.calling_aet) == (
        "CT",
        "Iopromide",
        "TESTSCU",
    )
    assert series.sop_class_uid == CTImageStorage
    assert node.catalog.instance_paths(ds.SeriesInstanceUID) == [
        f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    ]


def test_duplicate_instances_are_idempotent(node: Node) -> None:
    series = ct_series(3)
    with association(node) as assoc:
        for ds in series + series:
            assert assoc.send_c_store(ds).Status == 0x0000
    study = node.catalog.get_study(series[0].StudyInstanceUID)
    assert study is not None and study.num_instances == 3
    assert len(spool_files(node)) == 3


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        ("StudyInstanceUID", None, "StudyInstanceUID is missing"),
        ("StudyInstanceUID", "../../x", "StudyInstanceUID is not a valid UID"),
        ("SeriesInstanceUID", "../../../../tmp/evil", "SeriesInstanceUID is not a valid UID"),
        ("SeriesInstanceUID", None, "SeriesInstanceUID is missing"),
        ("StudyInstanceUID", "1.2.3/4", "StudyInstanceUID is not a valid UID"),
    ],
)
def test_missing_or_invalid_uids_are_refused(
    node: Node, keyword: str, value: str | None, reason: str
) -> None:
    ds = ct_dataset()
    if value is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    with association(node) as assoc:
        status = assoc.send_c_store(ds)
        assert status.Status == 0xC220
        assert status.ErrorComment == reason
        assert assoc.send_c_store(ct_dataset()).Status == 0x0000  # still serving
    assert len(spool_files(node)) == 1
    assert node.catalog.count_instances() == 1
    assert not list(node.spool.root.parent.parent.rglob("evil*"))


def raw_file(
    tmp_path: Path, body: bytes, sop_uid: str, syntax: str = ExplicitVRLittleEndian
) -> Path:
    """A file with valid File Meta and an arbitrary dataset body, sent byte for byte."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta)
    path = tmp_path / f"{sop_uid}.dcm"
    path.write_bytes(fp.getvalue() + body)
    return path


def encoded(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.fixture
def send_raw_bytes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    yield


@pytest.mark.usefixtures("send_raw_bytes")
@pytest.mark.parametrize("damage", ["truncated", "garbage", "cut-header"])
def test_undecodable_datasets_are_refused_and_the_node_keeps_serving(
    node: Node, tmp_path: Path, damage: str
) -> None:
    ds = ct_dataset()
    body = encoded(ds)
    body = {
        "truncated": body[: len(body) - 500],
        "garbage": b"\x08\x00\x16\x00UI" + b"\xfe" * 700,
        "cut-header": body[: body.index(b"\xe0\x7f\x10\x00") + 5],
    }[damage]
    path = raw_file(tmp_path, body, ds.SOPInstanceUID)
    with association(node) as assoc:
        status = assoc.send_c_store(path)
        assert status.Status == 0xC210
        assert status.ErrorComment.startswith("Cannot decode")
        good = raw_file(tmp_path, encoded(ct_dataset()), "1.2.3.4.5")
        assert assoc.send_c_store(good).Status == 0xC221  # meta and dataset UIDs differ
        assert assoc.send_c_store(ct_dataset()).Status == 0x0000
    assert node.catalog.count_instances() == 1
    assert tmp_files(node) == []


@pytest.mark.usefixtures("send_raw_bytes")
def test_dataset_of_another_sop_class_is_refused(node: Node, tmp_path: Path) -> None:
    ds = ct_dataset()
    ds.SOPClassUID = MRImageStorage  # the request (from the File Meta) says CT
    with association(node) as assoc:
        status = assoc.send_c_store(raw_file(tmp_path, encoded(ds), ds.SOPInstanceUID))
    assert status.Status == 0xA900
    assert status.ErrorComment == "SOPClassUID differs from Affected SOP Class UID"
    assert node.catalog.count_instances() == 0


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEG2000Lossless,
    ],
)
def test_transfer_syntaxes_are_accepted_and_kept(node: Node, syntax: str) -> None:
    ds = ct_dataset()
    if syntax in (RLELossless, JPEG2000Lossless):
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    with association(node, transfer_syntaxes=[syntax]) as assoc:
        assert assoc.accepted_contexts[0].transfer_syntax[0] == syntax
        assert assoc.send_c_store(ds).Status == 0x0000
    (path,) = spool_files(node)
    stored = dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    if syntax in (RLELossless, JPEG2000Lossless):
        assert stored.PixelData == ds.PixelData  # the compressed bytes, untouched
    assert (stored.pixel_array == ct_dataset().pixel_array).all()


def test_low_disk_space_is_out_of_resources(node_factory: NodeFactory) -> None:
    node = node_factory(node={"min_free_disk_mb": 10**9})
    with association(node) as assoc:
        status = assoc.send_c_store(ct_dataset())
    assert status.Status == 0xA700
    assert "nearly full" in status.ErrorComment
    assert spool_files(node) == [] and node.catalog.count_instances() == 0


def test_disk_full_and_read_only_spool_are_out_of_resources(
    node_factory: NodeFactory, tiny_disk: Path, tmp_path: Path
) -> None:
    node = node_factory(tiny_disk, catalog={"url": f"sqlite:///{tmp_path / 'cat.sqlite'}"})
    small, big = ct_dataset(size=64), ct_dataset(size=1024)  # 8 KiB and 2 MiB of pixels
    with association(node) as assoc:
        assert assoc.send_c_store(small).Status == 0x0000
        status = assoc.send_c_store(big)
        assert status.Status == 0xA700
        assert status.ErrorComment == "Out of resources: spool disk full (ENOSPC)"
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
        status = assoc.send_c_store(ct_dataset())
        assert status.Status == 0xA700
        assert status.ErrorComment == "Out of resources: cannot write spool (EROFS)"
    assert node.catalog.count_instances() == 1
    assert [p.name for p in spool_files(node)] == [f"{small.SOPInstanceUID}.dcm"]


def test_association_policy(node_factory: NodeFactory) -> None:
    node = node_factory(security={"allowed_calling_aets": ["CT01", "PACS"]})
    with association(node, calling="INTRUDER") as assoc:
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.result_source == 0x01
        assert assoc.acceptor.primitive.diagnostic == 0x03  # calling AE title not recognised
    with association(node, calling="CT01", called="OTHER") as assoc:
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.diagnostic == 0x07  # called AE title not recognised
    with association(node, calling="CT01") as assoc:
        assert assoc.is_established
        assert assoc.send_c_store(ct_dataset()).Status == 0x0000


def test_associations_beyond_the_limit_are_rejected(node_factory: NodeFactory) -> None:
    node = node_factory(node={"max_associations": 2})
    with association(node) as first, association(node) as second:
        assert first.is_established and second.is_established
        with association(node) as third:
            assert third.is_rejected
            assert third.acceptor.primitive.result == 0x02  # rejected transient
            assert third.acceptor.primitive.diagnostic == 0x02  # local limit exceeded
    wait_for("the three associations to end", lambda: node.listener.active_associations() == 0, 5)
    with association(node) as again:
        assert again.is_established


def test_abort_mid_series_keeps_everything_acknowledged(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scanet_node")
    series = ct_series(20)
    acknowledged = []
    with association(node) as assoc:
        for ds in series[:12]:
            if assoc.send_c_store(ds).Status == 0x0000:
                acknowledged.append(ds.SOPInstanceUID)
        assoc.abort()
    assert len(acknowledged) == 12
    wait_for(
        "the abort to be logged",
        lambda: any(
            "association from TESTSCU" in r.getMessage() and "aborted" in r.getMessage()
            for r in caplog.records
        ),
    )
    study = node.catalog.get_study(series[0].StudyInstanceUID)
    assert study is not None and study.num_instances == 12
    assert {p.stem for p in spool_files(node)} == set(acknowledged)
    assert tmp_files(node) == []


def test_hundreds_of_instances_from_parallel_associations(node_factory: NodeFactory) -> None:
    node = node_factory(node={"max_associations": 8})
    batches = [ct_series(80) for _ in range(5)]
    statuses: list[int] = []
    lock = threading.Lock()

    def send(batch: list[Dataset]) -> None:
        with association(node, calling="CT01") as assoc:
            for ds in batch:
                status = assoc.send_c_store(ds)
                with lock:
                    statuses.append(status.Status if status else -1)

    threads = [threading.Thread(target=send, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert statuses == [0] * 400
    assert node.catalog.count_instances() == 400
    assert len(spool_files(node)) == 400
    for batch in batches:
        study = node.catalog.get_study(batch[0].StudyInstanceUID)
        assert study is not None and study.series[0].num_instances == 80


def test_series_settles_when_quiet(node_factory: NodeFactory) -> None:
    node = node_factory(pipeline={"series_settle_seconds": 0.5})
    series = ct_series(3)
    with association(node) as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0x0000
    uid = series[0].SeriesInstanceUID
    wait_for(
        "the series to settle",
        lambda: _states(node, series[0].StudyInstanceUID) == {uid: "settled"},
        10,
    )
    study = node.catalog.get_study(series[0].StudyInstanceUID)
    assert study is not None and study.series[0].settled_at is not None


def _states(node: Node, study_uid: str) -> dict[str, str]:
    study = node.catalog.get_study(study_uid)
    assert study is not None
    return {s.series_instance_uid: s.state for s in study.series}


def test_a_series_settles_soon_after_its_sender_releases_the_association(
    node_factory: NodeFactory,
) -> None:
    # The quiet time is far off: only the release can settle the series within the test.
    node = node_factory(
        pipeline={"series_settle_seconds": 600, "settle_after_release_seconds": 0.5}
    )
    series = ct_series(3)
    uid = series[0].SeriesInstanceUID
    with association(node) as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0x0000
        # Three graces with the association open, waited out on purpose: it still receives.
        time.sleep(1.5)
        assert _states(node, series[0].StudyInstanceUID) == {uid: "receiving"}
    wait_for(
        "the series to settle after the release",
        lambda: _states(node, series[0].StudyInstanceUID) == {uid: "settled"},
    )


def test_a_series_another_association_still_delivers_does_not_settle_on_release(
    node_factory: NodeFactory,
) -> None:
    node = node_factory(
        pipeline={"series_settle_seconds": 600, "settle_after_release_seconds": 0.5}
    )
    series = ct_series(4)
    study_uid, uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    with association(node) as second:
        with association(node) as first:
            assert first.send_c_store(series[0]).Status == 0x0000
            assert second.send_c_store(series[1]).Status == 0x0000
        # The first association is released; the second is still delivering the series.
        # Three graces, waited out on purpose: the series still receives.
        time.sleep(1.5)
        assert _states(node, study_uid) == {uid: "receiving"}
        assert second.send_c_store(series[2]).Status == 0x0000
        assert second.send_c_store(series[3]).Status == 0x0000
    wait_for(
        "the series to settle once its last sender released",
        lambda: _states(node, study_uid) == {uid: "settled"},
    )
    study = node.catalog.get_study(study_uid)
    assert study is not None and study.series[0].num_instances == 4


def test_a_series_settles_when_its_sender_moves_on_to_the_next_one(
    node_factory: NodeFactory,
) -> None:
    # A scanner sends the NCCT, then the CTA, on one association: the NCCT is complete as
    # soon as the CTA starts, so it can be prepared while the CTA arrives.
    node = node_factory(
        pipeline={"series_settle_seconds": 600, "settle_after_release_seconds": 0.5}
    )
    ncct = ct_series(2)
    cta_uid = generate_uid()
    cta = [ct_dataset(ncct[0].StudyInstanceUID, cta_uid, index=i) for i in range(2)]
    study_uid = ncct[0].StudyInstanceUID
    with association(node) as assoc:
        for ds in (*ncct, cta[0]):
            assert assoc.send_c_store(ds).Status == 0x0000
        wait_for(
            "the first series to settle while the association sends the second",
            lambda: (
                _states(node, study_uid)
                == {ncct[0].SeriesInstanceUID: "settled", cta[0].SeriesInstanceUID: "receiving"}
            ),
        )
        # Two graces, waited out on purpose: the series being sent stays open.
        time.sleep(1.0)
        assert _states(node, study_uid)[cta[0].SeriesInstanceUID] == "receiving"
        assert assoc.send_c_store(cta[1]).Status == 0x0000
    wait_for(
        "the second series to settle after the release",
        lambda: set(_states(node, study_uid).values()) == {"settled"},
    )


def test_an_aborted_association_leaves_its_series_to_the_quiet_time(
    node_factory: NodeFactory,
) -> None:
    node = node_factory(pipeline={"series_settle_seconds": 3, "settle_after_release_seconds": 0.2})
    series = ct_series(2)
    study_uid, uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    with association(node) as assoc:
        assert assoc.send_c_store(series[0]).Status == 0x0000
        assoc.abort()
    # Five graces, waited out on purpose: an abort is not a release.
    time.sleep(1.0)
    assert _states(node, study_uid) == {uid: "receiving"}
    wait_for("the quiet time to settle it", lambda: _states(node, study_uid) == {uid: "settled"})


def test_logs_have_one_line_per_association_and_no_patient_identity(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    series = ct_series(2)
    bad = ct_dataset()
    bad.StudyInstanceUID = "not-a-uid"
    # A Patient ID that breaks the VR rules: pydicom's warning would quote it.
    mode = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        series[1].PatientID = f"{PATIENT_ID}\\{'X' * 70}"
    finally:
        pydicom_config.settings.writing_validation_mode = mode
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with association(node, calling="CT01") as assoc:
        for ds in [*series, bad]:
            assoc.send_c_store(ds)
    with association(node, called="NOTUS"):
        pass

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("scanet_node")]

    wait_for(
        "both associations to be logged",
        lambda: (
            any(line.startswith("association from CT01") for line in logged())
            and any("rejected: called AE title 'NOTUS'" in line for line in logged())
        ),
        5,
    )
    lines = logged()
    assoc_lines = [line for line in lines if line.startswith("association from CT01")]
    assert len(assoc_lines) == 1
    assert "released" in assoc_lines[0] and "2 stored, 1 failed" in assoc_lines[0]
    assert any("rejected: called AE title 'NOTUS' is not ours" in line for line in lines)
    assert any(f"study {series[0].StudyInstanceUID}: first instance" in line for line in lines)
    everything = caplog.text
    for secret in (PATIENT_ID, *PATIENT_NAME.split("^")):
        assert secret not in everything


def test_node_on_postgresql(node_factory: NodeFactory, postgres_url: str) -> None:
    node = node_factory(catalog={"url": postgres_url}, pipeline={"series_settle_seconds": 0.5})
    first, second = ct_series(30), ct_series(30)
    batches = [first, second, first]  # the same instances from two associations at once

    def send(batch: list[Dataset]) -> None:
        with association(node) as assoc:
            for ds in batch + batch[:5]:  # with duplicates
                assert assoc.send_c_store(ds).Status == 0x0000

    threads = [threading.Thread(target=send, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert node.catalog.count_instances() == 60
    wait_for(
        "every series to settle",
        lambda: {s.state for st in node.catalog.list_studies() for s in st.series} == {"settled"},
        10,
    )
    assert all(st.num_instances == 30 for st in node.catalog.list_studies())
