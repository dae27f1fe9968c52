"""The admin web server: a read-only page, ``/healthz`` and ``/metrics``, run by ``serve``.

The standard library's ``ThreadingHTTPServer`` in a daemon thread, HTML built with
``html.escape``, no JavaScript. Pages: ``/`` (node, model, workers, destinations, disk,
counts, last associations), ``/studies`` and ``/studies/<uid>``, ``/jobs`` and
``/jobs/<id>`` (deliveries and every attempt), ``/jobs/<id>/overlay.png`` and
``summary.png`` (the PNGs the worker wrote; the path comes from the job's row, never from the
URL). Patient names and IDs are never shown: the catalog does not hold them and no DICOM file
is read here.

With ``[admin] token`` set, every path but ``/healthz`` needs ``Authorization: Bearer TOKEN``
or ``?token=TOKEN`` (the links of a page then carry it). Only GET and HEAD are served.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from scanet_node.admin.metrics import (
    CONTENT_TYPE,
    NodeCollector,
    ProcessFigures,
    build_registry,
    exposition,
)
from scanet_node.catalog.jobs import DeliveryInfo, JobInfo, JobQueue
from scanet_node.catalog.overview import Counts, JobRow, Overview
from scanet_node.config import DEFAULT_CHECKPOINT
from scanet_node.errors import ListenerError
from scanet_node.pipeline.retention import tree_bytes
from scanet_node.results.files import OVERLAY_PNG, SUMMARY_PNG

if TYPE_CHECKING:
    from scanet_node.ingest.handlers import AssociationRecord
    from scanet_node.service import Node

logger = logging.getLogger(__name__)

#: Seconds between automatic reloads of a page.
REFRESH_SECONDS = 10
#: Rows on the list pages.
LIST_LIMIT = 100
#: How long the size of the results folder is reused before it is measured again.
RESULTS_SIZE_TTL_SECONDS = 60.0
_STUDY_UID = re.compile(r"^[0-9.]{1,64}$")
_JOB_PATH = re.compile(r"^/jobs/(\d{1,9})(?:/(overlay\.png|summary\.png))?$")
_TOKEN_IN_TEXT = re.compile(r"token=[^&\s'\"]*")
_CSS = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}"
    "header{background:#16324f;color:#fff;padding:8px 16px}"
    "header a{color:#fff;margin-right:16px;text-decoration:none;font-weight:600}"
    "main{padding:8px 16px}h1{font-size:20px}h2{font-size:16px;margin-top:24px}"
    "table{border-collapse:collapse;margin:4px 0 12px;background:#fff}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
    "th{background:#e8edf2}.uid{font-family:monospace;font-size:12px}"
    ".bad{color:#a40000;font-weight:600}.ok{color:#116611;font-weight:600}"
    ".muted{color:#666}img{max-width:100%;border:1px solid #ccc;background:#000}"
)
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        f"default-src 'none'; img-src 'self'; style-src 'sha256-{_CSS_HASH}'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Response:
    """One HTTP answer."""

    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Request:
    """The parts of a request the pages need: the path and how links carry the token."""

    path: str
    query_token: str | None

    def href(self, path: str) -> str:
        """A link to ``path``, with ``?token=`` when this request came with one."""
        if self.query_token is None:
            return path
        return f"{path}?{urlencode({'token': self.query_token})}"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str = "none") -> str:
    """A table; cells are HTML already escaped by the caller."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _fields(items: Iterable[tuple[str, str]]) -> str:
    """A two-column table of name / value, without a header row (values are HTML already)."""
    return _table([], ([f"<b>{_e(k)}</b>", v] for k, v in items))


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
                self._value = tree_bytes(self.folder)[1]
                self._at = time.monotonic()
            return self._value


class AdminApp:
    """The pages: turns a request path into a :class:`Response`. No sockets here."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.settings = node.settings
        self.overview = Overview(node.catalog)
        self.queue = JobQueue(node.catalog)
        self.results_bytes = _FolderSize(self.settings.results_dir, RESULTS_SIZE_TTL_SECONDS)
        self.registry = build_registry(
            NodeCollector(self._process_figures, self.overview.metric_figures)
        )

    # -- the node's own figures -------------------------------------------------------------

    def _process_figures(self) -> ProcessFigures:
        service = self.node.listener.service
        return ProcessFigures(
            instances=service.instance_counts(),
            associations=service.association_counts(),
            disk_free_bytes=self.node.spool.free_bytes(),
            min_free_bytes=self.node.spool.min_free_bytes,
            results_bytes=self.results_bytes(),
        )

    def listener_address(self) -> str | None:
        """``host:port`` of the DICOM listener, or None when it is not running."""
        try:
            host, port = self.node.listener.address
        except RuntimeError:
            return None
        return f"{host}:{port}"

    # -- dispatch ---------------------------------------------------------------------------

    def authorised(self, authorization: str | None, query_token: str | None) -> bool:
        """True when no token is configured, or the request carries it."""
        token = self.settings.admin.token
        if not token:
            return True
        given = None
        if authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        elif query_token is not None:
            given = query_token
        return given is not None and hmac.compare_digest(given.encode(), token.encode())

    def handle(self, target: str, authorization: str | None) -> Response:
        """Answer a GET of ``target`` (path and query)."""
        parts = urlsplit(target)
        path = parts.path
        tokens = parse_qs(parts.query).get("token")
        query_token = tokens[0] if tokens else None
        if path == "/healthz":
            return self.healthz()
        if not self.authorised(authorization, query_token):
            return Response(
                HTTPStatus.UNAUTHORIZED,
                _page("Token required", "<p>This page needs the [admin] token.</p>", None),
                headers={"WWW-Authenticate": 'Bearer realm="scanet-node"'},
            )
        request = _Request(path, query_token if self.settings.admin.token else None)
        try:
            return self._route(request)
        except Exception:
            logger.exception("admin page %s failed", path)
            return Response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                _page(
                    "Unavailable",
                    "<p>This page could not be built (is the catalog reachable?); the node's "
                    "log says why.</p>",
                    request,
                ),
            )

    def _route(self, request: _Request) -> Response:
        path = request.path
        if path == "/":
            return self.overview_page(request)
        if path == "/metrics":
            return Response(
                HTTPStatus.OK,
                exposition(self.registry),
                content_type=CONTENT_TYPE,
            )
        if path == "/studies":
            return self.studies_page(request)
        if path.startswith("/studies/") and _STUDY_UID.match(path[len("/studies/") :]):
            return self.study_page(request, path[len("/studies/") :])
        if path == "/jobs":
            return self.jobs_page(request)
        match = _JOB_PATH.match(path)
        if match:
            job_id = int(match.group(1))
            if match.group(2):
                return self.job_png(job_id, match.group(2))
            return self.job_page(request, job_id)
        return _not_found(request)

    # -- /healthz ---------------------------------------------------------------------------

    def healthz(self) -> Response:
        """200 when the listener runs, the catalog answers and the disk accepts instances."""
        reasons = []
        listener = self.listener_address()
        if listener is None:
            reasons.append("DICOM listener is not running")
        catalog = "ok"
        try:
            self.overview.ping()
        except Exception as exc:
            catalog = "unreachable"
            reasons.append(f"catalog unreachable ({type(exc).__name__})")
            logger.warning(
                "health check: catalog %s unreachable: %s", self.node.catalog.display_url, exc
            )
        try:
            free: int | None = self.node.spool.free_bytes()
        except OSError as exc:
            free = None
            reasons.append(f"spool folder unreadable ({exc.strerror or exc})")
        accepting = free is not None and self.node.spool.has_room(free=free)
        if free is not None and not accepting:
            reasons.append(
                f"low disk: {free // 2**20} MB free, below [node] min_free_disk_mb = "
                f"{self.settings.node.min_free_disk_mb}: new instances are refused"
            )
        body = {
            "status": "ok" if not reasons else "unavailable",
            "reasons": reasons,
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

    # -- / ----------------------------------------------------------------------------------

    def overview_page(self, request: _Request) -> Response:
        """The node at a glance."""
        s = self.settings
        counts = self.overview.counts()
        listener = self.listener_address()
        tls = "no"
        if s.security.tls_enabled:
            tls = "yes, client certificates required" if s.security.tls_ca else "yes"
        bound = "; ".join(f"{aet}: {', '.join(h)}" for aet, h in s.security.ae_hosts.items())
        node = _fields(
            [
                ("AE title", _e(s.node.ae_title)),
                (
                    "DICOM listener",
                    _e(listener) if listener else '<span class="bad">not running</span>',
                ),
                ("TLS", tls),
                (
                    "Allowed calling AE titles",
                    _e(", ".join(s.security.allowed_calling_aets) or "any"),
                ),
                ("AE titles bound to hosts", _e(bound or "none")),
                (
                    "Associations",
                    f"{self.node.listener.active_associations()} open, at most "
                    f"{s.node.max_associations}",
                ),
                ("Catalog", _e(self.node.catalog.display_url)),
            ]
        )
        checkpoint = s.model.checkpoint or DEFAULT_CHECKPOINT
        try:
            stat = checkpoint.stat()
            file_info = (
                f"{_size(stat.st_size)}, modified "
                f"{_when(datetime.fromtimestamp(stat.st_mtime, UTC).replace(tzinfo=None))}"
            )
        except OSError:
            file_info = (
                '<span class="bad">missing: analyses fail until [model] checkpoint is set</span>'
            )
        alive = sum(1 for p in self.node.workers if p.is_alive())
        model = _fields(
            [
                ("Checkpoint", f'<span class="uid">{_e(checkpoint)}</span>'),
                ("File", file_info),
                ("Last analysis used", _e(counts.last_model or "—")),
                ("Device", _e(s.model.device)),
                (
                    "Workers in this process",
                    f"{alive} running of {s.pipeline.workers} ([pipeline] workers)",
                ),
                ("Busy now (job leases)", _e(", ".join(counts.busy_workers) or "none")),
            ]
        )
        destinations = _table(
            ["Name", "AE title", "Address", "TLS", "Pending", "Failed"],
            (
                [
                    _e(d.name),
                    _e(d.ae_title),
                    _e(f"{d.host}:{d.port}"),
                    "yes" if d.tls else "no",
                    str(counts.deliveries_by_destination.get((d.name, "pending"), 0)),
                    _failed(counts.deliveries_by_destination.get((d.name, "failed"), 0)),
                ]
                for d in s.destinations
            ),
            empty="no destination configured",
        )
        return Response(
            HTTPStatus.OK,
            _page(
                f"scanet-node {s.node.ae_title}",
                "<h2>Node</h2>"
                + node
                + "<h2>Model and workers</h2>"
                + model
                + "<h2>Destinations</h2>"
                + destinations
                + "<h2>Disk</h2>"
                + self._disk(counts)
                + "<h2>Catalog</h2>"
                + _counts(counts)
                + "<h2>Last associations</h2>"
                + _associations(self.node.listener.service.recent_associations()),
                request,
            ),
        )

    def _disk(self, counts: Counts) -> str:
        free = self.node.spool.free_bytes()
        stopped = not self.node.spool.has_room(free=free)
        guard = self.settings.node.min_free_disk_mb
        return _fields(
            [
                ("Spool", f"{_size(counts.spool_bytes)} in {counts.instances} instances"),
                ("Results", _size(self.results_bytes())),
                ("Free on the data disk", _size(free)),
                ("Guard ([node] min_free_disk_mb)", f"{guard} MB" if guard else "off"),
                (
                    "Accepting instances",
                    '<span class="bad">NO: too little free space, instances are refused '
                    "(0xA700)</span>"
                    if stopped
                    else '<span class="ok">yes</span>',
                ),
                ("Data folder", f'<span class="uid">{_e(self.settings.node.data_dir)}</span>'),
            ]
        )

    # -- /studies ---------------------------------------------------------------------------

    def studies_page(self, request: _Request) -> Response:
        """The most recent studies with their series."""
        rows = self.overview.recent_studies(LIST_LIMIT)
        parts = [f'<p class="muted">The {LIST_LIMIT} most recently received studies.</p>']
        for row in rows:
            study = row.study
            job = row.latest_job
            state = "no job yet" if job is None else _job_state(job)
            href = request.href(f"/studies/{study.study_instance_uid}")
            parts.append(
                f'<h2><a class="uid" href="{_e(href)}">'
                f"{_e(study.study_instance_uid)}</a></h2>"
                f"<p>{_e(study.study_description or '')} · date {_e(study.study_date or '—')} · "
                f"{study.num_instances} instances · last received "
                f"{_when(study.last_received_at)} · {state}</p>" + _series_table(study.series)
            )
        if not rows:
            parts.append('<p class="muted">No study received yet.</p>')
        return Response(HTTPStatus.OK, _page("Studies", "".join(parts), request))

    def study_page(self, request: _Request, study_uid: str) -> Response:
        """One study: its series and its jobs."""
        detail = self.overview.study(study_uid)
        if detail is None:
            return _not_found(request)
        study = detail.study
        body = (
            _fields(
                [
                    (
                        "Study Instance UID",
                        f'<span class="uid">{_e(study.study_instance_uid)}</span>',
                    ),
                    ("Description", _e(study.study_description or "—")),
                    ("Study date", _e(study.study_date or "—")),
                    ("Instances", str(study.num_instances)),
                    ("First received", _when(study.first_received_at)),
                    ("Last received", _when(study.last_received_at)),
                ]
            )
            + "<h2>Series</h2>"
            + _series_table(study.series)
            + "<h2>Jobs</h2>"
            + _jobs_table(detail.jobs, request)
        )
        return Response(HTTPStatus.OK, _page("Study", body, request))

    # -- /jobs ------------------------------------------------------------------------------

    def jobs_page(self, request: _Request) -> Response:
        """The newest jobs."""
        rows = self.overview.recent_jobs(LIST_LIMIT)
        body = f'<p class="muted">The {LIST_LIMIT} newest jobs.</p>' + _jobs_table(rows, request)
        return Response(HTTPStatus.OK, _page("Jobs", body, request))

    def job_page(self, request: _Request, job_id: int) -> Response:
        """One job: its outcome, stage times, images, deliveries and every attempt."""
        detail = self.overview.job(job_id)
        if detail is None:
            return _not_found(request)
        job = detail.row.job
        images = []
        for name, label in ((OVERLAY_PNG, "Attention overlay"), (SUMMARY_PNG, "Summary")):
            if _result_png(job, name) is not None:
                src = request.href(f"/jobs/{job.id}/{name}")
                images.append(
                    f'<h3>{label}</h3><a href="{_e(src)}"><img src="{_e(src)}" '
                    f'alt="{_e(label)} of job {job.id}"></a>'
                )
        if not images:
            images.append('<p class="muted">No images (none written, or purged).</p>')
        study_href = request.href(f"/studies/{job.study_instance_uid}")
        fields = [
            ("Study", f'<a class="uid" href="{_e(study_href)}">{_e(job.study_instance_uid)}</a>'),
            ("Status", _job_state(job)),
            ("Probability", _probability(job)),
            ("Reason", _e(job.reason or "—")),
            ("Missing", _e(job.missing or "—")),
            ("Attempts", str(job.attempts)),
            ("Model", _e(job.model or "—")),
            ("NCCT series", f'<span class="uid">{_e(job.ncct_series_uid or "—")}</span>'),
            ("CTA series", f'<span class="uid">{_e(job.cta_series_uid or "—")}</span>'),
            ("SR", f'<span class="uid">{_e(job.sr_sop_instance_uid or "—")}</span>'),
            ("Created", _when(job.created_at)),
            ("Inputs received", _when(job.inputs_received_at)),
            ("Started", _when(job.started_at)),
            ("Finished", _when(job.finished_at)),
            ("Delivered", _when(detail.row.delivered_at)),
            ("Turnaround", _seconds(detail.row.turnaround_seconds)),
            (
                "Lease",
                _e(f"{job.lease_owner} until {_when(job.lease_expires_at)}")
                if job.lease_owner
                else "—",
            ),
        ]
        if job.supersedes_id is not None:
            href = request.href(f"/jobs/{job.supersedes_id}")
            fields.append(("Amends", f'<a href="{_e(href)}">job {job.supersedes_id}</a>'))
        body = (
            _fields(fields)
            + "<h2>Stage times</h2>"
            + _table(
                ["Stage", "Seconds"],
                ([_e(k), f"{v:.2f}"] for k, v in job.timings.items()),
                empty="no stage times recorded",
            )
            + "<h2>Images</h2>"
            + "".join(images)
            + "<h2>Deliveries</h2>"
            + _deliveries_table(detail.deliveries)
            + "<h2>Delivery attempts</h2>"
            + _attempts_table(detail.deliveries)
        )
        return Response(HTTPStatus.OK, _page(f"Job {job.id}", body, request))

    def job_png(self, job_id: int, name: str) -> Response:
        """A PNG the worker wrote for the job, found through the job's row."""
        job = self.queue.job(job_id)
        path = None if job is None else _result_png(job, name)
        if path is None:
            return Response(
                HTTPStatus.NOT_FOUND, b"no such image\n", content_type="text/plain; charset=utf-8"
            )
        try:
            data = path.read_bytes()
        except OSError:
            return Response(
                HTTPStatus.NOT_FOUND, b"no such image\n", content_type="text/plain; charset=utf-8"
            )
        return Response(HTTPStatus.OK, data, content_type="image/png")


def _result_png(job: JobInfo, name: str) -> Path | None:
    if not job.results_dir:
        return None
    path = Path(job.results_dir) / name
    return path if path.is_file() else None


def _not_found(request: _Request) -> Response:
    return Response(
        HTTPStatus.NOT_FOUND, _page("Not found", "<p>No such page or record.</p>", request)
    )


def _failed(n: int) -> str:
    return f'<span class="bad">{n}</span>' if n else "0"


def _job_state(job: JobInfo) -> str:
    status = _e(job.status)
    if job.status == "failed":
        status = f'<span class="bad">{status}</span>'
    elif job.status == "done":
        status = f'<span class="ok">{status}</span>'
    return status + (f" ({_e(job.outcome)})" if job.outcome else "")


def _probability(job: JobInfo) -> str:
    if job.probability is None:
        return "—"
    verdict = "" if job.positive is None else (" positive" if job.positive else " negative")
    return f"{job.probability:.3f}{verdict}"


def _counts(counts: Counts) -> str:
    jobs = ", ".join(f"{_e(k)} {v}" for k, v in counts.jobs.items())
    deliveries = ", ".join(f"{_e(k)} {v}" for k, v in sorted(counts.deliveries.items()))
    return _fields(
        [
            ("Studies", f"{counts.studies} (purged by retention: {counts.purged_studies})"),
            ("Series", str(counts.series)),
            ("Instances", str(counts.instances)),
            ("Jobs", jobs),
            ("Deliveries", deliveries or "none"),
        ]
    )


def _associations(records: list[AssociationRecord]) -> str:
    return _table(
        ["Started", "Calling AE", "Peer", "Duration", "Stored", "Failed", "Outcome"],
        (
            [
                _when(r.started_at),
                _e(r.calling_aet),
                _e(r.address),
                _seconds(r.seconds),
                str(r.stored),
                _failed(r.failed),
                _e(r.outcome) + (f": {_e(r.reason)}" if r.reason else ""),
            ]
            for r in records
        ),
        empty="no association since the node started",
    )


def _series_table(series: Sequence[Any]) -> str:
    return _table(
        ["#", "Modality", "Description", "Instances", "State", "Role", "Why", "Series UID"],
        (
            [
                _e(s.series_number if s.series_number is not None else ""),
                _e(s.modality or ""),
                _e(s.series_description or ""),
                str(s.num_instances),
                _e(s.state),
                _e(s.role or "not classified yet"),
                _e(s.role_reason or ""),
                f'<span class="uid">{_e(s.series_instance_uid)}</span>',
            ]
            for s in series
        ),
        empty="no series",
    )


def _jobs_table(rows: Sequence[JobRow], request: _Request) -> str:
    def cells(row: JobRow) -> list[str]:
        job = row.job
        overlay = ""
        if _result_png(job, OVERLAY_PNG) is not None:
            overlay = f'<a href="{_e(request.href(f"/jobs/{job.id}/{OVERLAY_PNG}"))}">overlay</a>'
        deliveries = ", ".join(f"{_e(k)} {v}" for k, v in sorted(row.deliveries.items()))
        stages = " · ".join(f"{_e(k)} {v:.1f}" for k, v in job.timings.items())
        study_href = request.href(f"/studies/{job.study_instance_uid}")
        return [
            f'<a href="{_e(request.href(f"/jobs/{job.id}"))}">{job.id}</a>',
            f'<a class="uid" href="{_e(study_href)}">{_e(job.study_instance_uid)}</a>',
            _job_state(job),
            _probability(job),
            _e(job.reason or ""),
            str(job.attempts),
            stages,
            _seconds(row.turnaround_seconds),
            deliveries,
            overlay,
        ]

    return _table(
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


def _deliveries_table(deliveries: list[DeliveryInfo]) -> str:
    return _table(
        ["Destination", "Peer", "Status", "Attempts", "Last status", "Last detail", "Sent"],
        (
            [
                _e(d.destination),
                _e(f"{d.ae_title}@{d.host}:{d.port}"),
                _e(d.status)
                if d.status != "failed"
                else f'<span class="bad">{_e(d.status)}</span>',
                str(d.attempts),
                _e(d.last_status or ""),
                _e(d.last_detail or ""),
                _when(d.sent_at),
            ]
            for d in deliveries
        ),
        empty="no delivery (no destination, or the job has not finished)",
    )


def _attempts_table(deliveries: list[DeliveryInfo]) -> str:
    return _table(
        ["Destination", "#", "Started", "Seconds", "Result", "Status", "Detail", "Sent"],
        (
            [
                _e(d.destination),
                str(n),
                _when(a.started_at),
                f"{a.seconds:.2f}",
                '<span class="ok">ok</span>'
                if a.ok
                else (
                    '<span class="bad">failed, permanent</span>'
                    if a.permanent
                    else "failed, will retry"
                ),
                _e(a.status),
                _e(a.detail),
                str(a.sent),
            ]
            for d in deliveries
            for n, a in enumerate(d.attempt_rows, 1)
        ),
        empty="no attempt yet",
    )


def _page(title: str, body: str, request: _Request | None) -> bytes:
    nav = ""
    if request is not None:
        links = (
            ("/", "Overview"),
            ("/studies", "Studies"),
            ("/jobs", "Jobs"),
            ("/metrics", "Metrics"),
        )
        nav = "".join(f'<a href="{_e(request.href(p))}">{_e(n)}</a>' for p, n in links)
    refresh = (
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if request is not None else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"{refresh}<title>{_e(title)} · scanet-node</title><style>{_CSS}</style></head>"
        f"<body><header>{nav}</header><main><h1>{_e(title)}</h1>{body}"
        '<p class="muted">Read-only. Times in UTC. Research software: not for clinical '
        "decisions.</p></main></body></html>"
    ).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: AdminApp


class _Handler(BaseHTTPRequestHandler):
    """Serves GET and HEAD from the app; 405 for any other method."""

    server_version = "scanet-node"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # a stalled client does not hold a thread for ever

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # its body, if any, is never read
            self._send(
                Response(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    b"read-only: GET and HEAD only\n",
                    content_type="text/plain; charset=utf-8",
                    headers={"Allow": "GET, HEAD", "Connection": "close"},
                )
            )
            return False
        return True

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        app: AdminApp = self.server.app  # type: ignore[attr-defined]
        self._send(app.handle(self.path, self.headers.get("Authorization")))

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path without its query: a ?token= never reaches the log.
        logger.debug(
            "admin %s %s -> %s",
            self.command,
            urlsplit(self.path).path,
            code,
            extra={"peer": self.client_address[0]},
        )

    def log_message(self, format: str, *args: Any) -> None:
        text = _TOKEN_IN_TEXT.sub("token=***", format % args)
        logger.info("admin page: %s", text, extra={"peer": self.client_address[0]})


class AdminServer:
    """The admin web server of a :class:`~scanet_node.service.Node`, in a daemon thread.

    Parameters
    ----------
    node
        The running node whose catalog, spool, listener and workers the pages show.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.app = AdminApp(node)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind ``[admin] host``/``port`` and serve; return the bound address."""
        admin = self.node.settings.admin
        try:
            server = _Server((admin.host, admin.port), _Handler)
        except OSError as exc:
            raise ListenerError(
                f"cannot serve the admin page on {admin.host}:{admin.port} "
                f"([admin] host/port): {exc.strerror or exc}"
            ) from exc
        server.app = self.app
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="admin-http",
            daemon=True,
        )
        self._thread.start()
        host, port = self.address
        logger.info("admin page on %s", self.url)
        return host, port

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the admin server is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The page's base URL."""
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
