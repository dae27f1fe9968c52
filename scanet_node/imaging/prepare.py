"""``prepare(study_dir) -> ModelInput``: from a study's DICOM folder to the SCANet input.

Choose the NCCT and CTA, load them to HU, check it is a head, extract the brain,
register CTA -> NCCT -> template, check the registration and the brain coverage,
resample both once onto the model grid and window them. Any refusal is a
:class:`~scanet_node.imaging.qc.NotAnalysable` with a named reason.

The NCCT's half (:func:`prepare_ncct`: head, brain, NCCT -> template, the NCCT on the grid)
needs no CTA, so a worker runs it while the CTA arrives and keeps it in the spool's cache
(:mod:`~scanet_node.imaging.ncct_cache`); ``prepare`` then loads the CTA (averaged to the
grid's finest spacing as it is decoded), takes the NCCT's half and does the CTA's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanet_node.errors import ImagingError
from scanet_node.imaging.brain import BrainExtractionError, extract_brain
from scanet_node.imaging.classify import ClassificationRules
from scanet_node.imaging.classify_read import choose_series, image_evidence
from scanet_node.imaging.model_input import (
    MODEL_INPUT_CTA_WINDOW_HU,
    MODEL_INPUT_NCCT_WINDOW_HU,
    SIZE,
    ModelInput,
    fine_grid,
    slab_grid,
    slab_mask,
    to_slabs,
    window_to_unit,
)
from scanet_node.imaging.ncct_cache import NcctCache, PreparedNcct
from scanet_node.imaging.ncct_cache import signature as ncct_signature
from scanet_node.imaging.qc import MIN_BRAIN_COVERAGE, NotAnalysable, brain_coverage
from scanet_node.imaging.register import (
    Method,
    Registration,
    RegistrationError,
    register_cta,
    register_ncct,
)
from scanet_node.imaging.series import Volume, find_series, load_series
from scanet_node.imaging.template import load_template
from scanet_node.imaging.thresholds import MIN_SIMILARITY
from scanet_node.timing import Stopwatch, timed

logger = logging.getLogger(__name__)

#: How long ``prepare`` waits for an NCCT that a worker is preparing ahead of its job before
#: it prepares the NCCT itself (an NCCT takes about 4 s on 2 cores).
NCCT_WAIT_SECONDS = 30.0

#: The intracranial mask is grown by this much before zeroing outside it, so that vessels
#: at the brain surface and in the basal cisterns stay in the input.
MASK_MARGIN_MM = 1.5


class _CachedLoader:
    """Loads each series once, whether the image check or the preparation asks first."""

    def __init__(self) -> None:
        self._volumes: dict[tuple[Path, ...], Volume] = {}

    def __call__(self, paths: Sequence[Path], max_pixel_mm: float | None = None) -> Volume:
        """The series; with ``max_pixel_mm`` it may come block-averaged (``load_series``)."""
        key = tuple(paths)
        if key not in self._volumes:
            self._volumes[key] = load_series(key, max_pixel_mm=max_pixel_mm)
        return self._volumes[key]

    def forget(self, paths: Sequence[Path]) -> None:
        """Drop a series that is no longer needed."""
        self._volumes.pop(tuple(paths), None)


def _load(load: _CachedLoader, paths: Sequence[Path], max_pixel_mm: float | None = None) -> Volume:
    try:
        return load(paths, max_pixel_mm)
    except ImagingError as exc:
        raise NotAnalysable("unreadable_series", str(exc)) from exc


@functools.cache
def _template_brain_points(step: int = 3) -> npt.NDArray[np.float64]:
    """MNI points of the template's brain (every ``step`` mm), for the coverage checks of both
    halves; computed once, like the template itself (read-only)."""
    template = load_template()
    ijk = np.argwhere(template.brain_mask_1mm[::step, ::step, ::step])[:, ::-1] * step
    points = template.grid_1mm.index_to_mni(ijk)
    points.setflags(write=False)
    return points


def prepare_ncct(
    ncct: Volume,
    *,
    method: Method = "affine",
    size: int = SIZE,
    min_similarity: float = MIN_SIMILARITY,
) -> PreparedNcct:
    """The NCCT's half of :func:`prepare`, which can run before the CTA has arrived.

    Head check, brain extraction, NCCT -> template, the NCCT on the model's grid and its brain
    coverage: all that the CTA's half needs, and none of the full-size NCCT.

    Raises
    ------
    NotAnalysable
        Not a head, no brain, a registration below ``min_similarity``, or the brain not fully
        covered.
    """
    timings: dict[str, float] = {}
    evidence = image_evidence(ncct)
    if not evidence.is_head:
        raise NotAnalysable("not_a_head", f"NCCT: {evidence.summary}")
    with timed(timings, "brain_extraction"):
        try:
            brain = extract_brain(ncct.hu, ncct.affine)
        except BrainExtractionError as exc:
            raise NotAnalysable("brain_extraction_failed", str(exc)) from exc
    with timed(timings, "registration"):
        try:
            half = register_ncct(
                ncct.hu,
                ncct.affine,
                brain=brain,
                method=method,
                grid=fine_grid(size),
                min_similarity=min_similarity,
            )
        except RegistrationError as exc:
            raise NotAnalysable("registration_dissimilar", str(exc)) from exc
    shape = (int(ncct.hu.shape[0]), int(ncct.hu.shape[1]), int(ncct.hu.shape[2]))
    coverage = brain_coverage(
        _template_brain_points(),
        lambda m: half.transform.mni_to_patient(m, "ncct"),
        shape,
        ncct.affine,
    )
    _check_coverage("ncct", coverage)
    return PreparedNcct(
        study_instance_uid=str(ncct.study_instance_uid),
        series_instance_uid=str(ncct.series_instance_uid),
        frame_of_reference_uid=str(ncct.frame_of_reference_uid),
        shape=shape,
        affine=np.asarray(ncct.affine, dtype=np.float64),
        reasons=[f"NCCT: {c}" for c in ncct.corrections]
        + [f"NCCT: problem: {p}" for p in ncct.problems],
        head=evidence.summary,
        coverage=coverage,
        registration=half,
        timings=timings,
    )


def _check_coverage(label: str, fraction: float) -> None:
    if fraction < MIN_BRAIN_COVERAGE:
        raise NotAnalysable(
            "incomplete_coverage",
            f"{label.upper()} covers {fraction:.0%} of the brain "
            f"(at least {MIN_BRAIN_COVERAGE:.0%} needed)",
        )


def prepare(
    study_dir: Path,
    *,
    rules: ClassificationRules | None = None,
    method: Method = "affine",
    size: int = SIZE,
    min_similarity: float = MIN_SIMILARITY,
    ncct_cache: NcctCache | None = None,
) -> ModelInput:
    """Make the model input of the study in ``study_dir`` (one folder per series inside).

    With ``ncct_cache``, the NCCT's half (:func:`prepare_ncct`) is taken from it when an entry
    with the NCCT's signature is there, and put in it otherwise.

    Raises
    ------
    NotAnalysable
        With the reason: no NCCT or CTA, unreadable series, not a head, no brain, the
        registration failed its similarity check, or the brain is not fully covered.
    """
    timings: dict[str, float] = {}
    watch = Stopwatch()
    load = _CachedLoader()
    chosen = _choose_ncct_and_cta(study_dir, rules, load)
    # The CTA first: its NCCT may be being prepared meanwhile (pipeline/worker.py).
    # Only ever used resampled onto the model's grid: averaged to its finest spacing as it
    # is decoded (a quarter of the memory and of the work that follows for a 512 x 512 CTA).
    with timed(timings, "load"):
        cta = _load(load, chosen.cta_paths, min(fine_grid(size).spacing))
    ncct = _ncct_half(chosen, load, ncct_cache, method, size, min_similarity, timings)
    reasons = [*chosen.reasons, *ncct.reasons]
    reasons += [f"CTA: {c}" for c in cta.corrections]
    reasons += [f"CTA: problem: {p}" for p in cta.problems]
    registration, coverage = _cta_half(ncct, cta, timings)
    del cta
    load.forget(chosen.cta_paths)

    with timed(timings, "tensor"):
        tensor = _tensor(registration, fine_grid(size))
    timings["total"] = watch.total()
    qc: dict[str, Any] = {
        "head": ncct.head,
        "brain_volume_ml": round(registration.brain_volume_ml, 1),
        "registration_similarity": round(float(registration.similarity), 4),
        "min_similarity": min_similarity,
        "brain_coverage": {k: round(v, 4) for k, v in coverage.items()},
        "method": method,
    }
    logger.info(
        "prepared study %s: similarity %.3f, coverage NCCT %.0f%% CTA %.0f%%, %.1f s%s",
        chosen.study_uid,
        registration.similarity,
        100 * coverage["ncct"],
        100 * coverage["cta"],
        timings["total"],
        " (NCCT prepared before)" if timings["ncct_cached"] else "",
        extra={"study_uid": chosen.study_uid},
    )
    return ModelInput(
        tensor=tensor,
        grid=slab_grid(size),
        study_instance_uid=ncct.study_instance_uid,
        ncct_series_uid=chosen.ncct_uid,
        cta_series_uid=chosen.cta_uid,
        reasons=reasons,
        qc=qc,
        registration=registration,
        ncct_shape=ncct.shape,
        ncct_affine=ncct.affine,
        timings=timings,
    )


@dataclass(frozen=True)
class _Chosen:
    """The study's NCCT and CTA as classification chose them, and its reasons."""

    study_uid: str
    ncct_uid: str
    cta_uid: str
    ncct_paths: tuple[Path, ...]
    cta_paths: tuple[Path, ...]
    reasons: tuple[str, ...]


def _choose_ncct_and_cta(
    study_dir: Path, rules: ClassificationRules | None, load: _CachedLoader
) -> _Chosen:
    """Classify the study's series and choose its NCCT and CTA; refuse when one is missing."""
    series = find_series(study_dir)
    selection = choose_series(study_dir, rules, load=load, found=series)
    reasons = selection.reasons
    if selection.ncct_uid is None:
        raise NotAnalysable("no_ncct", "; ".join(reasons) or "the study holds no series")
    if selection.cta_uid is None:
        raise NotAnalysable("no_cta", "; ".join(reasons))
    found = {s.series_instance_uid: s for s in series}
    return _Chosen(
        study_uid=str(found[selection.ncct_uid].header.get("StudyInstanceUID", "")),
        ncct_uid=selection.ncct_uid,
        cta_uid=selection.cta_uid,
        ncct_paths=found[selection.ncct_uid].paths,
        cta_paths=found[selection.cta_uid].paths,
        reasons=reasons,
    )


def _ncct_half(
    chosen: _Chosen,
    load: _CachedLoader,
    ncct_cache: NcctCache | None,
    method: Method,
    size: int,
    min_similarity: float,
    timings: dict[str, float],
) -> PreparedNcct:
    """The NCCT's half: from the cache when a worker prepared it ahead, else prepared now."""
    ncct: PreparedNcct | None = None
    key = None
    if ncct_cache is not None:
        key = ncct_signature(
            chosen.ncct_paths, series_instance_uid=chosen.ncct_uid, method=method, size=size
        )
        with timed(timings, "ncct_wait"):
            ncct = ncct_cache.wait(chosen.study_uid, key, NCCT_WAIT_SECONDS)
        if ncct is not None and ncct.registration.similarity < min_similarity:
            ncct = None  # prepared under a lower [imaging] min_registration_similarity
    timings["ncct_cached"] = float(ncct is not None)
    if ncct is not None:  # the seconds its preparation took, before this call
        timings["ncct_ahead"] = round(sum(ncct.timings.values()), 3)
        return ncct
    with timed(timings, "load"):
        volume = _load(load, chosen.ncct_paths)
    ncct = prepare_ncct(volume, method=method, size=size, min_similarity=min_similarity)
    timings.update(ncct.timings)  # a cached NCCT's were spent before the job
    del volume
    load.forget(chosen.ncct_paths)
    if ncct_cache is not None and key is not None:
        ncct_cache.put(key, ncct)
    return ncct


def _cta_half(
    ncct: PreparedNcct, cta: Volume, timings: dict[str, float]
) -> tuple[Registration, dict[str, float]]:
    """CTA -> NCCT on top of the NCCT's half, and the brain coverage of both series."""
    with timed(timings, "registration"):
        # One Frame of Reference (one session): the rigid search starts where the CTA lies.
        same_frame = bool(ncct.frame_of_reference_uid) and (
            ncct.frame_of_reference_uid == cta.frame_of_reference_uid
        )
        registration = register_cta(ncct.registration, cta.hu, cta.affine, same_frame=same_frame)
    timings.update({f"registration.{k}": v for k, v in registration.timings.items()})
    coverage = {
        "ncct": ncct.coverage,
        "cta": brain_coverage(
            _template_brain_points(),
            lambda m: registration.mni_to_patient(m, "cta"),
            cta.hu.shape,
            cta.affine,
        ),
    }
    _check_coverage("cta", coverage["cta"])
    return registration, coverage


def _tensor(registration: Any, grid: Any) -> npt.NDArray[np.float32]:
    inside = slab_mask(registration.brain_mask, grid, MASK_MARGIN_MM)
    ncct = window_to_unit(to_slabs(registration.ncct), *MODEL_INPUT_NCCT_WINDOW_HU)
    cta = window_to_unit(to_slabs(registration.cta, "max"), *MODEL_INPUT_CTA_WINDOW_HU)
    return np.stack([np.where(inside, ncct, 0.0), np.where(inside, cta, 0.0)]).astype(np.float32)
