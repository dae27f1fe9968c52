"""DICOM TLS on the listener, with certificates made by the test and a pynetdicom TLS peer."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from conftest import NodeFactory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dicom_samples import ct_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    folder: Path, stem: str, cn: str, ca: tuple[object, x509.Name] | None, is_ca: bool = False
) -> tuple[object, x509.Name]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    signer_key, issuer = ca if ca else (key, _name(cn))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = builder.sign(signer_key, hashes.SHA256())  # type: ignore[arg-type]
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key, _name(cn)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = _issue(tmp_path, "ca", "Test CA", None, is_ca=True)
    _issue(tmp_path, "node", "localhost", ca)
    _issue(tmp_path, "client", "CT01", ca)
    _issue(tmp_path, "rogue", "rogue", None)
    return tmp_path


def _client_context(pki: Path, cert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if cert:
        context.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    return context


def _store(port: int, context: ssl.SSLContext | None) -> int | None:
    ae = AE(ae_title="CT01")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    tls = (context, "localhost") if context else None
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANET", tls_args=tls)
    if not assoc.is_established:
        return None
    status = assoc.send_c_store(ct_dataset())
    assoc.release()
    return int(status.Status)


def test_tls_and_mutual_tls(node_factory: NodeFactory, pki: Path) -> None:
    node = node_factory(
        security={
            "tls_cert": str(pki / "node.crt"),
            "tls_key": str(pki / "node.key"),
            "tls_ca": str(pki / "ca.crt"),
        }
    )
    port = node.listener.address[1]
    assert _store(port, _client_context(pki, "client")) == 0x0000
    assert _store(port, _client_context(pki, None)) is None  # no client certificate
    assert _store(port, _client_context(pki, "rogue")) is None  # not signed by our CA
    assert _store(port, None) is None  # plain DICOM on a TLS port
    assert node.catalog.count_instances() == 1


def test_tls_without_client_certificates(node_factory: NodeFactory, pki: Path) -> None:
    node = node_factory(
        security={"tls_cert": str(pki / "node.crt"), "tls_key": str(pki / "node.key")}
    )
    assert _store(node.listener.address[1], _client_context(pki, None)) == 0x0000
