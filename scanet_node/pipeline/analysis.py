"""One job's analysis: the inputs from the spool, ``prepare``, the model, the results on disk.

Calls the stages through their plain interfaces (imaging.prepare, model.Predictor.predict,
imaging.overlay, results.build, results.write_results) and keeps what the worker records: the
outcome, the stage timings and the files to send. The results of job N lie in
``DATA_DIR/results/job-N/``; their UIDs derive from the study and the job's inputs, so a job
that runs again after a crash rebuilds the very same instances and the PACS keeps one copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from scanet_node import __version__
from scanet_node.catalog.jobs import JobInfo, JobQueue
from scanet_node.catalog.models import JobOutcome, MissingSeries
from scanet_node.config import Settings
from scanet_node.timing import timed

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from scanet_node.imaging.model_input import ModelInput
    from scanet_node.model.predictor import Prediction, Predictor
    from scanet_node.results.types import AlgorithmInfo, AnalysisResult, OverlaySlice

logger = logging.getLogger(__name__)

#: Reason code of the report sent when a job has failed for good (results/codes.py).
ANALYSIS_FAILED = "analysis_failed"


@dataclass
class Analysis:
    """What the worker records for a finished job."""

    outcome: str  # JobOutcome.ANALYSED | JobOutcome.NOT_ANALYSABLE
    reason: str | None
    probability: float | None
    positive: bool | None
    model: str
    sr_sop_instance_uid: str
    results_dir: Path
    files: list[Path]
    timings: dict[str, float] = field(default_factory=dict)
    #: An analysed study's input descriptors, kept for drift monitoring (monitoring.descriptors).
    descriptors: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobInputs:
    """The spool files of a job's NCCT and CTA and their headers (empty for a series it
    lacks), in the same order."""

    ncct_paths: list[Path]
    cta_paths: list[Path]
    ncct: list[Dataset]
    cta: list[Dataset]


def algorithm_info(predictor: Predictor) -> AlgorithmInfo:
    """TID 4019 identification of the loaded weights."""
    from scanet_node.results.types import AlgorithmInfo

    card = predictor.card
    return AlgorithmInfo(
        name="SCANet",
        version=f"{__version__} ({card.architecture['kind']}, {predictor.input_size} px)",
        checkpoint_sha256=card.weights_sha256,
        synthetic=bool(card.synthetic),
        threshold=float(card.threshold),
        input_size=predictor.input_size,
    )


def _load_inputs(job: JobInfo, queue: JobQueue, spool_root: Path) -> JobInputs:
    """The spool files of the job's NCCT and CTA, and their headers (pixels not read)."""

    def paths(series_uid: str | None) -> list[Path]:
        return (
            [spool_root / p for p in queue.catalog.instance_paths(series_uid)] if series_uid else []
        )

    ncct_paths, cta_paths = paths(job.ncct_series_uid), paths(job.cta_series_uid)
    return JobInputs(
        ncct_paths=ncct_paths,
        cta_paths=cta_paths,
        ncct=[dcmread(p, stop_before_pixels=True) for p in ncct_paths],
        cta=[dcmread(p, stop_before_pixels=True) for p in cta_paths],
    )


@contextmanager
def _linked_inputs(folder: Path, job: JobInfo, inputs: JobInputs) -> Iterator[Path]:
    """A study folder of symbolic links to the job's NCCT and CTA spool files, for
    ``prepare``; removed afterwards."""
    if folder.exists():
        shutil.rmtree(folder)
    series = {
        job.ncct_series_uid or "ncct": inputs.ncct_paths,
        job.cta_series_uid or "cta": inputs.cta_paths,
    }
    for uid, paths in series.items():
        target = folder / uid
        target.mkdir(parents=True)
        for n, path in enumerate(paths):
            os.symlink(path.resolve(), target / f"{n:05d}.dcm")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _results_dir(settings: Settings, job: JobInfo) -> Path:
    return settings.results_dir / f"job-{job.id}"


def analyse(
    job: JobInfo,
    *,
    queue: JobQueue,
    settings: Settings,
    predictor: Predictor,
    spool_root: Path,
) -> Analysis:
    """Run one job to its results on disk; a QC refusal is an outcome, not an error."""
    started = time.perf_counter()
    inputs = _load_inputs(job, queue, spool_root)
    timings = {"load": time.perf_counter() - started}
    algorithm = algorithm_info(predictor)
    descriptors: dict[str, Any] = {}
    if job.missing:
        result = _partner_missing(job.missing, algorithm, settings)
    else:
        with _linked_inputs(_results_dir(settings, job) / "input", job, inputs) as links:
            result = _analyse_pair(
                links,
                inputs,
                algorithm,
                settings,
                predictor,
                spool_root,
                timings,
                started,
                descriptors,
            )
    analysis = _report(job, result, inputs, queue, settings, timings, started)
    analysis.descriptors = descriptors
    return analysis


def _partner_missing(missing: str, algorithm: AlgorithmInfo, settings: Settings) -> AnalysisResult:
    """The "not analysable" result of a job whose NCCT or CTA never came."""
    from scanet_node.results.types import AnalysisResult

    have, lacking = ("NCCT", "CTA") if missing == MissingSeries.CTA else ("CTA", "NCCT")
    window = settings.pipeline.pairing_window_seconds
    return AnalysisResult(
        status=JobOutcome.NOT_ANALYSABLE,
        algorithm=algorithm,
        reason=f"{lacking.lower()}_missing",
        detail=(
            f"{missing}: no {lacking} of this patient arrived within {window:.0f} s of the {have}"
        ),
    )


def _analyse_pair(
    links: Path,
    inputs: JobInputs,
    algorithm: AlgorithmInfo,
    settings: Settings,
    predictor: Predictor,
    spool_root: Path,
    timings: dict[str, float],
    started: float,
    descriptors: dict[str, Any],
) -> AnalysisResult:
    """Prepare the NCCT + CTA, run the model and draw its attention; the QC refusal that
    stopped it instead, if any. Adds the stages' seconds to ``timings`` and the inputs'
    descriptors for drift monitoring to ``descriptors``."""
    from scanet_node.imaging.qc import NotAnalysable
    from scanet_node.results.types import AnalysisResult

    try:
        model_input = _prepare(links, settings, predictor, spool_root)
    except NotAnalysable as exc:
        timings["register"] = time.perf_counter() - started - timings["load"]
        return AnalysisResult(
            status=JobOutcome.NOT_ANALYSABLE,
            algorithm=algorithm,
            reason=exc.reason,
            detail=exc.detail,
        )
    _add_prepare_timings(timings, model_input.timings)
    with timed(timings, "infer"):
        prediction = predictor.predict(model_input)
    with timed(timings, "overlay"):
        attention = prediction.attention_volume(predictor.input_size)
        slabs = settings.results.overlay_slices
        shown = _overlays(model_input, prediction, attention, inputs, slabs)
        point, point_slab = model_input.attention_point(attention)
    descriptors.update(_descriptors(model_input, inputs, prediction.probability))
    return AnalysisResult(
        status=JobOutcome.ANALYSED,
        algorithm=algorithm,
        probability=prediction.probability,
        positive=prediction.positive,
        slice_weights=[float(w) for w in prediction.slice_weights],
        overlays=shown,
        attention_point=(float(point[0]), float(point[1]), float(point[2])),
        attention_slab=point_slab,
        qc=dict(model_input.qc),
    )


def _descriptors(model_input: ModelInput, inputs: JobInputs, probability: float) -> dict[str, Any]:
    """What drift monitoring keeps of this study's inputs (monitoring.descriptors)."""
    from scanet_node.imaging.model_input import (
        MODEL_INPUT_CTA_WINDOW_HU,
        MODEL_INPUT_NCCT_WINDOW_HU,
    )
    from scanet_node.monitoring.descriptors import study_descriptors

    return study_descriptors(
        model_input.tensor,
        model_input.qc,
        ncct_header=inputs.ncct[0] if inputs.ncct else None,
        cta_header=inputs.cta[0] if inputs.cta else None,
        probability=probability,
        ncct_window_hu=MODEL_INPUT_NCCT_WINDOW_HU,
        cta_window_hu=MODEL_INPUT_CTA_WINDOW_HU,
    )


def _prepare(links: Path, settings: Settings, predictor: Predictor, spool_root: Path) -> ModelInput:
    """The model input of the linked study (imaging.prepare, with the NCCT prepared ahead)."""
    from scanet_node.imaging.classify import rules_from_settings
    from scanet_node.imaging.ncct_cache import NcctCache
    from scanet_node.imaging.prepare import prepare

    return prepare(
        links,
        rules=rules_from_settings(settings.imaging),
        method=settings.imaging.registration,
        size=predictor.input_size,
        min_similarity=settings.imaging.min_registration_similarity,
        ncct_cache=NcctCache.in_spool(spool_root),
    )


def _add_prepare_timings(timings: dict[str, float], prepared: dict[str, float]) -> None:
    """Fold ``prepare``'s own timings into the job's stages."""
    timings["load"] += prepared.get("load", 0.0)
    timings["register"] = sum(  # with the wait for an NCCT being prepared
        prepared.get(k, 0.0) for k in ("ncct_wait", "brain_extraction", "registration", "tensor")
    )
    # The NCCT's half, done while the CTA arrived (not part of this job's time).
    timings["ncct_ahead"] = prepared.get("ncct_ahead", 0.0)


def _overlays(
    model_input: ModelInput,
    prediction: Prediction,
    attention: npt.NDArray[np.float32],
    inputs: JobInputs,
    count: int,
) -> list[OverlaySlice]:
    """The acquired NCCT images through the ``count`` most weighted slabs, with the attention
    (imaging.overlay), as the results take them."""
    from scanet_node.imaging.overlay import attention_overlays
    from scanet_node.results.types import OverlaySlice

    drawn = attention_overlays(
        model_input, attention, prediction.slice_weights, inputs.ncct, inputs.ncct_paths, count
    )
    return [
        OverlaySlice(
            source=inputs.ncct[d.instance],
            hu=d.hu,
            attention=d.attention,
            slab=d.slab,
            slice_weight=float(prediction.slice_weights[d.slab]),
        )
        for d in drawn
    ]


def answer_failure(
    job: JobInfo,
    *,
    queue: JobQueue,
    settings: Settings,
    predictor: Predictor,
    spool_root: Path,
    detail: str,
) -> Analysis:
    """The report of a job that failed for good: "not analysable", because the analysis
    failed, and ``detail`` (a sentence for the radiologist) says why. No image is decoded."""
    from scanet_node.results.types import AnalysisResult

    started = time.perf_counter()
    inputs = _load_inputs(job, queue, spool_root)
    timings = {"load": time.perf_counter() - started}
    result = AnalysisResult(
        status=JobOutcome.NOT_ANALYSABLE,
        algorithm=algorithm_info(predictor),
        reason=ANALYSIS_FAILED,
        detail=detail,
    )
    return _report(job, result, inputs, queue, settings, timings, started)


def _predecessor(job: JobInfo, queue: JobQueue) -> Dataset | None:
    """The SR of the job this one amends, when it has one on disk."""
    from scanet_node.results.files import previous_sr

    if job.supersedes_id is None:
        return None
    previous = queue.job(job.supersedes_id)
    if previous is None or not previous.results_dir:
        return None
    sr_path = previous_sr(Path(previous.results_dir))
    return dcmread(sr_path) if sr_path is not None else None


def _report(
    job: JobInfo,
    result: AnalysisResult,
    inputs: JobInputs,
    queue: JobQueue,
    settings: Settings,
    timings: dict[str, float],
    started: float,
) -> Analysis:
    """Build the SR and SC of ``result``, write them in the job's results folder; the job's
    Analysis."""
    from scanet_node.results import build, write_results
    from scanet_node.results.types import StudyRefs

    tic = time.perf_counter()
    study = StudyRefs(
        target=(inputs.cta or inputs.ncct)[0],
        ncct=inputs.ncct,
        cta=inputs.cta,
        uid_seed=f"scanet-node:{job.study_instance_uid}:{job.signature}",
        predecessor=_predecessor(job, queue),
    )
    objects = build(study, result, series_number=settings.results.series_number)
    folder = _results_dir(settings, job)
    files = write_results(objects, folder)
    timings["build"] = time.perf_counter() - tic
    timings["total"] = time.perf_counter() - started
    algorithm = result.algorithm
    return Analysis(
        outcome=result.status,
        reason=None
        if result.status == JobOutcome.ANALYSED
        else f"{result.reason}: {result.detail}",
        probability=result.probability,
        positive=result.positive,
        model=f"{algorithm.name} {algorithm.version} {algorithm.checkpoint_sha256[:12]}",
        sr_sop_instance_uid=str(objects.sr.SOPInstanceUID),
        results_dir=folder,
        files=files,
        timings=timings,
    )
