"""DICOM TLS with DCMTK as the peer: its storescu sends to our listener, its storescp receives
our results; certificates made by the test (tests/pki.py)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeFactory, wait_for
from dicom_samples import ct_dataset, ct_series, write_files
from node_config import make_settings
from peers import DCMTK_ENV, dcmtk, free_port, storescu
from pki import listener_tls
from pydicom.uid import generate_uid

from scanet_node.catalog.jobs import DeliveryInfo, JobSpec
from scanet_node.config import Destination
from scanet_node.pipeline.worker import Worker

pytestmark = pytest.mark.dcmtk


def test_dcmtk_storescu_over_mutual_tls(
    node_factory: NodeFactory, pki: Path, tmp_path: Path
) -> None:
    node = node_factory(security=listener_tls(pki))
    port = node.listener.address[1]
    files = write_files(ct_series(3), tmp_path / "in")
    trust_node = ("+cf", str(pki / "ca.crt"))

    client = ("+tls", str(pki / "client.key"), str(pki / "client.crt"), "-pw")
    rogue = ("+tls", str(pki / "rogue.key"), str(pki / "rogue.crt"), "-pw")
    storescu(port, files, *client, *trust_node)
    assert node.catalog.count_instances() == 3

    refused = {
        "no client certificate": storescu(port, files[:1], "+tla", *trust_node, check=False),
        "client certificate not from our CA": storescu(
            port, files[:1], *rogue, *trust_node, check=False
        ),
        "plain DICOM on the TLS port": storescu(port, files[:1], check=False),
        "storescu does not trust the node": storescu(port, files[:1], *client, check=False),
    }
    for case, result in refused.items():
        assert result.returncode != 0, case
    assert node.catalog.count_instances() == 3


@pytest.fixture
def tls_storescp(pki: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK's storescp over TLS, asking for a client certificate signed by the test CA."""
    port, out, log = free_port(), tmp_path / "storescp", tmp_path / "storescp.log"
    out.mkdir()
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [
                *(dcmtk("storescp"), "+tls", str(pki / "node.key"), str(pki / "node.crt"), "-pw"),
                *("+cf", str(pki / "ca.crt"), "-aet", "PACS", "-od", str(out), str(port)),
            ],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_for(
        "storescp to listen",
        listening,
        20,
        log.read_text,
        stop_if=lambda: process.poll() is not None,
    )
    yield port, out
    process.terminate()
    process.wait(10)


def _deliver(tmp_path: Path, destination: Destination) -> DeliveryInfo:
    """One finished job whose results (one CT instance) go to ``destination``, sent once."""
    settings = make_settings(tmp_path / f"node-{generate_uid()[-8:]}").model_copy(
        update={"destinations": [destination]}
    )
    results = tmp_path / f"results-{generate_uid()[-8:]}"
    results.mkdir()
    ct_dataset().save_as(results / "result.dcm", enforce_file_format=True)
    worker = Worker(settings)
    try:
        study = generate_uid()
        job = worker.queue.create_job(
            JobSpec(study, "k", "ncct", "cta", signature="ncct=a:1;cta=b:1")
        )
        assert job is not None and worker.queue.claim_job(worker.owner, 60) is not None
        assert worker.queue.finish_job(
            job.id,
            worker.owner,
            outcome="analysed",
            reason=None,
            probability=0.5,
            positive=True,
            model="test",
            sr_sop_instance_uid=None,
            results_dir=str(results),
            timings={},
            destinations=settings.destinations,
        )
        delivery = worker.queue.claim_delivery(60)
        assert delivery is not None
        return worker.deliver(delivery)
    finally:
        worker.close()


def test_results_sent_over_mutual_tls_to_dcmtk(
    tls_storescp: tuple[int, Path], pki: Path, tmp_path: Path
) -> None:
    port, received = tls_storescp
    destination = {
        "name": "pacs",
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": port,
        "tls": True,
        "tls_ca": pki / "ca.crt",
        "tls_cert": pki / "client.crt",
        "tls_key": pki / "client.key",
        "tls_server_name": "localhost",  # the certificate names localhost, not 127.0.0.1
    }
    sent = _deliver(tmp_path, Destination(**destination))
    assert sent.status == "sent", sent.last_detail
    assert len(list(received.iterdir())) == 1

    wrong_name = _deliver(
        tmp_path, Destination(**{**destination, "tls_server_name": "pacs.invalid"})
    )
    assert wrong_name.status != "sent"
    assert "certificate" in (wrong_name.last_detail or "").lower()

    no_client_cert = {k: v for k, v in destination.items() if k not in ("tls_cert", "tls_key")}
    refused = _deliver(tmp_path, Destination(**no_client_cert))
    assert refused.status != "sent"
    assert len(list(received.iterdir())) == 1
