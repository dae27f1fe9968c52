"""Synthetic head CT + CTA studies of acute large-vessel occlusion with known ground truth.

For the demo, the tests and training only: never imported by the serving path.
Every study is synthetic, made from the MNI152 2009a template (see
``data/LICENSE-MNI152.txt``); none comes from a patient.
"""

from __future__ import annotations

#: Study variants the generator writes (names only, so the CLI can list them cheaply).
VARIANT_NAMES = (
    "standard",
    "reversed",
    "gantry-tilt",
    "missing-slice",
    "no-cta",
    "jpeg-lossless",
    "rle",
)
