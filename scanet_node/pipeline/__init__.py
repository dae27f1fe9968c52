"""Timed work and the hand-over from ingest to analysis."""

from __future__ import annotations
