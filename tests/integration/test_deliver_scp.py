"""``results.deliver.send`` against pynetdicom SCPs on 127.0.0.1 that misbehave on purpose."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_samples import ct_dataset, write_files
from peers import free_port
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt

from scanet_node.results.deliver import Peer, SendOutcome, send

SCP_AET = "PACS"
OUR_AET = "SCANET"


class Scp:
    """A Storage SCP on a free port that records what it got and answers ``status``."""

    def __init__(
        self,
        contexts: list[tuple[str, list[str]]],
        *,
        status: int | Callable[[Any], int] = 0x0000,
        require_calling_aet: list[str] | None = None,
        maximum_associations: int = 10,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.received: dict[str, str] = {}  # SOP Instance UID -> transfer syntax of the context
        self.status = status
        ae = AE(ae_title=SCP_AET)
        ae.require_called_aet = True
        ae.maximum_associations = maximum_associations
        if require_calling_aet:
            ae.require_calling_aet = require_calling_aet
        for sop_class, syntaxes in contexts:
            ae.add_supported_context(sop_class, syntaxes)
        server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            ssl_context=ssl_context,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )
        assert server is not None
        self.server = server
        self.peer = Peer(SCP_AET, "127.0.0.1", self.server.server_address[1], name="TESTPACS")

    def _store(self, event: Any) -> int:
        status = self.status(event) if callable(self.status) else self.status
        if status in (0x0000, 0xB000):
            ds = event.dataset
            self.received[str(ds.SOPInstanceUID)] = str(event.context.transfer_syntax)
        return status


@pytest.fixture
def scp_factory() -> Iterator[Callable[..., Scp]]:
    started: list[Scp] = []

    def start(*args: Any, **kwargs: Any) -> Scp:
        scp = Scp(*args, **kwargs)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.server.shutdown()


CT_ONLY = [(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]


def sr_dataset() -> Dataset:
    """A stand-in SR instance: the SCP never looks past its SOP class."""
    ds = Dataset()
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def do_send(datasets: list[Any], peer: Peer, **kwargs: Any) -> SendOutcome:
    return send(datasets, peer, calling_aet=OUR_AET, timeout=kwargs.pop("timeout", 5.0), **kwargs)


def test_stores_datasets_and_files(scp_factory: Callable[..., Scp], tmp_path: Path) -> None:
    scp = scp_factory(CT_ONLY)
    first, second = ct_dataset(), ct_dataset(index=1)
    [path] = write_files([second], tmp_path)
    outcome = do_send([first, path], scp.peer)
    assert outcome.ok and outcome.status == "success" and not outcome.permanent
    assert outcome.sent == 2
    assert outcome.statuses == {first.SOPInstanceUID: 0, second.SOPInstanceUID: 0}
    assert set(scp.received) == {first.SOPInstanceUID, second.SOPInstanceUID}


def test_only_implicit_accepted_reencodes(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory([(CTImageStorage, [ImplicitVRLittleEndian])])
    ds = ct_dataset()
    assert do_send([ds], scp.peer).ok
    assert scp.received == {ds.SOPInstanceUID: ImplicitVRLittleEndian}


def test_compressed_is_decompressed_for_an_uncompressed_peer(
    scp_factory: Callable[..., Scp],
) -> None:
    scp = scp_factory(CT_ONLY)
    ds = ct_dataset()
    ds.compress(RLELossless)
    outcome = do_send([ds], scp.peer)
    assert outcome.ok, outcome.detail
    assert scp.received[ds.SOPInstanceUID] in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert ds.file_meta.TransferSyntaxUID == RLELossless  # the caller's dataset is untouched


def test_compressed_goes_unchanged_when_accepted(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory([(CTImageStorage, [RLELossless, ExplicitVRLittleEndian])])
    ds = ct_dataset()
    ds.compress(RLELossless)
    assert do_send([ds], scp.peer).ok
    assert scp.received == {ds.SOPInstanceUID: RLELossless}


def test_sr_to_ct_only_peer_is_permanent_unsupported(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory(CT_ONLY)
    outcome = do_send([sr_dataset()], scp.peer)
    assert not outcome.ok and outcome.permanent
    assert outcome.status == "unsupported"
    assert "Comprehensive 3D SR Storage" in outcome.detail
    assert outcome.sent == 0 and not scp.received


def test_mixed_send_stores_what_is_accepted(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory(CT_ONLY)
    ct, sr = ct_dataset(), sr_dataset()
    outcome = do_send([sr, ct], scp.peer)
    assert not outcome.ok and outcome.permanent and outcome.status == "unsupported"
    assert "SOP class Comprehensive 3D SR Storage not accepted by TESTPACS" in outcome.detail
    assert outcome.sent == 1 and outcome.statuses == {ct.SOPInstanceUID: 0}
    assert set(scp.received) == {ct.SOPInstanceUID}


def test_out_of_resources_is_transient(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory(CT_ONLY, status=0xA700)
    ds = ct_dataset()
    outcome = do_send([ds], scp.peer)
    assert not outcome.ok and not outcome.permanent
    assert outcome.status == "refused" and "0xA700" in outcome.detail
    assert outcome.statuses == {ds.SOPInstanceUID: 0xA700} and outcome.sent == 0


def test_not_authorised_is_permanent(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory(CT_ONLY, status=0x0124)
    outcome = do_send([ct_dataset(), ct_dataset(index=1)], scp.peer)
    assert not outcome.ok and outcome.permanent and outcome.status == "refused"
    assert list(outcome.statuses.values()) == [0x0124, 0x0124]


def test_warning_counts_as_stored(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory(CT_ONLY, status=0xB000)
    assert do_send([ct_dataset()], scp.peer).sent == 1


def test_transient_and_permanent_mix_is_retried(scp_factory: Callable[..., Scp]) -> None:
    answers = iter([0x0124, 0xA700])
    scp = scp_factory(CT_ONLY, status=lambda event: next(answers))
    outcome = do_send([ct_dataset(), ct_dataset(index=1)], scp.peer)
    assert not outcome.ok and not outcome.permanent and outcome.status == "refused"
    assert "0xA700" in outcome.detail


def test_unknown_calling_aet_is_rejected_permanently(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory(CT_ONLY, require_calling_aet=["MODALITY"])
    outcome = do_send([ct_dataset()], scp.peer)
    assert not outcome.ok and outcome.permanent and outcome.status == "rejected"
    assert "calling AE title not recognised" in outcome.detail
    assert not scp.received


def test_wrong_called_aet_is_rejected_permanently(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory(CT_ONLY)
    outcome = do_send([ct_dataset()], Peer("NOTPACS", "127.0.0.1", scp.peer.port))
    assert outcome.status == "rejected" and outcome.permanent
    assert outcome.detail.startswith("association rejected permanently by NOTPACS")
    assert "called AE title not recognised" in outcome.detail


def test_busy_peer_is_rejected_transiently(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory(CT_ONLY, maximum_associations=1)
    other = AE(ae_title="OTHER")
    other.add_requested_context(CTImageStorage)
    holder = other.associate("127.0.0.1", scp.peer.port, ae_title=SCP_AET)
    assert holder.is_established
    try:
        outcome = do_send([ct_dataset()], scp.peer)
    finally:
        holder.release()
    assert outcome.status == "rejected" and not outcome.permanent
    assert "rejected transiently" in outcome.detail


def test_nobody_listening_is_unreachable() -> None:
    port = free_port()
    outcome = do_send([ct_dataset()], Peer("PACS", "127.0.0.1", port, name="ARCHIVE"))
    assert not outcome.ok and not outcome.permanent and outcome.status == "unreachable"
    assert f"ARCHIVE at 127.0.0.1:{port} refused the connection" in outcome.detail


def test_peer_that_never_answers_the_association_times_out() -> None:
    with socket.socket() as sock:  # the kernel completes the TCP handshake; nobody speaks
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        peer = Peer("PACS", "127.0.0.1", sock.getsockname()[1])
        outcome = do_send([ct_dataset()], peer, timeout=0.5)
    assert outcome.status == "timeout" and not outcome.permanent
    assert "did not answer the association request" in outcome.detail


def test_unknown_host_is_unreachable() -> None:
    outcome = do_send([ct_dataset()], Peer("PACS", "no-such-host.invalid", 104))
    assert outcome.status == "unreachable" and not outcome.permanent


def test_silent_peer_times_out(scp_factory: Callable[..., Scp]) -> None:
    release = threading.Event()

    def stall(event: Any) -> int:
        release.wait(5)
        return 0x0000

    scp = scp_factory(CT_ONLY, status=stall)
    started = time.monotonic()
    outcome = do_send([ct_dataset(), ct_dataset(index=1)], scp.peer, timeout=0.5)
    release.set()
    assert time.monotonic() - started < 4
    assert outcome.status == "timeout" and not outcome.permanent
    assert outcome.sent == 0 and outcome.statuses == {}


def test_abort_during_store_is_transient(scp_factory: Callable[..., Scp]) -> None:
    def abort(event: Any) -> int:
        event.assoc.abort()
        return 0x0000

    scp = scp_factory(CT_ONLY, status=abort)
    outcome = do_send([ct_dataset(), ct_dataset(index=1)], scp.peer)
    assert outcome.status == "aborted" and not outcome.permanent and outcome.sent == 0


def test_invalid_dataset_does_not_stop_the_rest(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory(CT_ONLY)
    broken = ct_dataset()
    del broken.SOPClassUID
    good = ct_dataset(index=1)
    outcome = do_send([broken, good], scp.peer)
    assert outcome.status == "invalid" and outcome.permanent
    assert "no SOPClassUID" in outcome.detail
    assert set(scp.received) == {good.SOPInstanceUID}


def test_log_line_has_no_patient_identifiers(
    scp_factory: Callable[..., Scp], caplog: pytest.LogCaptureFixture
) -> None:
    scp = scp_factory(CT_ONLY)
    ds = ct_dataset()
    with caplog.at_level("INFO", logger="scanet_node.results.deliver"):
        do_send([ds], scp.peer)
    lines = [r.getMessage() for r in caplog.records if r.name == "scanet_node.results.deliver"]
    assert len(lines) == 1 and "1/1 stored" in lines[0]
    assert str(ds.PatientName) not in lines[0] and ds.PatientID not in lines[0]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: ``(cert, key)`` PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "testpacs")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "pacs.crt", folder / "pacs.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls(scp_factory: Callable[..., Scp], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    scp = scp_factory(CT_ONLY, ssl_context=server_context)
    ds = ct_dataset()

    trusting = ssl.create_default_context(cafile=str(cert))
    assert do_send([ds], scp.peer, ssl_context=trusting).ok
    assert set(scp.received) == {ds.SOPInstanceUID}

    untrusting = ssl.create_default_context()
    outcome = do_send([ct_dataset(index=1)], scp.peer, ssl_context=untrusting)
    assert outcome.status == "unreachable" and not outcome.permanent
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.detail
