"""Sending results to a DICOM peer (C-STORE SCU), and when to try again.

``send`` opens one association, stores every instance it can and returns a ``SendOutcome``
that says whether a retry could help (``permanent``). It never raises for network problems:
a PACS that is down, refuses us or answers with a failure status is an outcome, not an error.
Which instances were recorded as delivered is the caller's bookkeeping (the catalog's
Delivery rows); this module touches no database.

The retry policy (``next_attempt_delay``, ``should_give_up``) is in :mod:`scanet_node.retry`,
beside the jobs'.
"""

from __future__ import annotations

import copy
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from scanet_node.dicom_status import (
    CANNOT_UNDERSTAND_CODES,
    MISMATCH_SOP_CLASS_CODES,
    OUT_OF_RESOURCES_CODES,
    WARNING_CODES,
    Status,
    label,
)
from scanet_node.errors import ScanetError

if TYPE_CHECKING:
    from scanet_node.config import Destination

logger = logging.getLogger(__name__)

#: An SCU may propose at most 128 presentation contexts (pynetdicom raises above).
MAX_CONTEXTS = 128

#: C-STORE statuses that mean "stored". 0x0111 (Duplicate SOP Instance) is not a C-STORE
#: status in PS3.4, but some archives answer it to a resend: they already hold the instance,
#: and our result UIDs are deterministic, so it is the same object.
_STORED = {
    Status.SUCCESS,
    Status.WARNING_OPTIONAL_ATTRIBUTES,
    Status.ATTRIBUTE_LIST_ERROR,
    Status.DUPLICATE_SOP_INSTANCE,
    Status.ATTRIBUTE_VALUE_OUT_OF_RANGE,
}

#: Failures outside the 0xA9xx and 0xCxxx ranges that a retry cannot fix: invalid object
#: instance, no such SOP class. 0xA7xx (out of resources) and unknown codes (0x0110
#: processing failure, ...) are retried until the give-up time.
_PERMANENT_CODES = {Status.INVALID_OBJECT_INSTANCE, Status.NO_SUCH_SOP_CLASS}

#: A-ASSOCIATE-RJ result codes (PS3.8 9.3.4).
_REJECTED_PERMANENT = 1


class PeerLike(Protocol):
    """Anything with an AE title, host and port: ``Peer`` or the config's ``Destination``."""

    @property
    def ae_title(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Peer:
    """A DICOM peer to send to; ``name`` is for messages (the AE title when empty)."""

    ae_title: str
    host: str
    port: int
    name: str = ""


@dataclass(frozen=True)
class SendOutcome:
    """What one association achieved.

    ``status`` is a short word for machines: success, unreachable, timeout, rejected,
    aborted, unsupported, refused (a C-STORE refused with 0xA7xx, 0x0122 or 0x0124),
    failed (another C-STORE failure status) or invalid (a dataset we cannot send).
    ``detail`` is the sentence for people. ``sent`` counts the instances the peer acknowledged
    with success or warning; ``statuses`` maps the SOP Instance UID of every instance that
    got a C-STORE response to its status code (instances never sent are absent).
    ``permanent`` is True when retrying the same send cannot succeed.
    """

    ok: bool
    permanent: bool
    status: str
    detail: str
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


class TlsSetupError(ScanetError):
    """A destination's TLS files cannot be loaded: no send can succeed until they are fixed."""


class StoreFailure(NamedTuple):
    """What a C-STORE failure status means: the short word, and whether a retry can help."""

    status: str
    permanent: bool


class _Stored(NamedTuple):
    """What the association stored: how many, and every C-STORE response's status by SOP
    Instance UID."""

    sent: int
    statuses: dict[str, int]


class _Summary(NamedTuple):
    """A send with failures, in one word and one sentence."""

    permanent: bool
    status: str
    detail: str


@dataclass
class _Failure:
    """One reason the send is not a full success."""

    status: str
    detail: str
    permanent: bool


def classify_store_status(code: int) -> StoreFailure | None:
    """``None`` when ``code`` means the instance is stored, else what the failure means.

    Success, the storage warnings (0xB000, 0xB006, 0xB007, any 0xBxxx) and 0x0111 are stored;
    0xA7xx (out of resources) is transient; 0x0122 (SOP class not supported), 0x0124 (not
    authorised), 0xA9xx (data set does not match SOP class) and 0xCxxx (cannot understand)
    are permanent; other failures are treated as transient.
    """
    if code in _STORED or code in WARNING_CODES:
        return None
    if code in OUT_OF_RESOURCES_CODES:
        return StoreFailure("refused", False)
    if code in (Status.SOP_CLASS_NOT_SUPPORTED, Status.NOT_AUTHORIZED):
        return StoreFailure("refused", True)
    if (
        code in _PERMANENT_CODES
        or code in MISMATCH_SOP_CLASS_CODES
        or code in CANNOT_UNDERSTAND_CODES
    ):
        return StoreFailure("failed", True)
    return StoreFailure("failed", False)


def _convertible(ts: UID) -> bool:
    """True for the syntaxes pynetdicom re-encodes between (uncompressed little endian)."""
    return ts.is_little_endian and not ts.is_compressed


def _sop_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid


def _load(item: Dataset | Path) -> Dataset:
    """The dataset to send; a file is read in full (it is re-encoded when needed)."""
    ds = item if isinstance(item, Dataset) else dcmread(item)
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword not in ds:
            raise ValueError(f"it has no {keyword}")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise ValueError("its file meta information has no Transfer Syntax UID")
    return ds


def _requested_contexts(datasets: Sequence[Dataset]) -> list[tuple[str, list[str]]]:
    """``(SOP class, transfer syntaxes)`` to propose: exactly the classes being sent.

    One context per SOP class with the datasets' own uncompressed syntaxes first, then
    Explicit and Implicit VR Little Endian; and one context per (SOP class, compressed
    syntax) so a peer that takes the compressed form gets it unchanged.
    """
    plain: dict[str, list[str]] = {}
    other: list[tuple[str, list[str]]] = []
    for ds in datasets:
        sop_class = str(ds.SOPClassUID)
        ts = UID(ds.file_meta.TransferSyntaxUID)
        syntaxes = plain.setdefault(sop_class, [])
        if _convertible(ts) and ts not in syntaxes:
            syntaxes.append(ts)
        elif not _convertible(ts) and (sop_class, [ts]) not in other:
            other.append((sop_class, [ts]))
    for syntaxes in plain.values():
        syntaxes.extend(
            ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts not in syntaxes
        )
    return [*plain.items(), *other]


class _ConnectErrors(logging.Handler):
    """Keeps pynetdicom's "TCP Initialisation Error" lines: the only place it says why a
    connection failed (refused, timed out, no route). Keyed by thread so concurrent sends
    each find their own."""

    prefix = "TCP Initialisation Error: "

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: dict[int | None, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.prefix):
            self.errors[record.thread] = message.removeprefix(self.prefix)


def _rejection(assoc: Association, where: str) -> _Failure:
    """Read the A-ASSOCIATE-RJ the peer sent: ``assoc.acceptor.primitive`` holds its result
    (1 permanent, 2 transient), result source and diagnostic, with ``*_str`` texts."""
    rj = assoc.acceptor.primitive
    if rj is None:  # not seen in practice: is_rejected is set from the received primitive
        return _Failure("rejected", f"association rejected by {where}", False)
    permanent = rj.result == _REJECTED_PERMANENT
    reason = rj.reason_str
    reason = reason[:1].lower() + reason[1:]  # "Called AE title not recognised" mid-sentence
    return _Failure(
        "rejected",
        f"association rejected {'permanently' if permanent else 'transiently'} by {where}: "
        f"{reason} (source: {rj.source_str})",
        permanent,
    )


def _not_established(
    assoc: Association,
    where: str,
    connect_error: str | None,
    connected: bool,
    elapsed: float,
    timeout: float,
) -> _Failure:
    """Why an association did not come up: unreachable, timeout, rejected or aborted."""
    if assoc.is_rejected:
        return _rejection(assoc, where)
    if not connected:
        error = connect_error or "connection failed"
        if "refused" in error.lower():
            return _Failure("unreachable", f"{where} refused the connection", False)
        if "timed out" in error.lower() or elapsed >= timeout * 0.95:
            return _Failure("timeout", f"{where} did not answer within {timeout:g} s", False)
        return _Failure("unreachable", f"{where} could not be reached: {error}", False)
    rsp = assoc.acceptor.primitive
    if rsp is not None and getattr(rsp, "result", None) == 0:
        # Accepted, but pynetdicom aborted because no presentation context was accepted.
        names = sorted({_sop_name(str(cx.abstract_syntax)) for cx in assoc.rejected_contexts})
        return _Failure(
            "unsupported",
            f"{where} accepted none of the SOP classes offered ({', '.join(names)})",
            True,
        )
    if rsp is None and elapsed >= timeout * 0.95:
        return _Failure("timeout", f"{where} did not answer the association request", False)
    return _Failure("aborted", f"{where} aborted the association request", False)


def _accepted_syntaxes(assoc: Association) -> dict[str, list[UID]]:
    accepted: dict[str, list[UID]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), []).append(UID(cx.transfer_syntax[0]))
    return accepted


def _fit_to_contexts(ds: Dataset, accepted: dict[str, list[UID]], where: str) -> Dataset:
    """``ds`` as it can be sent over the accepted contexts, or ValueError saying why not.

    Uncompressed little endian datasets go as they are (pynetdicom switches between
    Explicit and Implicit VR itself); a compressed one is decompressed (on a copy) when the
    peer took only uncompressed syntaxes for its SOP class.
    """
    sop_class = str(ds.SOPClassUID)
    syntaxes = accepted.get(sop_class)
    if not syntaxes:
        raise ValueError(f"SOP class {_sop_name(sop_class)} not accepted by {where}")
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts in syntaxes or (_convertible(ts) and any(_convertible(t) for t in syntaxes)):
        return ds
    if not any(_convertible(t) for t in syntaxes):
        raise ValueError(
            f"{where} accepts {_sop_name(sop_class)} only as "
            f"{', '.join(t.name for t in syntaxes)}, not {ts.name}"
        )
    plain = copy.deepcopy(ds)
    try:
        plain.decompress(generate_instance_uid=False)  # same instance, only re-encoded
    except Exception as exc:  # any decoder failure: the instance cannot go over this link
        raise ValueError(f"cannot decompress {ts.name} for {where}: {exc}") from exc
    return plain


def _summarise(failures: list[_Failure], sent: int, total: int) -> _Summary:
    """The outcome of a send with at least one failure.

    Permanent only when every failure is: a retry then cannot help. Otherwise the first
    transient failure names the outcome, since it is what a retry is for.
    """
    transient = [f for f in failures if not f.permanent]
    permanent = not transient
    lead = failures[0] if permanent else transient[0]
    detail = lead.detail
    others = len(failures) - 1
    if others:
        detail += f" (and {others} more failure{'s' if others > 1 else ''})"
    return _Summary(permanent, lead.status, f"{detail}; {sent} of {total} instances stored")


def send(
    datasets: Sequence[Dataset | Path],
    peer: PeerLike,
    *,
    calling_aet: str,
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str = "",
) -> SendOutcome:
    """Store ``datasets`` on ``peer`` over one association.

    Only the SOP classes being sent are proposed, each with its native transfer syntax first.
    When the peer accepts some SOP classes and not others, what can be sent is sent and the
    rest is reported as a permanent "unsupported" failure (the caller keeps the statuses of
    the stored ones). The first C-STORE that gets no answer (timeout or abort) ends the
    association; the rest is left for the retry.

    Parameters
    ----------
    datasets
        Datasets (with file meta) or paths of DICOM files.
    peer
        The destination: ``ae_title``, ``host``, ``port`` and ``name``.
    calling_aet
        Our AE title.
    timeout
        Seconds for each of: TCP connect, association answer, each C-STORE response.
    ssl_context
        TLS client context; the peer's certificate is checked against ``server_hostname``
        (default: the peer's host).
    server_hostname
        The name the peer's certificate must carry, when it is not the host we connect to.
    """
    label = peer.name or peer.ae_title
    where = f"{label} at {peer.host}:{peer.port}"
    total = len(datasets)
    if not datasets:
        return SendOutcome(True, False, "success", "nothing to send", 0, {})

    failures: list[_Failure] = []
    loaded: list[Dataset] = []
    for index, item in enumerate(datasets):
        try:
            loaded.append(_load(item))
        except (OSError, InvalidDicomError, ValueError, AttributeError) as exc:
            what = f"file {item.name}" if isinstance(item, Path) else f"dataset #{index + 1}"
            failures.append(_Failure("invalid", f"{what} cannot be sent: {exc}", True))

    tls = (ssl_context, server_hostname or peer.host) if ssl_context is not None else None
    stored = _associate_and_store(loaded, peer, where, calling_aet, timeout, tls, failures)
    sent = stored.sent
    if failures:
        summary = _summarise(failures, sent, total)
        result = SendOutcome(
            False, summary.permanent, summary.status, summary.detail, sent, stored.statuses
        )
    else:
        result = SendOutcome(
            True, False, "success", f"{sent} instance(s) stored on {where}", sent, stored.statuses
        )
    log = logger.info if result.ok else logger.warning
    log(
        "C-STORE to %s (%s %s:%d): %d/%d stored, %s%s",
        label,
        peer.ae_title,
        peer.host,
        peer.port,
        sent,
        total,
        result.status,
        "" if result.ok else f" ({'permanent' if result.permanent else 'transient'})",
        extra={"peer": label, "status": result.status},
    )
    return result


def _associate_and_store(
    datasets: list[Dataset],
    peer: PeerLike,
    where: str,
    calling_aet: str,
    timeout: float,
    tls: tuple[ssl.SSLContext, str] | None,
    failures: list[_Failure],
) -> _Stored:
    """The association itself; appends to ``failures``, returns what was stored."""
    if not datasets:
        return _Stored(0, {})
    ae = _application_entity(datasets, calling_aet, timeout, failures)
    if ae is None:
        return _Stored(0, {})
    assoc = _associate(ae, peer, where, timeout, tls, failures)
    if assoc is None:
        return _Stored(0, {})
    try:
        return _store_all(assoc, datasets, where, timeout, failures)
    finally:
        if assoc.is_established:
            assoc.release()


def _application_entity(
    datasets: list[Dataset], calling_aet: str, timeout: float, failures: list[_Failure]
) -> AE | None:
    """Our AE, proposing the contexts ``datasets`` need, with ``timeout`` on every wait; None
    (and a failure) when they cannot be proposed."""
    contexts = _requested_contexts(datasets)
    if len(contexts) > MAX_CONTEXTS:
        failures.append(
            _Failure(
                "invalid",
                f"{len(contexts)} presentation contexts needed, at most {MAX_CONTEXTS} allowed",
                True,
            )
        )
        return None
    try:
        ae = AE(ae_title=calling_aet)
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
    except (ValueError, TypeError) as exc:
        failures.append(_Failure("invalid", f"cannot set up the association: {exc}", True))
        return None
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


def _associate(
    ae: AE,
    peer: PeerLike,
    where: str,
    timeout: float,
    tls: tuple[ssl.SSLContext, str] | None,
    failures: list[_Failure],
) -> Association | None:
    """The established association with ``peer``; None (and the failure that says why: not
    reachable, timed out, rejected, aborted) when it did not come up."""
    connected: list[bool] = []
    capture = _ConnectErrors()
    transport_log = logging.getLogger("pynetdicom.transport")
    transport_log.addHandler(capture)
    started = time.monotonic()
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            tls_args=tls,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.append(True))],
        )
    except OSError as exc:  # name resolution happens before any thread starts
        failures.append(_Failure("unreachable", f"{where} could not be reached: {exc}", False))
        return None
    except (ValueError, TypeError) as exc:
        failures.append(_Failure("invalid", f"cannot request an association: {exc}", True))
        return None
    finally:
        transport_log.removeHandler(capture)
    elapsed = time.monotonic() - started
    if not assoc.is_established:
        error = capture.errors.get(assoc.dul.ident)
        failures.append(_not_established(assoc, where, error, bool(connected), elapsed, timeout))
        return None
    return assoc


def _store_all(
    assoc: Association,
    datasets: list[Dataset],
    where: str,
    timeout: float,
    failures: list[_Failure],
) -> _Stored:
    """C-STORE each dataset the accepted contexts can carry; the first C-STORE left
    unanswered (timeout or abort) ends the sending."""
    sent = 0
    statuses: dict[str, int] = {}
    accepted = _accepted_syntaxes(assoc)
    for ds in datasets:
        try:
            ready = _fit_to_contexts(ds, accepted, where)
        except ValueError as exc:
            failures.append(_Failure("unsupported", str(exc), True))
            continue
        if not assoc.is_established:
            failures.append(_Failure("aborted", f"{where} ended the association", False))
            break
        started = time.monotonic()
        try:
            response = assoc.send_c_store(ready)
        except (ValueError, AttributeError, RuntimeError) as exc:
            failures.append(_Failure("invalid", f"cannot send an instance: {exc}", True))
            continue
        if "Status" not in response:
            failures.append(_unanswered(where, time.monotonic() - started, timeout))
            break
        code = int(response.Status)
        statuses[str(ds.SOPInstanceUID)] = code
        verdict = classify_store_status(code)
        if verdict is None:
            sent += 1
        else:
            failures.append(_store_failure(verdict, ds, code, response, where))
    return _Stored(sent, statuses)


def _unanswered(where: str, waited: float, timeout: float) -> _Failure:
    """A C-STORE that got no response: it timed out, or the peer aborted."""
    if waited >= timeout * 0.95:
        return _Failure("timeout", f"{where} did not answer a C-STORE in {timeout:g} s", False)
    return _Failure("aborted", f"{where} aborted the association during a C-STORE", False)


def _store_failure(
    verdict: StoreFailure, ds: Dataset, code: int, response: Dataset, where: str
) -> _Failure:
    """A C-STORE answered with a failure status, with the peer's error comment if any."""
    comment = str(response.get("ErrorComment", "") or "").strip()
    return _Failure(
        verdict.status,
        f"{where} answered C-STORE of a {_sop_name(str(ds.SOPClassUID))} "
        f"with {label(code)}" + (f" ({comment})" if comment else ""),
        verdict.permanent,
    )


def client_ssl_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """The TLS client context for a destination (``[[destinations]] tls_*``).

    The peer's certificate is checked against ``ca`` (default: the system's trusted CAs);
    ``cert`` and ``key`` are our certificate for a peer that asks for one (mutual TLS).

    Raises
    ------
    ssl.SSLError, OSError
        When a file is not a certificate or key, or cannot be read.
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca is not None else None
    )
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@dataclass(frozen=True)
class Connection:
    """How to reach one peer: its address, and the TLS it asks for (None: plain TCP)."""

    peer: Peer
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str = ""


def connection(peer: Peer, destinations: Sequence[Destination]) -> Connection:
    """The connection to ``peer``, with the TLS of the configured destination of its name
    (``[[destinations]] tls*``; none when no destination has that name).

    Raises
    ------
    TlsSetupError
        When that destination's TLS files cannot be loaded.
    """
    destination = next((d for d in destinations if d.name == peer.name), None)
    if destination is None or not destination.tls:
        return Connection(peer)
    try:
        context = client_ssl_context(destination.tls_ca, destination.tls_cert, destination.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"cannot load the TLS files of destination {destination.name}: {exc}"
        ) from exc
    return Connection(peer, context, destination.tls_server_name)
