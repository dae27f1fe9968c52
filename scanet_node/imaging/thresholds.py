"""The default limits a series and a registration must meet: one source for the
``[imaging]`` settings (:mod:`scanet_node.config`) and the imaging code that applies them.

Pure and cheap: the configuration imports it without pydicom, numpy or ANTs.
Why each value: :class:`scanet_node.imaging.classify.ClassificationRules` and below.
"""

from __future__ import annotations

NCCT_MAX_SLICE_THICKNESS_MM = 5.5
CTA_MAX_SLICE_THICKNESS_MM = 2.5
MIN_IMAGES = 20
CTA_MIN_VESSEL_FRACTION = 0.005
NCCT_MAX_VESSEL_FRACTION = 0.003

#: Minimum similarity of the NCCT to the template (imaging/register.py). Calibrated on
#: synthetic studies: correct registrations score 0.92 (512 x 512) and 0.86 (128 x 128); the
#: true pose shifted by 5 mm 0.72-0.77, by 10 mm 0.57-0.61, rotated by 10 degrees 0.72-0.77,
#: by 20 degrees 0.53-0.56. Real heads will score lower than synthetic ones: recheck.
MIN_SIMILARITY = 0.7
