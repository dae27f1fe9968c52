"""The listener's security: DICOM TLS (certificates made by the test, a pynetdicom TLS peer)
and calling AE titles bound to host addresses."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from conftest import NodeFactory, wait_for
from dicom_samples import ct_dataset
from pki import listener_tls
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE


def _client_context(pki: Path, cert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if cert:
        context.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    return context


def _store(
    port: int,
    context: ssl.SSLContext | None,
    *,
    calling: str = "CT01",
    source: str = "127.0.0.1",
    index: int = 0,
) -> int | None:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    tls = (context, "localhost") if context else None
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="SCANET", tls_args=tls, bind_address=(source, 0)
    )
    if not assoc.is_established:
        return None
    status = assoc.send_c_store(ct_dataset(index=index))
    assoc.release()
    return int(status.Status)


def test_tls_and_mutual_tls(node_factory: NodeFactory, pki: Path) -> None:
    node = node_factory(security=listener_tls(pki))
    port = node.listener.address[1]
    assert _store(port, _client_context(pki, "client")) == 0x0000
    assert _store(port, _client_context(pki, None)) is None  # no client certificate
    assert _store(port, _client_context(pki, "rogue")) is None  # not signed by our CA
    assert _store(port, None) is None  # plain DICOM on a TLS port
    assert node.catalog.count_instances() == 1


def test_tls_without_client_certificates(node_factory: NodeFactory, pki: Path) -> None:
    node = node_factory(security=listener_tls(pki, mutual=False))
    assert _store(node.listener.address[1], _client_context(pki, None)) == 0x0000


def test_calling_ae_title_bound_to_its_hosts(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Linux routes all of 127.0.0.0/8 to loopback: 127.0.0.2 is "another machine" here.
    node = node_factory(security={"ae_hosts": {"CT01": ["127.0.0.2"], "PACS": ["localhost"]}})
    port = node.listener.address[1]
    assert _store(port, None, calling="CT01", source="127.0.0.2", index=1) == 0x0000
    with caplog.at_level("WARNING", logger="scanet_node.ingest.handlers"):
        assert _store(port, None, calling="CT01", source="127.0.0.1", index=2) is None
    assert "calling AE title CT01 is not allowed from this address" in caplog.text
    assert _store(port, None, calling="PACS", source="127.0.0.1", index=3) == 0x0000
    assert _store(port, None, calling="PACS", source="127.0.0.2", index=4) is None
    # A calling AE title that is not bound gets in from anywhere (allowed_calling_aets is empty).
    assert _store(port, None, calling="CT02", source="127.0.0.2", index=5) == 0x0000
    assert node.catalog.count_instances() == 3
    # No rejected association lingers (the last one's thread ends just after its release).
    wait_for("no association left", lambda: node.listener.active_associations() == 0, 5)


def test_unresolvable_bound_host_stops_the_start(tmp_path: Path) -> None:
    from node_config import make_settings

    from scanet_node.errors import ListenerError
    from scanet_node.service import Node

    settings = make_settings(tmp_path, security={"ae_hosts": {"CT01": ["no-such-host.invalid"]}})
    with pytest.raises(ListenerError, match=r"\[security.ae_hosts\] CT01: cannot resolve"):
        Node(settings)
