"""All result objects of one analysis, in the order they are sent."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from scanet_node.results.sc import build_overlays, build_summary
from scanet_node.results.sr import build_sr
from scanet_node.results.types import AnalysisResult, StudyRefs

logger = logging.getLogger(__name__)


def build(study: StudyRefs, result: AnalysisResult, *, series_number: int = 9900) -> list[Dataset]:
    """The SR, the summary image and one overlay image per ``result.overlays`` item.

    SR first (series ``series_number``, 9900 by default), then the summary (+2), then the
    overlays (+1). Every UID
    comes from ``study.uid_seed``, so building again gives the same instances.

    Raises
    ------
    ResultsError
        When an input cannot make valid objects; the message names it.
    """
    out = [
        build_sr(study, result, series_number=series_number),
        build_summary(study, result, series_number=series_number + 2),
    ]
    out.extend(build_overlays(study, result, series_number=series_number + 1))
    logger.info(
        "built %d result objects (%s)",
        len(out),
        result.status,
        extra={"study_uid": out[0].StudyInstanceUID},
    )
    return out
