"""From the series of one study to the SCANet input: load, classify, brain-extract, register, QC.

Modules: ``series`` (files of a series -> volume in HU), ``classify`` (which series is the NCCT,
which the CTA, and why). Heavy dependencies are imported by the modules that use them, never
here.
"""

from __future__ import annotations
