"""All result objects of one analysis, in the order they are sent."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from scanet_node.config import RESULTS_SERIES_NUMBER
from scanet_node.results.sc import build_overlays, build_summary
from scanet_node.results.sr import build_sr
from scanet_node.results.types import AnalysisResult, StudyRefs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultObjects:
    """The result objects of one analysis by name; iterating gives them in sending order
    (the SR, the summary, the overlays)."""

    sr: Dataset
    summary: Dataset
    overlays: list[Dataset]

    def __iter__(self) -> Iterator[Dataset]:
        yield self.sr
        yield self.summary
        yield from self.overlays

    def __len__(self) -> int:
        return 2 + len(self.overlays)


def build(
    study: StudyRefs, result: AnalysisResult, *, series_number: int = RESULTS_SERIES_NUMBER
) -> ResultObjects:
    """The SR, the summary image and one overlay image per ``result.overlays`` item.

    SR in series ``series_number``, the summary in +2, the overlays in +1. Every UID comes
    from ``study.uid_seed``, so building again gives the same instances.

    Raises
    ------
    ResultsError
        When an input cannot make valid objects; the message names it.
    """
    objects = ResultObjects(
        sr=build_sr(study, result, series_number=series_number),
        summary=build_summary(study, result, series_number=series_number + 2),
        overlays=build_overlays(study, result, series_number=series_number + 1),
    )
    logger.info(
        "built %d result objects (%s)",
        len(objects),
        result.status,
        extra={"study_uid": objects.sr.StudyInstanceUID},
    )
    return objects
