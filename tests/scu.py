"""A pynetdicom SCU for the tests: the real sending peer over 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scanet_node.service import Node


@contextmanager
def association(
    node: Node,
    *,
    calling: str = "TESTSCU",
    called: str | None = None,
    transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    sop_classes: Sequence[str] = (CTImageStorage,),
) -> Iterator[Any]:
    """An association to ``node``, released (or aborted) on exit."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, list(transfer_syntaxes))
    ae.add_requested_context(Verification)
    host, port = node.listener.address
    assoc = ae.associate(host, port, ae_title=called or node.settings.node.ae_title)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
