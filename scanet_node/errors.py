"""The exception hierarchy: one root, one narrow subclass per stage."""

from __future__ import annotations


class ScanetError(Exception):
    """Root of every error scanet-node raises on purpose."""


class ConfigError(ScanetError):
    """The configuration is invalid; the message names the key and the problem."""


class CatalogError(ScanetError):
    """The catalog could not be opened or updated."""


class SpoolError(ScanetError):
    """The spool folder cannot be used."""


class ListenerError(ScanetError):
    """The DICOM listener cannot start (address in use, bad TLS files, ...)."""


class ImagingError(ScanetError):
    """A series cannot be made into a volume, or a study into the model input.

    The message says which series or file and why.
    """


class CheckpointError(ScanetError):
    """Model weights that cannot be used (missing, or not made for this code), with the reason."""


class IngestError(ScanetError):
    """An instance could not be accepted; carries the DICOM status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
