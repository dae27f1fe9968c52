"""Certificates made by the tests: a CA, the node's and a client's certificate, a rogue one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(
    folder: Path, stem: str, cn: str, ca: tuple[object, x509.Name] | None, is_ca: bool = False
) -> tuple[object, x509.Name]:
    """Write ``stem.crt`` and ``stem.key`` (PEM, EC P-256) signed by ``ca`` (self-signed: None)."""
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


def make_pki(folder: Path) -> Path:
    """ca, node (CN and SAN localhost), client (CN CT01, signed by ca) and a self-signed rogue."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = issue(folder, "ca", "Test CA", None, is_ca=True)
    issue(folder, "node", "localhost", ca)
    issue(folder, "client", "CT01", ca)
    issue(folder, "rogue", "rogue", None)
    return folder


def listener_tls(pki: Path, *, mutual: bool = True) -> dict[str, str]:
    """``[security]`` for a node that speaks TLS with the ``node`` certificate; ``mutual``: it
    asks for a client certificate signed by the test CA."""
    security = {"tls_cert": str(pki / "node.crt"), "tls_key": str(pki / "node.key")}
    if mutual:
        security["tls_ca"] = str(pki / "ca.crt")
    return security
