"""Validation of the UIDs that name files in the spool."""

from __future__ import annotations

import re

from scanet_node.dicom_status import Status
from scanet_node.errors import IngestError

# PS3.5 9.1: digits and dots, at most 64 characters. Components with a leading
# zero are not conformant but some devices write them; they are harmless in a
# path, so we accept them (tolerant when reading).
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def check_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a valid UID string, or raise IngestError naming ``keyword``.

    Only a string of digits and single dots, at most 64 characters, passes, so a
    checked UID can never name a parent folder or an absolute path.
    """
    if value is None:
        raise IngestError(Status.INVALID_UID, f"{keyword} is missing")
    text = str(value).rstrip("\x00 ")
    if not text:
        raise IngestError(Status.INVALID_UID, f"{keyword} is empty")
    if len(text) > 64 or not _UID.fullmatch(text):
        raise IngestError(Status.INVALID_UID, f"{keyword} is not a valid UID")
    return text
