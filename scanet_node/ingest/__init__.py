"""The DICOM listener and the spool."""

from __future__ import annotations
