"""One job's analysis: the inputs from the spool, ``prepare``, the model, the results on disk.

Calls the stages through their plain interfaces (imaging.prepare, model.Predictor.predict,
results.build) and keeps what the worker records: the outcome, the stage timings and the
files to send. The results of job N lie in ``DATA_DIR/results/job-N/``; their UIDs derive
from the study and the job's inputs, so a job that runs again after a crash rebuilds the very
same instances and the PACS keeps one copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset

from scanet_node import __version__
from scanet_node.catalog.jobs import JobInfo, JobQueue
from scanet_node.config import Settings

if TYPE_CHECKING:
    from scanet_node.imaging.model_input import ModelInput
    from scanet_node.model.predictor import Prediction, Predictor
    from scanet_node.results.types import AlgorithmInfo, AnalysisResult, OverlaySlice

logger = logging.getLogger(__name__)

SR_FILE = "00-sr.dcm"
#: Reason code of the report sent when a job has failed for good (results/codes.py).
ANALYSIS_FAILED = "analysis_failed"
OVERLAY_PNG = "overlay.png"
SUMMARY_PNG = "summary.png"


@dataclass
class Analysis:
    """What the worker records for a finished job."""

    outcome: str  # "analysed" | "not_analysable"
    reason: str | None
    probability: float | None
    positive: bool | None
    model: str
    sr_sop_instance_uid: str
    results_dir: Path
    files: list[Path]
    timings: dict[str, float] = field(default_factory=dict)


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


def _headers(paths: list[Path]) -> list[Dataset]:
    return [dcmread(p, stop_before_pixels=True) for p in paths]


def _input_paths(job: JobInfo, queue: JobQueue, spool_root: Path) -> dict[str, list[Path]]:
    """The spool files of the job's NCCT and CTA, by role (none for a series it lacks)."""
    return {
        role: [spool_root / p for p in queue.catalog.instance_paths(uid)] if uid else []
        for role, uid in (("ncct", job.ncct_series_uid), ("cta", job.cta_series_uid))
    }


def _link_inputs(folder: Path, series: dict[str, list[Path]]) -> Path:
    """A study folder of symbolic links to the chosen series' spool files, for ``prepare``."""
    if folder.exists():
        shutil.rmtree(folder)
    for uid, paths in series.items():
        target = folder / uid
        target.mkdir(parents=True)
        for n, path in enumerate(paths):
            os.symlink(path.resolve(), target / f"{n:05d}.dcm")
    return folder


def overlays(
    model_input: ModelInput,
    prediction: Prediction,
    attention: npt.NDArray[np.float32],
    ncct_headers: list[Dataset],
    ncct_paths: list[Path],
    count: int,
) -> list[OverlaySlice]:
    """The acquired NCCT images through the ``count`` most weighted slabs, with the attention.

    ``attention`` is the prediction's attention volume on the model input's grid. Each image
    is drawn in the geometry of the instance it references (see
    :mod:`scanet_node.imaging.overlay`), whatever ``prepare`` corrected on the way.
    """
    from scanet_node.imaging.overlay import draw_attention
    from scanet_node.results.types import OverlaySlice

    # Attention only where the model saw the head: the input is zero outside the mask.
    inside = (model_input.tensor > 0).any(axis=0)
    volume = attention * inside
    peak = float(volume.max())
    drawn = draw_attention(
        model_input,
        volume / peak if peak > 0 else volume,
        ncct_headers,
        ncct_paths,
        [int(s) for s in np.argsort(-prediction.slice_weights)],
        count,
    )
    return [
        OverlaySlice(
            source=ncct_headers[d.instance],
            hu=d.hu,
            attention=d.attention,
            slab=d.slab,
            slice_weight=float(prediction.slice_weights[d.slab]),
        )
        for d in drawn
    ]


def _write(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Write the results (atomically each), SR first; return their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets):
        kind = "sr" if ds.Modality == "SR" else "sc"
        path = folder / (SR_FILE if n == 0 and kind == "sr" else f"{n:02d}-{kind}.dcm")
        tmp = path.with_suffix(".part")
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def result_files(results_dir: Path) -> list[Path]:
    """The DICOM files of a job's results, SR first."""
    return sorted(results_dir.glob("*.dcm"))


def analyse(
    job: JobInfo,
    *,
    queue: JobQueue,
    settings: Settings,
    predictor: Predictor,
    spool_root: Path,
) -> Analysis:
    """Run one job to its results on disk; a QC refusal is an outcome, not an error."""
    from scanet_node.imaging.classify import rules_from_settings
    from scanet_node.imaging.ncct_cache import NcctCache
    from scanet_node.imaging.prepare import prepare
    from scanet_node.imaging.qc import NotAnalysable
    from scanet_node.results.types import AnalysisResult

    timings: dict[str, float] = {}
    started = time.perf_counter()
    folder = settings.results_dir / f"job-{job.id}"
    paths = _input_paths(job, queue, spool_root)
    headers = {role: _headers(p) for role, p in paths.items()}
    timings["load"] = time.perf_counter() - started
    algorithm = algorithm_info(predictor)
    result: AnalysisResult
    if job.missing:
        have, lacking = ("NCCT", "CTA") if job.missing == "CTA missing" else ("CTA", "NCCT")
        window = settings.pipeline.pairing_window_seconds
        result = AnalysisResult(
            status="not_analysable",
            algorithm=algorithm,
            reason=f"{lacking.lower()}_missing",
            detail=(
                f"{job.missing}: no {lacking} of this patient arrived within "
                f"{window:.0f} s of the {have}"
            ),
        )
    else:
        inputs = _link_inputs(
            folder / "input",
            {
                job.ncct_series_uid or "ncct": paths["ncct"],
                job.cta_series_uid or "cta": paths["cta"],
            },
        )
        try:
            model_input = prepare(
                inputs,
                rules=rules_from_settings(settings.imaging),
                method=settings.imaging.registration,
                size=predictor.input_size,
                min_similarity=settings.imaging.min_registration_similarity,
                ncct_cache=NcctCache.in_spool(spool_root),
            )
        except NotAnalysable as exc:
            result = AnalysisResult(
                status="not_analysable",
                algorithm=algorithm,
                reason=exc.reason,
                detail=exc.detail,
            )
            timings["register"] = time.perf_counter() - started - timings["load"]
        else:
            t = model_input.timings
            timings["load"] += t.get("load", 0.0)
            timings["register"] = sum(  # with the wait for an NCCT being prepared
                t.get(k, 0.0) for k in ("ncct_wait", "brain_extraction", "registration", "tensor")
            )
            # The NCCT's half, done while the CTA arrived (not part of this job's time).
            timings["ncct_ahead"] = t.get("ncct_ahead", 0.0)
            tic = time.perf_counter()
            prediction = predictor.predict(model_input)
            timings["infer"] = time.perf_counter() - tic
            tic = time.perf_counter()
            attention = prediction.attention_volume(predictor.input_size)
            shown = overlays(
                model_input,
                prediction,
                attention,
                headers["ncct"],
                paths["ncct"],
                settings.results.overlay_slices,
            )
            point, point_slab = model_input.attention_point(attention)
            timings["overlay"] = time.perf_counter() - tic
            result = AnalysisResult(
                status="analysed",
                algorithm=algorithm,
                probability=prediction.probability,
                positive=prediction.positive,
                slice_weights=[float(w) for w in prediction.slice_weights],
                overlays=shown,
                attention_point=(float(point[0]), float(point[1]), float(point[2])),
                attention_slab=point_slab,
                qc=dict(model_input.qc),
            )
        finally:
            shutil.rmtree(inputs, ignore_errors=True)

    return _report(job, result, headers, folder, queue, settings, timings, started)


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
    folder = settings.results_dir / f"job-{job.id}"
    headers = {role: _headers(p) for role, p in _input_paths(job, queue, spool_root).items()}
    timings = {"load": time.perf_counter() - started}
    result = AnalysisResult(
        status="not_analysable",
        algorithm=algorithm_info(predictor),
        reason=ANALYSIS_FAILED,
        detail=detail,
    )
    return _report(job, result, headers, folder, queue, settings, timings, started)


def _report(
    job: JobInfo,
    result: AnalysisResult,
    headers: dict[str, list[Dataset]],
    folder: Path,
    queue: JobQueue,
    settings: Settings,
    timings: dict[str, float],
    started: float,
) -> Analysis:
    """Build the SR and SC of ``result``, write them under ``folder``; the job's Analysis."""
    from scanet_node.results import build, write_png
    from scanet_node.results.types import StudyRefs

    algorithm = result.algorithm
    tic = time.perf_counter()
    predecessor = None
    if job.supersedes_id is not None:
        previous = queue.job(job.supersedes_id)
        if previous is not None and previous.results_dir:
            sr_path = Path(previous.results_dir) / SR_FILE
            if sr_path.is_file():
                predecessor = dcmread(sr_path)
    target = (headers["cta"] or headers["ncct"])[0]
    study = StudyRefs(
        target=target,
        ncct=headers["ncct"],
        cta=headers["cta"],
        uid_seed=f"scanet-node:{job.study_instance_uid}:{job.signature}",
        predecessor=predecessor,
    )
    datasets = build(study, result, series_number=settings.results.series_number)
    files = _write(datasets, folder)
    sc = [ds for ds in datasets if ds.Modality != "SR"]
    if sc:  # the summary, then the overlays (results.build)
        write_png(sc[0], folder / SUMMARY_PNG)
        write_png(sc[1] if len(sc) > 1 else sc[0], folder / OVERLAY_PNG)
    timings["build"] = time.perf_counter() - tic
    timings["total"] = time.perf_counter() - started
    return Analysis(
        outcome=result.status,
        reason=None if result.status == "analysed" else f"{result.reason}: {result.detail}",
        probability=result.probability,
        positive=result.positive,
        model=f"{algorithm.name} {algorithm.version} {algorithm.checkpoint_sha256[:12]}",
        sr_sop_instance_uid=str(datasets[0].SOPInstanceUID),
        results_dir=folder,
        files=files,
        timings=timings,
    )
