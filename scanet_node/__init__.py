"""scanet-node: a DICOM node that runs SCANet on acute stroke CT and CTA studies."""

from __future__ import annotations

__version__ = "0.1.0"
