"""C-ECHO as a client (Verification SCU, PS3.4 A.4): is a DICOM peer there and will it talk to us?

``scanet-node echo`` uses it to check a destination before results are sent to it; it sits
beside :mod:`scanet_node.results.deliver`, the other client of the node's peers.
"""

from __future__ import annotations

from dataclasses import dataclass

from scanet_node.dicom_status import Status


@dataclass(frozen=True)
class EchoResult:
    """What a C-ECHO got: the association, and the peer's status when one came back."""

    established: bool
    rejected: bool
    status: int | None

    @property
    def ok(self) -> bool:
        """The peer answered the C-ECHO with Success."""
        return self.status == Status.SUCCESS


def echo(host: str, port: int, *, calling_aet: str, called_aet: str, timeout: float) -> EchoResult:
    """Send one C-ECHO to ``called_aet`` at ``host:port`` as ``calling_aet``.

    ``timeout`` (seconds) bounds the association's set-up and each network wait.
    """
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        return EchoResult(established=False, rejected=bool(assoc.is_rejected), status=None)
    response = assoc.send_c_echo()
    assoc.release()
    status = int(response.Status) if response and "Status" in response else None
    return EchoResult(established=True, rejected=False, status=status)
