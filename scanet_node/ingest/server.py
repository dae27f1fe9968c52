"""The DICOM listener: a pynetdicom AE with Verification and Storage SCP.

Association policy: the called AE title must be ours; when
``[security] allowed_calling_aets`` is set, only those calling AE titles get in, and a
calling AE title bound to host addresses by ``[security.ae_hosts]`` gets in only from one
of them.
Every storage SOP class is accepted in the transfer syntaxes scanners and PACS
send; instances are kept in the transfer syntax they arrived in.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from scanet_node.config import Settings
from scanet_node.errors import ListenerError
from scanet_node.ingest.handlers import StoreService

logger = logging.getLogger(__name__)

#: Transfer syntaxes accepted as SCP. pynetdicom accepts, in each presentation
#: context, the first of these that the peer proposes, so the order is our
#: preference: lossless compressed (smaller, nothing lost), then uncompressed,
#: then lossy only when that is all a peer offers. What arrives is kept as is.
ACCEPTED_TRANSFER_SYNTAXES = [
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
    RLELossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
]


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context from ``[security]``, or None when TLS is off."""
    sec = settings.security
    if sec.tls_cert is None or sec.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(sec.tls_cert), str(sec.tls_key))
    if sec.tls_ca is not None:
        context.load_verify_locations(cafile=str(sec.tls_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _normalise_address(address: str) -> str:
    """An IP address in one canonical text form (IPv4-mapped IPv6 as plain IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def resolve_ae_hosts(ae_hosts: dict[str, list[str]]) -> dict[str, frozenset[str]]:
    """The addresses each bound calling AE title may connect from, host names resolved.

    Raises
    ------
    ListenerError
        When a host name of ``[security.ae_hosts]`` does not resolve.
    """
    resolved: dict[str, frozenset[str]] = {}
    for aet, hosts in ae_hosts.items():
        addresses: set[str] = set()
        for host in hosts:
            try:
                infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            except OSError as exc:
                raise ListenerError(
                    f"[security.ae_hosts] {aet}: cannot resolve {host!r}: {exc}"
                ) from None
            addresses.update(_normalise_address(str(info[4][0])) for info in infos)
        resolved[aet] = frozenset(addresses)
    return resolved


class _HostBinding:
    """EVT_REQUESTED: refuse a bound calling AE title that connects from another address."""

    def __init__(self, allowed: dict[str, frozenset[str]]) -> None:
        self.allowed = allowed

    def __call__(self, event: Any) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        addresses = self.allowed.get(calling)
        if addresses is None or _normalise_address(assoc.requestor.address) in addresses:
            return
        from pynetdicom import evt

        # A-ASSOCIATE-RJ: rejected permanent, DUL service user, calling AE not recognised.
        assoc.requestor.ae_title = calling
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        evt.trigger(
            assoc,
            evt.EVT_REJECTED,
            {"reason": f"calling AE title {calling} is not allowed from this address"},
        )
        assoc.kill()  # as pynetdicom's own rejection does: the DUL sends the A-ASSOCIATE-RJ


def _set_nodelay(event: Any) -> None:
    # The C-STORE response is a small write; without TCP_NODELAY it can wait
    # for the peer's delayed ACK (tens of ms per instance on loopback).
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Listener:
    """The running DICOM listener.

    Parameters
    ----------
    settings
        The node's settings (``[node]``, ``[security]``).
    service
        The event handlers that file what arrives.
    """

    def __init__(self, settings: Settings, service: StoreService) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        # Our own handlers write the log lines; pynetdicom's standard ones are noise.
        _config.LOG_HANDLER_LEVEL = "none"
        self.settings = settings
        self.service = service
        ae = AE(ae_title=settings.node.ae_title)
        ae.maximum_associations = settings.node.max_associations
        ae.maximum_pdu_size = settings.node.max_pdu_size
        ae.require_called_aet = True
        ae.require_calling_aet = list(settings.security.allowed_calling_aets)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae = ae
        self._handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, _set_nodelay),
            (evt.EVT_C_ECHO, service.handle_echo),
            (evt.EVT_C_STORE, service.handle_store),
            (evt.EVT_ACCEPTED, service.handle_accepted),
            (evt.EVT_PDU_RECV, service.handle_pdu_recv),
            (evt.EVT_RELEASED, service.handle_released),
            (evt.EVT_ABORTED, service.handle_aborted),
            (evt.EVT_CONN_CLOSE, service.handle_conn_close),
            (evt.EVT_REJECTED, service.handle_rejected),
        ]
        if settings.security.ae_hosts:
            self._handlers.append(
                (evt.EVT_REQUESTED, _HostBinding(resolve_ae_hosts(settings.security.ae_hosts)))
            )
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the listener is bound to (the real port when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the listener is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        """Bind and serve in background threads; return the bound address."""
        node = self.settings.node
        try:
            ssl_context = build_ssl_context(self.settings)
        except (OSError, ssl.SSLError) as exc:
            raise ListenerError(f"cannot load the TLS certificate or key: {exc}") from exc
        try:
            self._server = self.ae.start_server(
                (node.host, node.port),
                block=False,
                ssl_context=ssl_context,
                evt_handlers=self._handlers,
            )
        except OSError as exc:
            raise ListenerError(
                f"cannot listen on {node.host}:{node.port}: {exc.strerror or exc}"
            ) from exc
        return self.address

    def active_associations(self) -> int:
        """How many associations are open now."""
        return len(self.ae.active_associations)

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let open associations finish for ``grace_seconds``, abort the rest."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        # Stop accepting first (end the accept loop, close the listening socket)
        # while the open associations, each in its own thread, carry on.
        socketserver.BaseServer.shutdown(server)
        server.server_close()
        deadline = time.monotonic() + grace_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = self.ae.active_associations
        for assoc in remaining:
            assoc.abort()
        if remaining:
            logger.warning("aborted %d association(s) still open at shutdown", len(remaining))
        if server in self.ae._servers:
            self.ae._servers.remove(server)
