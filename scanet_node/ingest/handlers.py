"""The DICOM event handlers: C-ECHO, C-STORE and the association log lines.

The C-STORE handler does the minimum: validate the identifying UIDs, write the
bytes durably, commit one catalog row, answer. It never raises: every failure
is its own DICOM status with an Error Comment naming it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode_file_meta

from scanet_node.catalog import Catalog, InstanceRecord, RecordOutcome, utcnow
from scanet_node.dicom_status import Status, label
from scanet_node.errors import IngestError
from scanet_node.ingest.parse import Identity, decode_elements, identify
from scanet_node.ingest.spool import Spool
from scanet_node.ingest.uids import check_uid

logger = logging.getLogger(__name__)

#: Ended associations kept in memory for the admin page.
RECENT_ASSOCIATIONS = 50


def failure(status: int, reason: str) -> Dataset:
    """A C-STORE response status with its Error Comment (LO, at most 64 characters)."""
    rsp = Dataset()
    rsp.Status = int(status)
    rsp.ErrorComment = reason[:64]
    return rsp


def _loggable_uid(value: object) -> str:
    """The UID if it is one, else a placeholder: a peer's raw strings stay out of the log."""
    try:
        return check_uid(value, "UID")
    except IngestError:
        return "(invalid UID)"


@dataclass
class _AssociationStats:
    calling_aet: str
    address: str
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=utcnow)
    stored: int = 0
    failed: int = 0
    outcome: str = "closed"
    #: The series this association has stored instances of, and the one it stored last.
    series: set[str] = field(default_factory=set)
    current: str | None = None


@dataclass(frozen=True)
class AssociationRecord:
    """One ended or rejected association, as the admin page lists it (naive UTC start)."""

    calling_aet: str
    address: str
    started_at: datetime
    seconds: float
    stored: int
    failed: int
    #: "released", "aborted", "closed" (connection lost) or "rejected".
    outcome: str
    reason: str | None = None


class StoreService:
    """The listener's event handlers, bound to one catalog and one spool."""

    def __init__(self, catalog: Catalog, spool: Spool) -> None:
        self.catalog = catalog
        self.spool = spool
        self._stats: dict[Any, _AssociationStats] = {}
        self._lock = threading.Lock()
        # In-process figures of this listener for the admin page and /metrics.
        self._recent: deque[AssociationRecord] = deque(maxlen=RECENT_ASSOCIATIONS)
        self._association_counts: Counter[str] = Counter()
        self._instance_counts: Counter[tuple[str, str]] = Counter()
        self._store_call = threading.local()

    def recent_associations(self) -> list[AssociationRecord]:
        """The last ended or rejected associations, newest first."""
        with self._lock:
            return list(reversed(self._recent))

    def association_counts(self) -> dict[str, int]:
        """Associations since start, by outcome (released, aborted, closed, rejected)."""
        with self._lock:
            return dict(self._association_counts)

    def instance_counts(self) -> dict[tuple[str, str], int]:
        """C-STOREs since start by (outcome, status): stored, duplicate or refused."""
        with self._lock:
            return dict(self._instance_counts)

    def _remember(self, record: AssociationRecord) -> None:
        with self._lock:
            self._recent.append(record)
            self._association_counts[record.outcome] += 1

    # -- association events ------------------------------------------------
    def handle_accepted(self, event: Any) -> None:
        """Start counting for a new association."""
        peer = event.assoc.requestor
        with self._lock:
            self._stats[event.assoc] = _AssociationStats(
                peer.ae_title, f"{peer.address}:{peer.port}"
            )

    def handle_pdu_recv(self, event: Any) -> None:
        """Note a peer's A-RELEASE-RQ or A-ABORT as it arrives.

        EVT_RELEASED is triggered in the association's thread and can come after
        EVT_CONN_CLOSE from the network thread; the request PDU always comes first.
        """
        from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RQ

        if isinstance(event.pdu, A_RELEASE_RQ):
            self._set_outcome(event.assoc, "released")
        elif isinstance(event.pdu, A_ABORT_RQ):
            self._set_outcome(event.assoc, "aborted")

    def handle_released(self, event: Any) -> None:
        """Note that the association ended with an A-RELEASE."""
        self._set_outcome(event.assoc, "released")

    def handle_aborted(self, event: Any) -> None:
        """Note that the association ended with an A-ABORT."""
        self._set_outcome(event.assoc, "aborted")

    def _set_outcome(self, assoc: Any, outcome: str) -> None:
        with self._lock:
            stats = self._stats.get(assoc)
            if stats is not None:
                stats.outcome = outcome

    def handle_conn_close(self, event: Any) -> None:
        """Write the association's one log line; after a release, mark its series done."""
        with self._lock:
            stats = self._stats.pop(event.assoc, None)
            done = self._not_delivered_elsewhere(stats.series) if stats is not None else []
        if stats is None:
            return
        if stats.outcome == "released":
            # An aborted or lost association may have more to send: its series wait for the
            # quiet time instead.
            self._mark_released(done)
        self._remember(
            AssociationRecord(
                stats.calling_aet,
                stats.address,
                stats.started_at,
                time.monotonic() - stats.started,
                stats.stored,
                stats.failed,
                stats.outcome,
            )
        )
        logger.info(
            "association from %s (%s) %s after %.1f s: %d stored, %d failed",
            stats.calling_aet,
            stats.address,
            stats.outcome,
            time.monotonic() - stats.started,
            stats.stored,
            stats.failed,
            extra={"calling_aet": stats.calling_aet},
        )

    def _not_delivered_elsewhere(self, series: set[str]) -> list[str]:
        """Those of ``series`` that no open association is delivering now (lock held)."""
        busy = {s.current for s in self._stats.values()}
        return sorted(series - busy)

    def _mark_released(self, series_uids: list[str]) -> None:
        """Tell the catalog a sender is done with these series; the settle sweep settles
        them after ``[pipeline] settle_after_release_seconds``. A failure only logs: the
        series then settle after ``series_settle_seconds`` of quiet, as before."""
        if not series_uids:
            return
        try:
            self.catalog.mark_series_released(series_uids)
        except Exception:
            logger.exception("could not mark %d series as released", len(series_uids))

    def handle_rejected(self, event: Any) -> None:
        """Log a refused association and the reason."""
        assoc = event.assoc
        calling = assoc.requestor.ae_title
        allowed = [a.strip() for a in assoc.ae.require_calling_aet]
        if getattr(event, "reason", None):
            reason = str(event.reason)
        elif allowed and calling not in allowed:
            reason = "calling AE title not allowed"
        elif assoc.ae.require_called_aet and assoc.requestor.primitive.called_ae_title != (
            assoc.acceptor.ae_title.strip()
        ):
            reason = f"called AE title {assoc.requestor.primitive.called_ae_title!r} is not ours"
        else:
            reason = "too many associations"
        logger.warning(
            "association from %s (%s:%s) rejected: %s",
            calling,
            assoc.requestor.address,
            assoc.requestor.port,
            reason,
            extra={"calling_aet": calling},
        )
        self._remember(
            AssociationRecord(
                calling,
                f"{assoc.requestor.address}:{assoc.requestor.port}",
                utcnow(),
                0.0,
                0,
                0,
                "rejected",
                reason,
            )
        )

    # -- DIMSE services ----------------------------------------------------
    def handle_echo(self, event: Any) -> int:
        """C-ECHO: always success."""
        return Status.SUCCESS

    def handle_store(self, event: Any) -> int | Dataset:
        """C-STORE: keep the instance durably and catalogue it, or answer why not."""
        self._store_call.duplicate = False
        try:
            status = self._store(event)
        except Exception:
            logger.exception("unexpected failure while storing an instance")
            status = failure(Status.PROCESSING_FAILURE, "Processing failure in the node")
        code = status if isinstance(status, int) else int(status.Status)
        if code != Status.SUCCESS:
            counted = ("refused", label(code))
        else:
            counted = (
                "duplicate" if self._store_call.duplicate else "stored",
                label(Status.SUCCESS),
            )
        moved_on: list[str] = []
        with self._lock:
            self._instance_counts[counted] += 1
            stats = self._stats.get(event.assoc)
            if stats is not None:
                if status == Status.SUCCESS:
                    stats.stored += 1
                    series = self._store_call.series_uid
                    previous, stats.current = stats.current, series
                    stats.series.add(series)
                    if previous is not None and previous != series:
                        # The sender moved on to another series: it is done with the last
                        # one, unless another association is still delivering it.
                        moved_on = self._not_delivered_elsewhere({previous})
                else:
                    stats.failed += 1
        self._mark_released(moved_on)
        return status

    def _store(self, event: Any) -> int | Dataset:
        """Validate the identifying UIDs, write the bytes durably, commit one catalog row.

        Every refusal is its own status with the reason. A file whose catalog row conflicts
        is discarded; one whose commit failed stays (harmless: the peer sends it again).
        """
        request = event.request
        transfer_syntax = str(event.context.transfer_syntax)
        body = event.encoded_dataset(include_meta=False)
        try:
            dataset = decode_elements(body, transfer_syntax)
            ident = identify(dataset, request.AffectedSOPClassUID, request.AffectedSOPInstanceUID)
        except IngestError as exc:
            logger.warning(
                "refused instance %s: %s (0x%04X)",
                _loggable_uid(request.AffectedSOPInstanceUID),
                exc.reason,
                exc.status,
            )
            return failure(exc.status, exc.reason)

        relative = self.spool.relative_path(
            ident.study_instance_uid, ident.series_instance_uid, ident.sop_instance_uid
        )
        try:
            header = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
            size = self.spool.write(relative, header, body)
        except IngestError as exc:
            return failure(exc.status, exc.reason)

        calling_aet = event.assoc.requestor.ae_title
        record = _instance_record(ident, transfer_syntax, relative, size, calling_aet)
        try:
            outcome = self.catalog.record_instance(record)
        except Exception:
            logger.exception("catalog commit failed for instance %s", ident.sop_instance_uid)
            return failure(Status.OUT_OF_RESOURCES, "Out of resources: catalog unavailable")
        if outcome.conflict:
            self.spool.discard(relative)
            logger.warning("refused instance %s: %s", ident.sop_instance_uid, outcome.conflict)
            return failure(Status.CONFLICT, outcome.conflict)

        # The same SOP Instance UID again: a resend, refreshed in place (not a new instance).
        self._store_call.duplicate = not outcome.new_instance
        self._store_call.series_uid = ident.series_instance_uid
        _log_arrival(ident, outcome, calling_aet)
        return Status.SUCCESS


def _instance_record(
    ident: Identity, transfer_syntax: str, relative: str, size: int, calling_aet: str
) -> InstanceRecord:
    """The catalog row of an instance just written to the spool."""
    return InstanceRecord(
        study_instance_uid=ident.study_instance_uid,
        series_instance_uid=ident.series_instance_uid,
        sop_instance_uid=ident.sop_instance_uid,
        sop_class_uid=ident.sop_class_uid,
        transfer_syntax_uid=transfer_syntax,
        path=relative,
        size_bytes=size,
        received_at=utcnow(),
        calling_aet=calling_aet,
        patient_key=ident.patient_key,
        study_date=ident.study_date,
        accession_number=ident.accession_number,
        study_description=ident.study_description,
        modality=ident.modality,
        series_number=ident.series_number,
        series_description=ident.series_description,
        image_type=ident.image_type,
        contrast_agent=ident.contrast_agent,
        slice_thickness=ident.slice_thickness,
        body_part_examined=ident.body_part_examined,
        instance_number=ident.instance_number,
    )


def _log_arrival(ident: Identity, outcome: RecordOutcome, calling_aet: str) -> None:
    """Log what an instance began: a new study, a new series, or a settled series reopened."""
    context = {
        "study_uid": ident.study_instance_uid,
        "series_uid": ident.series_instance_uid,
    }
    if outcome.new_study:
        logger.info(
            "study %s: first instance received from %s",
            ident.study_instance_uid,
            calling_aet,
            extra=context,
        )
    if outcome.new_series:
        logger.info(
            "study %s: new series %s (%s, %r)",
            ident.study_instance_uid,
            ident.series_instance_uid,
            ident.modality,
            ident.series_description,
            extra=context,
        )
    elif outcome.reopened_series:
        logger.info(
            "study %s: settled series %s receives instances again",
            ident.study_instance_uid,
            ident.series_instance_uid,
            extra=context,
        )
