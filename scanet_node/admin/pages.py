"""The admin pages, ``/healthz`` and ``/metrics``: a request path in, a :class:`Response` out.

Pages: ``/`` (node, model, worker processes, destinations, disk, counts, last associations),
``/studies`` and ``/studies/<uid>``, ``/jobs`` and ``/jobs/<id>`` (deliveries and every
attempt), ``/jobs/<id>/overlay.png`` and ``summary.png`` (the PNGs the worker wrote; the path
comes from the job's row, never from the URL). Everything comes from a
:class:`~scanet_node.admin.view.NodeView`. Patient names and IDs are never shown: the catalog
does not hold them and no DICOM file is read here. No sockets and no authentication here
(``admin/server.py``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from scanet_node.admin.metrics import (
    CONTENT_TYPE,
    MonitoringCollector,
    NodeCollector,
    ProcessFigures,
    build_registry,
    exposition,
)
from scanet_node.admin.render import (
    Html,
    escape,
    fields,
    join,
    link,
    muted,
    page,
    render,
    seconds,
    size,
    span,
    table,
    when,
)
from scanet_node.catalog.models import DeliveryStatus, JobStatus
from scanet_node.config import DEFAULT_CHECKPOINT
from scanet_node.dicom_status import Status, label
from scanet_node.pipeline.retention import tree_bytes
from scanet_node.results.files import OVERLAY_PNG, SUMMARY_PNG

if TYPE_CHECKING:
    from scanet_node.admin.view import NodeView
    from scanet_node.catalog.jobs import DeliveryInfo, JobInfo
    from scanet_node.catalog.overview import Counts, JobRow
    from scanet_node.catalog.store import SeriesSummary
    from scanet_node.config import SecuritySettings
    from scanet_node.ingest.handlers import AssociationRecord

logger = logging.getLogger(__name__)

#: Rows on the list pages.
LIST_LIMIT = 100
#: How long the size of the results folder is reused before it is measured again.
RESULTS_SIZE_TTL_SECONDS = 60.0
_STUDY_UID = re.compile(r"^[0-9.]{1,64}$")
_JOB_PATH = re.compile(r"^/jobs/(\d{1,9})(?:/(overlay\.png|summary\.png))?$")
_IMAGES = ((OVERLAY_PNG, "Attention overlay"), (SUMMARY_PNG, "Summary"))


@dataclass
class Response:
    """One HTTP answer."""

    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """The parts of a request the pages need: the path and how links carry the token."""

    path: str
    query_token: str | None

    def href(self, path: str) -> str:
        """A link to ``path``, with ``?token=`` when this request came with one."""
        if self.query_token is None:
            return path
        return f"{path}?{urlencode({'token': self.query_token})}"


class _FolderSize:
    """The bytes under a folder, measured at most once per ``ttl`` seconds."""

    def __init__(self, folder: Path, ttl: float) -> None:
        self.folder = folder
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value = 0
        self._at = -float("inf")

    def __call__(self) -> int:
        with self._lock:
            if time.monotonic() - self._at > self.ttl:
                self._value = tree_bytes(self.folder).bytes
                self._at = time.monotonic()
            return self._value


class Pages:
    """Builds every page from a :class:`NodeView`."""

    def __init__(self, view: NodeView) -> None:
        self.view = view
        self.settings = view.settings
        self.results_bytes = _FolderSize(self.settings.results_dir, RESULTS_SIZE_TTL_SECONDS)
        self.registry = build_registry(
            NodeCollector(self._process_figures, view.overview.metric_figures),
            MonitoringCollector(view.monitoring),
        )

    def _process_figures(self) -> ProcessFigures:
        return ProcessFigures(
            instances=self.view.instance_counts(),
            associations=self.view.association_counts(),
            disk_free_bytes=self.view.disk_free_bytes(),
            min_free_bytes=self.view.min_free_bytes,
            results_bytes=self.results_bytes(),
        )

    def listener_address(self) -> str | None:
        """``host:port`` of the DICOM listener, or None when it is not running."""
        address = self.view.listener_address()
        return None if address is None else f"{address[0]}:{address[1]}"

    def route(self, request: Request) -> Response:
        """The page at ``request.path``, or 404."""
        path = request.path
        if path == "/":
            return self.overview_page(request)
        if path == "/metrics":
            return Response(HTTPStatus.OK, exposition(self.registry), content_type=CONTENT_TYPE)
        if path == "/studies":
            return self.studies_page(request)
        if path.startswith("/studies/") and _STUDY_UID.match(path[len("/studies/") :]):
            return self.study_page(request, path[len("/studies/") :])
        if path == "/jobs":
            return self.jobs_page(request)
        if path == "/performance":
            return self.performance_page(request)
        if path in ("/performance/roc.png", "/performance/reliability.png"):
            return self.performance_png(path.rsplit("/", 1)[1])
        match = _JOB_PATH.match(path)
        if match:
            job_id = int(match.group(1))
            if match.group(2):
                return self.job_png(job_id, match.group(2))
            return self.job_page(request, job_id)
        return not_found(request)

    # -- /healthz ---------------------------------------------------------------------------

    def healthz(self) -> Response:
        """200 when the listener runs, the catalog answers and the disk accepts instances."""
        reasons = []
        listener = self.listener_address()
        if listener is None:
            reasons.append("DICOM listener is not running")
        catalog = "ok"
        try:
            self.view.overview.ping()
        except Exception as exc:
            catalog = "unreachable"
            reasons.append(f"catalog unreachable ({type(exc).__name__})")
            logger.warning("health check: catalog %s unreachable: %s", self.view.catalog_url, exc)
        try:
            free: int | None = self.view.disk_free_bytes()
        except OSError as exc:
            free = None
            reasons.append(f"spool folder unreadable ({exc.strerror or exc})")
        accepting = free is not None and self.view.accepting_instances(free)
        if free is not None and not accepting:
            reasons.append(
                f"low disk: {free // 2**20} MB free, below [node] min_free_disk_mb = "
                f"{self.settings.node.min_free_disk_mb}: new instances are refused"
            )
        body = {
            "status": "ok" if not reasons else "unavailable",
            "reasons": reasons,
            # Monitoring's warnings (drift, local performance) say something is worth a look;
            # the node still works, so they never change the status.
            "warnings": self._monitoring_warnings(),
            "listener": listener,
            "catalog": catalog,
            "accepting_instances": accepting,
            "disk_free_bytes": free,
        }
        return Response(
            HTTPStatus.OK if not reasons else HTTPStatus.SERVICE_UNAVAILABLE,
            (json.dumps(body) + "\n").encode(),
            content_type="application/json",
        )

    def _monitoring_warnings(self) -> list[str]:
        try:
            return list(self.view.monitoring().warnings)
        except Exception as exc:
            logger.warning("monitoring report failed: %s", exc)
            return [f"monitoring unavailable ({type(exc).__name__})"]

    # -- /performance ---------------------------------------------------------------------

    def performance_page(self, request: Request) -> Response:
        """Local performance against the imported outcomes, and input drift."""
        from scanet_node.admin.performance import performance_body

        body = performance_body(
            self.view.monitoring(),
            request.href("/performance/roc.png"),
            request.href("/performance/reliability.png"),
        )
        return _html("Performance", body, request)

    def performance_png(self, name: str) -> Response:
        """The ROC or the reliability plot of the local outcomes."""
        from scanet_node.monitoring.plots import reliability_png, roc_png

        performance = self.view.monitoring().performance
        if name == "roc.png":
            overall = performance.overall
            auc = None if math.isnan(overall.roc_auc) else overall.roc_auc
            data = roc_png(performance.roc, auc=auc, n=overall.n)
        else:
            data = reliability_png(performance.reliability)
        return Response(HTTPStatus.OK, data, content_type="image/png")

    # -- / ----------------------------------------------------------------------------------

    def overview_page(self, request: Request) -> Response:
        """The node at a glance: one table per part of the node, then the last associations."""
        counts = self.view.overview.counts()
        body = render(
            "overview.html",
            node=self._node_fields(),
            model=self._model_fields(counts),
            destinations=self._destinations_table(counts),
            disk=self._disk_fields(counts),
            catalog=_catalog_fields(counts),
            associations=_associations_table(self.view.recent_associations()),
        )
        return _html(f"scanet-node {self.settings.node.ae_title}", body, request)

    def _node_fields(self) -> Html:
        """The listener: who may call, how, and the catalog it files into."""
        s = self.settings
        listener = self.listener_address()
        bound = "; ".join(f"{aet}: {', '.join(h)}" for aet, h in s.security.ae_hosts.items())
        return fields(
            [
                ("AE title", s.node.ae_title),
                ("DICOM listener", listener if listener else span("bad", "not running")),
                ("TLS", _tls_mode(s.security)),
                ("Allowed calling AE titles", ", ".join(s.security.allowed_calling_aets) or "any"),
                ("AE titles bound to hosts", bound or "none"),
                (
                    "Associations",
                    f"{self.view.open_associations()} open, at most {s.node.max_associations}",
                ),
                ("Catalog", self.view.catalog_url),
            ]
        )

    def _model_fields(self, counts: Counts) -> Html:
        """The checkpoint, the model last used, and the worker processes that run it."""
        s = self.settings
        checkpoint = s.model.checkpoint or DEFAULT_CHECKPOINT
        return fields(
            [
                ("Checkpoint", span("uid", checkpoint)),
                ("File", _checkpoint_file(checkpoint)),
                ("Last analysis used", counts.last_model or "—"),
                ("Device", s.model.device),
                (
                    "Worker processes started by serve",
                    f"{self.view.workers_running()} running of {s.pipeline.workers} "
                    "([pipeline] workers)",
                ),
                ("Busy now (job leases)", ", ".join(counts.busy_workers) or "none"),
            ]
        )

    def _destinations_table(self, counts: Counts) -> Html:
        """Each destination with its deliveries pending and failed."""
        by_destination = counts.deliveries_by_destination
        return table(
            ["Name", "AE title", "Address", "TLS", "Pending", "Failed"],
            (
                [
                    d.name,
                    d.ae_title,
                    f"{d.host}:{d.port}",
                    "yes" if d.tls else "no",
                    by_destination.get((d.name, DeliveryStatus.PENDING), 0),
                    _failed(by_destination.get((d.name, DeliveryStatus.FAILED), 0)),
                ]
                for d in self.settings.destinations
            ),
            empty="no destination configured",
        )

    def _disk_fields(self, counts: Counts) -> Html:
        """The spool, the results, the free space and whether the low-disk guard refuses."""
        free = self.view.disk_free_bytes()
        guard = self.settings.node.min_free_disk_mb
        refused = label(Status.OUT_OF_RESOURCES)
        accepting = (
            span("ok", "yes")
            if self.view.accepting_instances(free)
            else span("bad", f"NO: too little free space, instances are refused ({refused})")
        )
        return fields(
            [
                ("Spool", f"{size(counts.spool_bytes)} in {counts.instances} instances"),
                ("Results", size(self.results_bytes())),
                ("Free on the data disk", size(free)),
                ("Guard ([node] min_free_disk_mb)", f"{guard} MB" if guard else "off"),
                ("Accepting instances", accepting),
                ("Data folder", span("uid", self.settings.node.data_dir)),
            ]
        )

    # -- /studies ---------------------------------------------------------------------------

    def studies_page(self, request: Request) -> Response:
        """The most recent studies with their series."""
        rows = self.view.overview.recent_studies(LIST_LIMIT)
        studies = [
            render(
                "studies_item.html",
                href=request.href(f"/studies/{row.study.study_instance_uid}"),
                uid=row.study.study_instance_uid,
                description=row.study.study_description or "",
                date=row.study.study_date or "—",
                instances=row.study.num_instances,
                last_received=when(row.study.last_received_at),
                state="no job yet" if row.latest_job is None else _job_state(row.latest_job),
                series=_series_table(row.study.series),
            )
            for row in rows
        ]
        body = render(
            "studies.html",
            limit=LIST_LIMIT,
            studies=join(studies) if studies else muted("No study received yet."),
        )
        return _html("Studies", body, request)

    def study_page(self, request: Request, study_uid: str) -> Response:
        """One study: its series and its jobs."""
        detail = self.view.overview.study(study_uid)
        if detail is None:
            return not_found(request)
        study = detail.study
        body = render(
            "study.html",
            fields=fields(
                [
                    ("Study Instance UID", span("uid", study.study_instance_uid)),
                    ("Description", study.study_description or "—"),
                    ("Study date", study.study_date or "—"),
                    ("Instances", study.num_instances),
                    ("First received", when(study.first_received_at)),
                    ("Last received", when(study.last_received_at)),
                ]
            ),
            series=_series_table(study.series),
            jobs=_jobs_table(detail.jobs, request),
        )
        return _html("Study", body, request)

    # -- /jobs ------------------------------------------------------------------------------

    def jobs_page(self, request: Request) -> Response:
        """The newest jobs."""
        rows = self.view.overview.recent_jobs(LIST_LIMIT)
        body = render("jobs.html", limit=LIST_LIMIT, jobs=_jobs_table(rows, request))
        return _html("Jobs", body, request)

    def job_page(self, request: Request, job_id: int) -> Response:
        """One job: its outcome, stage times, images, deliveries and every attempt."""
        detail = self.view.overview.job(job_id)
        if detail is None:
            return not_found(request)
        job = detail.row.job
        items: list[tuple[str, object]] = [
            ("Study", _study_link(job, request)),
            ("Status", _job_state(job)),
            ("Probability", _probability(job)),
            ("Reason", job.reason or "—"),
            ("Missing", job.missing or "—"),
            ("Attempts", job.attempts),
            ("Model", job.model or "—"),
            ("NCCT series", span("uid", job.ncct_series_uid or "—")),
            ("CTA series", span("uid", job.cta_series_uid or "—")),
            ("SR", span("uid", job.sr_sop_instance_uid or "—")),
            ("Created", when(job.created_at)),
            ("Inputs received", when(job.inputs_received_at)),
            ("Started", when(job.started_at)),
            ("Finished", when(job.finished_at)),
            ("Delivered", when(detail.row.delivered_at)),
            ("Turnaround", seconds(detail.row.turnaround_seconds)),
            (
                "Lease",
                f"{job.lease_owner} until {when(job.lease_expires_at)}" if job.lease_owner else "—",
            ),
        ]
        if job.supersedes_id is not None:
            href = request.href(f"/jobs/{job.supersedes_id}")
            items.append(("Amends", link(href, f"job {job.supersedes_id}")))
        body = render(
            "job.html",
            fields=fields(items),
            stages=table(
                ["Stage", "Seconds"],
                ([k, f"{v:.2f}"] for k, v in job.timings.items()),
                empty="no stage times recorded",
            ),
            images=_job_images(job, request),
            deliveries=_deliveries_table(detail.deliveries),
            attempts=_attempts_table(detail.deliveries),
        )
        return _html(f"Job {job.id}", body, request)

    def job_png(self, job_id: int, name: str) -> Response:
        """A PNG the worker wrote for the job, found through the job's row."""
        job = self.view.job(job_id)
        path = None if job is None else _result_png(job, name)
        if path is None:
            return _no_image()
        try:
            data = path.read_bytes()
        except OSError:
            return _no_image()
        return Response(HTTPStatus.OK, data, content_type="image/png")


# -- answers without a page of their own ------------------------------------------------------


def not_found(request: Request) -> Response:
    """404, with the navigation."""
    return Response(HTTPStatus.NOT_FOUND, page("Not found", render("not_found.html"), request.href))


def token_required(www_authenticate: str) -> Response:
    """401: a bare page (its links would not carry a token)."""
    return Response(
        HTTPStatus.UNAUTHORIZED,
        page("Token required", render("token_required.html"), None),
        headers={"WWW-Authenticate": www_authenticate},
    )


def unavailable(request: Request) -> Response:
    """503: a page could not be built (the log says why)."""
    return Response(
        HTTPStatus.SERVICE_UNAVAILABLE,
        page("Unavailable", render("unavailable.html"), request.href),
    )


def _html(title: str, body: Html, request: Request) -> Response:
    return Response(HTTPStatus.OK, page(title, body, request.href))


def _no_image() -> Response:
    return Response(
        HTTPStatus.NOT_FOUND, b"no such image\n", content_type="text/plain; charset=utf-8"
    )


# -- parts of pages ---------------------------------------------------------------------------


def _tls_mode(security: SecuritySettings) -> str:
    if not security.tls_enabled:
        return "no"
    return "yes, client certificates required" if security.tls_ca else "yes"


def _checkpoint_file(checkpoint: Path) -> str:
    """The checkpoint's size and time, or that it is missing."""
    try:
        stat = checkpoint.stat()
    except OSError:
        return span("bad", "missing: analyses fail until [model] checkpoint is set")
    modified = datetime.fromtimestamp(stat.st_mtime, UTC).replace(tzinfo=None)
    return f"{size(stat.st_size)}, modified {when(modified)}"


def _result_png(job: JobInfo, name: str) -> Path | None:
    if not job.results_dir:
        return None
    path = Path(job.results_dir) / name
    return path if path.is_file() else None


def _job_images(job: JobInfo, request: Request) -> Html:
    """The job's PNGs, each linked to itself, or a note that there are none."""
    images = [
        render(
            "job_image.html",
            label=label,
            src=request.href(f"/jobs/{job.id}/{name}"),
            job_id=job.id,
        )
        for name, label in _IMAGES
        if _result_png(job, name) is not None
    ]
    return join(images) if images else muted("No images (none written, or purged).")


def _failed(n: int) -> str:
    return span("bad", n) if n else "0"


def _job_state(job: JobInfo) -> Html:
    """The job's status, red when failed and green when done, with its outcome."""
    if job.status == JobStatus.FAILED:
        status = span("bad", job.status)
    elif job.status == JobStatus.DONE:
        status = span("ok", job.status)
    else:
        status = escape(job.status)
    return join([status, f" ({job.outcome})" if job.outcome else ""])


def _probability(job: JobInfo) -> str:
    if job.probability is None:
        return "—"
    verdict = "" if job.positive is None else (" positive" if job.positive else " negative")
    return f"{job.probability:.3f}{verdict}"


def _study_link(job: JobInfo, request: Request) -> Html:
    href = request.href(f"/studies/{job.study_instance_uid}")
    return link(href, job.study_instance_uid, css_class="uid")


def _catalog_fields(counts: Counts) -> Html:
    """What the catalog holds."""
    jobs = join((f"{k} {v}" for k, v in counts.jobs.items()), ", ")
    deliveries = join((f"{k} {v}" for k, v in sorted(counts.deliveries.items())), ", ")
    return fields(
        [
            ("Studies", f"{counts.studies} (purged by retention: {counts.purged_studies})"),
            ("Series", counts.series),
            ("Instances", counts.instances),
            ("Jobs", jobs),
            ("Deliveries", deliveries or "none"),
        ]
    )


def _associations_table(records: list[AssociationRecord]) -> Html:
    return table(
        ["Started", "Calling AE", "Peer", "Duration", "Stored", "Failed", "Outcome"],
        (
            [
                when(r.started_at),
                r.calling_aet,
                r.address,
                seconds(r.seconds),
                r.stored,
                _failed(r.failed),
                f"{r.outcome}: {r.reason}" if r.reason else r.outcome,
            ]
            for r in records
        ),
        empty="no association since the node started",
    )


def _series_table(series: Sequence[SeriesSummary]) -> Html:
    return table(
        ["#", "Modality", "Description", "Instances", "State", "Role", "Why", "Series UID"],
        (
            [
                s.series_number,
                s.modality,
                s.series_description,
                s.num_instances,
                s.state,
                s.role or "not classified yet",
                s.role_reason,
                span("uid", s.series_instance_uid),
            ]
            for s in series
        ),
        empty="no series",
    )


def _jobs_table(rows: Sequence[JobRow], request: Request) -> Html:
    def cells(row: JobRow) -> list[object]:
        job = row.job
        overlay = ""
        if _result_png(job, OVERLAY_PNG) is not None:
            overlay = link(request.href(f"/jobs/{job.id}/{OVERLAY_PNG}"), "overlay")
        return [
            link(request.href(f"/jobs/{job.id}"), job.id),
            _study_link(job, request),
            _job_state(job),
            _probability(job),
            job.reason,
            job.attempts,
            join((f"{k} {v:.1f}" for k, v in job.timings.items()), " · "),
            seconds(row.turnaround_seconds),
            join((f"{k} {v}" for k, v in sorted(row.deliveries.items())), ", "),
            overlay,
        ]

    return table(
        [
            "Job",
            "Study",
            "Status",
            "Probability",
            "Reason",
            "Attempts",
            "Stages (s)",
            "Turnaround",
            "Deliveries",
            "Image",
        ],
        (cells(r) for r in rows),
        empty="no job yet",
    )


def _deliveries_table(deliveries: list[DeliveryInfo]) -> Html:
    return table(
        ["Destination", "Peer", "Status", "Attempts", "Last status", "Last detail", "Sent"],
        (
            [
                d.destination,
                f"{d.ae_title}@{d.host}:{d.port}",
                span("bad", d.status) if d.status == DeliveryStatus.FAILED else d.status,
                d.attempts,
                d.last_status,
                d.last_detail,
                when(d.sent_at),
            ]
            for d in deliveries
        ),
        empty="no delivery (no destination, or the job has not finished)",
    )


def _attempts_table(deliveries: list[DeliveryInfo]) -> Html:
    def result(ok: bool, permanent: bool) -> str:
        if ok:
            return span("ok", "ok")
        return span("bad", "failed, permanent") if permanent else "failed, will retry"

    return table(
        ["Destination", "#", "Started", "Seconds", "Result", "Status", "Detail", "Sent"],
        (
            [
                d.destination,
                n,
                when(a.started_at),
                f"{a.seconds:.2f}",
                result(a.ok, a.permanent),
                a.status,
                a.detail,
                a.sent,
            ]
            for d in deliveries
            for n, a in enumerate(d.attempt_rows, 1)
        ),
        empty="no attempt yet",
    )
