"""The admin page, /healthz and /metrics of a real node, fetched over 127.0.0.1 with urllib.

The node receives real C-STOREs (pynetdicom SCU) and classifies the series itself; jobs,
deliveries and attempts are written through the real JobQueue API, as a worker writes them,
with PNG files in their results folders. The same content test runs on SQLite and on a real
PostgreSQL server.
"""

from __future__ import annotations

import html
import logging
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NodeFactory, wait_for
from dicom_samples import PATIENT_ID, PATIENT_NAME, ct_series, iter_spool
from monitoring_samples import analysed_studies
from node_config import make_settings
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from scu import association

from scanet_node.catalog.jobs import AttemptInfo, JobQueue, JobSpec
from scanet_node.catalog.models import PurgeAudit
from scanet_node.catalog.store import utcnow
from scanet_node.config import Destination
from scanet_node.errors import ConfigError
from scanet_node.service import Node

TOKEN = "admin-token-0123456789abcdef"
SECRETS = (PATIENT_ID, *PATIENT_NAME.split("^"))


@dataclass
class Fetched:
    status: int
    headers: Any
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def fetch(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Fetched:
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310
            return Fetched(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return Fetched(exc.code, exc.headers, exc.read())


def write_png(path: Path, colours: list[tuple[int, int, int]]) -> None:
    """A PNG of solid vertical bands, one per colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (60 * len(colours), 120))
    for n, colour in enumerate(colours):
        image.paste(colour, (60 * n, 0, 60 * (n + 1), 120))
    image.save(path)


def metrics(url: str, **headers: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The samples of /metrics by sample name, then by sorted labels."""
    got = fetch(url + "metrics", headers=headers)
    assert got.status == 200, got.text
    assert got.headers["Content-Type"].startswith("text/plain; version=")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(got.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@dataclass
class Content:
    node: Node
    url: str
    study_uid: str
    series_uid: str
    sent: int
    analysed_job: int
    failed_job: int
    no_png_job: int
    results: Path


def populate(node: Node, tmp_path: Path) -> Content:
    """Real C-STOREs, a rejected association, and three jobs written as a worker writes them."""
    series = ct_series(3, description="Head 5mm")
    study_uid, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    with association(node, calling="CT01") as assoc:
        assert assoc.is_established
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0
    with association(node, calling="CT01") as assoc:  # a resend: same instance again
        assert assoc.send_c_store(series[0]).Status == 0
    with association(node, calling="INTRUDER") as assoc:
        assert assoc.is_rejected
    service = node.listener.service
    wait_for("the three associations", lambda: len(service.recent_associations()) == 3)

    # The scheduler settles and classifies the series by itself (settle 0.3 s); the resend
    # may have re-opened it after its first settling.
    def settled_with_role() -> bool:
        series = node.catalog.get_study(study_uid).series[0]  # type: ignore[union-attr]
        return series.state == "settled" and bool(series.role)

    wait_for("the series settled, with its role", settled_with_role)

    queue = JobQueue(node.catalog)
    pacs = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=11999)
    archive = Destination(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=11998)

    def run(spec: JobSpec) -> int:
        job = queue.create_job(spec)
        assert job is not None
        claimed = queue.claim_job("host-a:4242", 60)
        assert claimed is not None and claimed.id == job.id
        return job.id

    received = utcnow() - timedelta(seconds=100)
    analysed = run(
        JobSpec(study_uid, "pk", series_uid, generate_uid(), "sig-1", inputs_received_at=received)
    )
    results = tmp_path / "results" / f"job-{analysed}"
    write_png(results / "overlay.png", [(230, 20, 20), (20, 20, 230), (250, 230, 20)])
    write_png(results / "summary.png", [(20, 160, 60), (240, 240, 240)])
    assert queue.finish_job(
        analysed,
        "host-a:4242",
        outcome="analysed",
        reason=None,
        probability=0.8125,
        positive=True,
        model="SCANet 0.1.0 (test) 0123456789ab",
        sr_sop_instance_uid=generate_uid(),
        results_dir=str(results),
        timings={"load": 1.25, "register": 4.5, "infer": 0.75},
        destinations=[pacs],
    )
    delivery = queue.deliveries(job_id=analysed)[0]
    queue.record_attempt(
        delivery.id,
        AttemptInfo(utcnow(), 0.42, False, False, "busy", "A-ASSOCIATE-RJ transient: busy", 0),
        next_attempt_at=utcnow(),
    )
    queue.record_attempt(
        delivery.id,
        AttemptInfo(utcnow(), 1.5, True, False, "sent", "3 instances stored by PACS", 3),
        next_attempt_at=None,
    )

    failed = run(JobSpec(generate_uid(), "pk2", generate_uid(), generate_uid(), "sig-2"))
    assert queue.fail_job(failed, "host-a:4242", "RuntimeError: registration diverged in ANTs")

    no_png = run(JobSpec(generate_uid(), "pk3", generate_uid(), None, "sig-3", missing="CTA"))
    assert queue.finish_job(
        no_png,
        "host-a:4242",
        outcome="not_analysable",
        reason="CTA missing: no CTA within the pairing window",
        probability=None,
        positive=None,
        model=None,
        sr_sop_instance_uid=generate_uid(),
        results_dir=str(tmp_path / "results" / f"job-{no_png}"),
        timings={"build": 0.5},
        destinations=[archive],
    )
    archive_delivery = queue.deliveries(job_id=no_png)[0]
    queue.record_attempt(
        archive_delivery.id,
        AttemptInfo(utcnow(), 0.08, False, True, "refused", "SOP class not supported 0x0122", 0),
        next_attempt_at=None,
    )
    assert node.admin is not None
    return Content(
        node,
        node.admin.url,
        study_uid,
        series_uid,
        3,
        analysed,
        failed,
        no_png,
        tmp_path / "results",
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def content(request: pytest.FixtureRequest, node_factory: NodeFactory, tmp_path: Path) -> Content:
    catalog = {}
    if request.param == "postgresql":
        catalog = {"url": request.getfixturevalue("postgres_url")}
    node = node_factory(
        admin={"enabled": True, "port": 0},
        pipeline={"series_settle_seconds": 0.3},
        security={"allowed_calling_aets": ["CT01"]},
        catalog=catalog,
    )
    return populate(node, tmp_path)


def test_pages_show_the_node_studies_jobs_and_associations(content: Content) -> None:
    url = content.url
    pages = {}
    for path in (
        "",
        "studies",
        f"studies/{content.study_uid}",
        "jobs",
        f"jobs/{content.analysed_job}",
        f"jobs/{content.failed_job}",
        f"jobs/{content.no_png_job}",
        "metrics",
        "healthz",
    ):
        got = fetch(url + path)
        assert got.status == 200, (path, got.text)
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        assert got.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in got.headers["Content-Security-Policy"]
        pages[path] = got.text
        for secret in SECRETS:
            assert secret not in got.text, (path, secret)

    overview = pages[""]
    node = content.node
    assert node.settings.node.ae_title in overview
    assert f"{node.listener.address[0]}:{node.listener.address[1]}" in overview
    assert "scanet-demo.pt" in overview and "SCANet 0.1.0 (test) 0123456789ab" in overview
    assert "Busy now (job leases)</b></td><td>none" in overview  # every job has finished
    # The associations, newest first: the rejected one names its calling AE and why.
    rows = re.findall(r"<tr><td>[^<]*UTC</td>(.*?)</tr>", overview)
    assert len(rows) == 3
    assert "INTRUDER" in rows[0] and "rejected: calling AE title not allowed" in rows[0]
    assert "CT01" in rows[1] and "released" in rows[1] and "<td>1</td>" in rows[1]
    assert "CT01" in rows[2] and "<td>3</td>" in rows[2]
    assert "127.0.0.1:" in rows[2]
    assert "Accepting instances" in overview and ">yes<" in overview

    studies = pages["studies"]
    assert content.study_uid in studies and "Head 5mm" in studies
    series = node.catalog.get_study(content.study_uid).series[0]  # type: ignore[union-attr]
    assert series.role and series.role_reason
    assert f"<td>{series.role}</td>" in studies
    assert html.escape(series.role_reason) in studies
    assert "<td>settled</td>" in studies

    study = pages[f"studies/{content.study_uid}"]
    assert f'href="/jobs/{content.analysed_job}"' in study and "analysed" in study

    jobs = pages["jobs"]
    assert "RuntimeError: registration diverged in ANTs" in jobs
    assert "CTA missing: no CTA within the pairing window" in jobs
    assert "0.812 positive" in jobs
    assert "load 1.2 · register 4.5 · infer 0.8" in jobs
    assert f'href="/jobs/{content.analysed_job}/overlay.png"' in jobs
    assert f'href="/jobs/{content.no_png_job}/overlay.png"' not in jobs
    turnaround = re.search(r"<td>(\d+\.\d) s</td>", jobs)
    assert turnaround is not None and 100 <= float(turnaround.group(1)) < 130

    job = pages[f"jobs/{content.analysed_job}"]
    assert f'<img src="/jobs/{content.analysed_job}/overlay.png"' in job
    assert f'<img src="/jobs/{content.analysed_job}/summary.png"' in job
    assert "A-ASSOCIATE-RJ transient: busy" in job and "0.42" in job
    assert "3 instances stored by PACS" in job and "1.50" in job
    assert "failed, will retry" in job
    assert "PACS@127.0.0.1:11999" in job
    no_png = pages[f"jobs/{content.no_png_job}"]
    assert "SOP class not supported 0x0122" in no_png and "failed, permanent" in no_png
    assert "No images" in no_png

    overlay = fetch(url + f"jobs/{content.analysed_job}/overlay.png")
    assert overlay.headers["Content-Type"] == "image/png"
    written = content.results / f"job-{content.analysed_job}" / "overlay.png"
    assert overlay.body == written.read_bytes()
    assert fetch(url + f"jobs/{content.no_png_job}/overlay.png").status == 404
    assert fetch(url + f"jobs/{content.failed_job}/summary.png").status == 404
    assert fetch(url + "jobs/999999").status == 404
    assert fetch(url + "jobs/999999/overlay.png").status == 404
    assert fetch(url + f"jobs/{content.analysed_job}/../../../etc/passwd").status == 404
    assert fetch(url + "studies/1.2.3.4").status == 404
    assert fetch(url + "studies/not-a-uid").status == 404


def test_metrics_count_what_was_received_and_done(content: Content) -> None:
    node = content.node
    got = metrics(content.url)
    received = got["scanet_instances_received_total"]
    assert received[(("outcome", "stored"), ("status", "0x0000"))] == content.sent
    assert received[(("outcome", "duplicate"), ("status", "0x0000"))] == 1
    associations = got["scanet_associations_total"]
    assert associations[(("outcome", "released"),)] == 2
    assert associations[(("outcome", "rejected"),)] == 1
    studies = got["scanet_studies_analysed_total"]
    assert studies[(("outcome", "analysed"),)] == 1
    assert studies[(("outcome", "not_analysable"),)] == 1
    assert got["scanet_job_failures_total"] == {(("reason", "RuntimeError"),): 1}
    buckets = got["scanet_turnaround_seconds_bucket"]
    assert buckets[(("le", "90.0"),)] == 0 and buckets[(("le", "120.0"),)] == 1
    assert buckets[(("le", "+Inf"),)] == 1
    assert got["scanet_turnaround_seconds_count"][()] == 1
    assert 100 <= got["scanet_turnaround_seconds_sum"][()] < 130
    depth = got["scanet_queue_depth"]
    assert depth[(("queue", "jobs"),)] == 0 and depth[(("queue", "deliveries"),)] == 0
    spool = sum(p.stat().st_size for p in iter_spool(node.spool.root))
    assert got["scanet_spool_bytes"][()] == spool > 0
    assert got["scanet_disk_free_bytes"][()] > 0

    # A study purged by retention leaves an audit row; the totals keep counting it.
    with node.catalog.write() as session:
        now = utcnow()
        for outcome in ("analysed", "failed"):
            session.add(
                PurgeAudit(
                    purged_at=now,
                    rule="age",
                    first_received_at=now,
                    last_received_at=now,
                    num_series=2,
                    num_instances=10,
                    bytes_freed=1000,
                    jobs=1,
                    outcome=outcome,
                    deliveries_sent=1,
                    deliveries_failed=0,
                )
            )
    after = metrics(content.url)
    assert after["scanet_studies_analysed_total"][(("outcome", "analysed"),)] == 2
    assert after["scanet_job_failures_total"][(("reason", "(purged)"),)] == 1


def test_token_is_required_everywhere_but_healthz(
    node_factory: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="scanet_node.admin")
    node = node_factory(admin={"enabled": True, "port": 0, "token": TOKEN})
    assert node.admin is not None
    url = node.admin.url
    for path in ("", "studies", "jobs", "metrics", "jobs/1/overlay.png"):
        refused = fetch(url + path)
        assert refused.status == 401, path
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert fetch(url + path + "?token=wrong-token-0123456789").status == 401
        assert fetch(url + path, headers={"Authorization": "Bearer nope"}).status == 401
    assert fetch(url + "healthz").status == 200
    bearer = fetch(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status == 200 and 'href="/jobs"' in bearer.text
    assert metrics(url, Authorization=f"Bearer {TOKEN}")["scanet_queue_depth"]
    # In a browser: ?token=, and every link of the page carries it.
    page = fetch(url + f"?token={TOKEN}")
    assert page.status == 200
    assert f'href="/jobs?token={TOKEN}"' in page.text
    assert f'href="/studies?token={TOKEN}"' in page.text
    assert TOKEN not in caplog.text

    # Off loopback a token is required: a configuration error naming the key.
    with pytest.raises(ConfigError) as error:
        make_settings(tmp_path / "x", admin={"enabled": True, "host": "0.0.0.0"})
    assert "[admin] token: required when host is not a loopback address" in str(error.value)
    # A token too short is refused, and never repeated in the message.
    with pytest.raises(ConfigError) as error:
        make_settings(tmp_path / "x", admin={"host": "0.0.0.0", "token": "s3cret-but-short"[:12]})
    assert "[admin] token: must be at least 16 characters" in str(error.value)
    assert "s3cret" not in str(error.value)


def test_read_only_and_strict_headers(node_factory: NodeFactory) -> None:
    node = node_factory(admin={"enabled": True, "port": 0})
    assert node.admin is not None
    url = node.admin.url
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        got = fetch(url, method=method)
        assert got.status == 405, method
        assert got.headers["Allow"] == "GET, HEAD"
    head = fetch(url + "jobs", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) > 0
    assert "frame-ancestors 'none'" in head.headers["Content-Security-Policy"]
    assert fetch(url + "nowhere").status == 404


def test_healthz_is_503_when_the_disk_guard_stops_acceptance(node_factory: NodeFactory) -> None:
    node = node_factory(admin={"enabled": True, "port": 0}, node={"min_free_disk_mb": 10**9})
    assert node.admin is not None
    got = fetch(node.admin.url + "healthz")
    assert got.status == 503
    assert got.headers["Content-Type"] == "application/json"
    assert '"accepting_instances": false' in got.text
    assert "min_free_disk_mb" in got.text
    # The instance is indeed refused, and the page says why.
    series = ct_series(1)
    with association(node) as assoc:
        assert assoc.send_c_store(series[0]).Status == 0xA700
    assert "NO: too little free space" in fetch(node.admin.url).text
    received = metrics(node.admin.url)["scanet_instances_received_total"]
    assert received[(("outcome", "refused"), ("status", "0xA700"))] == 1


def test_healthz_is_503_when_the_catalog_is_gone(
    node_factory: NodeFactory, postgres_server: str, postgres_url: str
) -> None:
    from sqlalchemy import create_engine, text

    node = node_factory(admin={"enabled": True, "port": 0}, catalog={"url": postgres_url})
    assert node.admin is not None
    assert fetch(node.admin.url + "healthz").status == 200
    name = postgres_url.rsplit("/", 1)[1]
    engine = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    engine.dispose()
    got = fetch(node.admin.url + "healthz")
    assert got.status == 503 and "catalog unreachable" in got.text
    assert fetch(node.admin.url + "jobs").status == 503


def test_healthz_is_503_when_the_data_folder_is_gone(node_factory: NodeFactory) -> None:
    """An administrator removes the data folder under a running node: the health check says
    so (503) instead of dropping the connection."""
    import shutil

    node = node_factory(admin={"enabled": True, "port": 0})
    assert node.admin is not None
    shutil.rmtree(node.settings.node.data_dir)
    got = fetch(node.admin.url + "healthz")
    assert got.status == 503 and "spool folder unreadable" in got.text
    assert '"accepting_instances": false' in got.text


def test_serve_prints_the_admin_url_and_serves_it(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCANET__NODE__MIN_FREE_DISK_MB": "0",
        "SCANET__PIPELINE__WORKERS": "0",
        "SCANET__ADMIN__PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanet_node", "serve", "--port", "0"],
        cwd=tmp_path,  # no ./config.toml; data in ./scanet-data
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(7)]
        line = next((b for b in banner if "admin page:" in b), "")
        match = re.search(r"admin page: (http://127\.0\.0\.1:\d+/)$", line.strip())
        assert match, banner
        health = fetch(match.group(1) + "healthz")
        assert health.status == 200 and '"status": "ok"' in health.text
        assert "scanet-node SCANET" in fetch(match.group(1)).text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "admin page on http://127.0.0.1:" in err


def test_the_performance_page_plots_and_gauges_report_the_local_outcomes(
    node_factory: NodeFactory,
) -> None:
    from scanet_node.model import metrics as mt

    node = node_factory(admin={"enabled": True, "port": 0})
    assert node.admin is not None
    rng = np.random.default_rng(8)
    probabilities = [round(float(p), 4) for p in rng.uniform(0.05, 0.95, 40)]
    grades = ["3" if rng.random() < p else "2a" for p in probabilities]
    analysed_studies(node.catalog, probabilities, grades)
    auc = mt.roc_auc(np.array(probabilities), np.array([g == "3" for g in grades]))

    page = fetch(node.admin.url + "performance")
    assert page.status == 200
    assert "Performance here, against recorded outcomes" in page.text
    assert f"{auc:.3f} (" in page.text  # with its interval
    assert "Studies with an outcome</td><td>40<" in page.text
    for name in ("roc.png", "reliability.png"):
        assert f'src="/performance/{name}"' in page.text
        image = fetch(node.admin.url + f"performance/{name}")
        assert image.status == 200 and image.headers["Content-Type"] == "image/png"
        assert image.body[:8] == b"\x89PNG\r\n\x1a\n"
    figures = metrics(node.admin.url)
    assert figures["scanet_monitoring_roc_auc"][(("source", "local"),)] == pytest.approx(auc)
    assert figures["scanet_monitoring_outcomes"][(("source", "local"),)] == 40
    health = fetch(node.admin.url + "healthz")
    assert health.status == 200 and '"warnings": [' in health.text
