"""What the result builders take: plain data, filled in by the worker (pipeline/analysis.py).

``results.build(study, result) -> ResultObjects`` (the SR, the summary, the overlays):
``study`` says where the results are filed and which instances they derive from; ``result``
says what the analysis found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from scanet_node.catalog.models import JobOutcome
from scanet_node.errors import ScanetError


class ResultsError(ScanetError):
    """The result objects cannot be built from these inputs; the message says which and why."""


@dataclass(frozen=True)
class AlgorithmInfo:
    """TID 4019 Algorithm Identification, and what the report says about the weights."""

    name: str  # "SCANet"
    version: str  # software version + architecture, e.g. "0.1.0 scanet-112"
    checkpoint_sha256: str
    synthetic: bool  # trained on synthetic data only: every output says "research use"
    threshold: float  # the card's decision threshold on P(mTICI >= 2c)
    input_size: int


@dataclass(frozen=True)
class OverlaySlice:
    """One original NCCT slice and the attention drawn back onto it (native grid).

    ``hu`` and ``attention`` are ``(Rows, Columns)`` of ``source``; attention is in 0..1
    (SAT map times the slab's cross-attention weight, normalised over the study).
    """

    source: Dataset  # the NCCT instance (header; PixelData not needed)
    hu: npt.NDArray[np.float32]
    attention: npt.NDArray[np.float32]
    slab: int  # 0..25, inferior to superior
    slice_weight: float  # the slab's cross-attention weight (sums to 1 over 26 slabs)


@dataclass(frozen=True)
class StudyRefs:
    """Where the results are filed and what they derive from.

    ``target`` is one instance of the study that receives the results (the CTA's study when
    both exist): its patient, study and equipment attributes are copied. ``ncct`` and ``cta``
    are the headers of every instance of the series used (empty when missing). ``uid_seed``
    makes every UID of the results deterministic, so a job that is run again after a crash
    produces the same instances (the PACS keeps one copy). ``predecessor`` is the SR this one
    amends, or None.
    """

    target: Dataset
    ncct: list[Dataset]
    cta: list[Dataset]
    uid_seed: str
    predecessor: Dataset | None = None


@dataclass(frozen=True)
class AnalysisResult:
    """What the analysis found: a prediction, or why there is none."""

    status: JobOutcome
    algorithm: AlgorithmInfo
    probability: float | None = None  # P(mTICI >= 2c), 0..1
    positive: bool | None = None  # probability >= algorithm.threshold
    slice_weights: list[float] = field(default_factory=list)  # 26, inferior to superior
    overlays: list[OverlaySlice] = field(default_factory=list)  # most weighted first
    #: The point of highest attention, NCCT patient coordinates (LPS mm, in the NCCT's frame
    #: of reference), and the slab it lies in (0..25); None when not analysed.
    attention_point: tuple[float, float, float] | None = None
    attention_slab: int | None = None
    reason: str | None = None  # not analysable: a short code (no_cta, cta_missing, ...)
    detail: str | None = None  # ... and the sentence behind it
    qc: dict[str, Any] = field(default_factory=dict)  # named QC values (all passed)
