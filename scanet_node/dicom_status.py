"""The DIMSE status codes the node answers and reads (PS3.4 Annex B, PS3.7 Annex C).

The one place a status number is written: the C-STORE SCP's answers, the result
deliverer's reading of a peer's answer, C-ECHO's success and the labels the admin
pages and metrics show. Pure and cheap to import (no pydicom, no pynetdicom).
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """Named DIMSE status codes; the 0xC2xx ones are the node's own C-STORE refusals."""

    SUCCESS = 0x0000
    #: Warning: requested optional attributes are not supported.
    WARNING_OPTIONAL_ATTRIBUTES = 0x0001
    ATTRIBUTE_LIST_ERROR = 0x0107
    #: Not a C-STORE status in PS3.4, but some archives answer it to a resend.
    DUPLICATE_SOP_INSTANCE = 0x0111
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    INVALID_OBJECT_INSTANCE = 0x0117
    NO_SUCH_SOP_CLASS = 0x0118
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    OUT_OF_RESOURCES = 0xA700
    MISMATCH_SOP_CLASS = 0xA900
    CANNOT_DECODE = 0xC210
    PROCESSING_FAILURE = 0xC211
    INVALID_UID = 0xC220
    MISMATCH_SOP_INSTANCE = 0xC221
    CONFLICT = 0xC222


#: Storage warnings (0xBxxx): the instance is stored.
WARNING_CODES = range(0xB000, 0xC000)
#: Refused: out of resources (0xA7xx), worth a retry.
OUT_OF_RESOURCES_CODES = range(0xA700, 0xA800)
#: Error: data set does not match SOP class (0xA9xx).
MISMATCH_SOP_CLASS_CODES = range(0xA900, 0xAA00)
#: Error: cannot understand (0xCxxx).
CANNOT_UNDERSTAND_CODES = range(0xC000, 0xD000)


def label(code: int) -> str:
    """``code`` as the admin pages, metrics and logs write it: ``0xA700``."""
    return f"0x{code:04X}"
