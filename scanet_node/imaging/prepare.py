"""``prepare(study_dir) -> ModelInput``: from a study's DICOM folder to the SCANet input.

Choose the NCCT and CTA, load them to HU, check it is a head, extract the brain,
register CTA -> NCCT -> template, check the registration and the brain coverage,
resample both once onto the model grid and window them. Any refusal is a
:class:`~scanet_node.imaging.qc.NotAnalysable` with a named reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanet_node.errors import ImagingError
from scanet_node.imaging.brain import BrainExtractionError, extract_brain
from scanet_node.imaging.classify import ClassificationRules, choose_series, image_evidence
from scanet_node.imaging.model_input import (
    CTA_WINDOW_HU,
    NCCT_WINDOW_HU,
    SIZE,
    ModelInput,
    fine_grid,
    slab_grid,
    slab_mask,
    to_slabs,
    window,
)
from scanet_node.imaging.qc import MIN_BRAIN_COVERAGE, NotAnalysable, brain_coverage
from scanet_node.imaging.register import MIN_SIMILARITY, Method, RegistrationError, register
from scanet_node.imaging.series import Volume, find_series, load_series
from scanet_node.imaging.template import load_template

logger = logging.getLogger(__name__)

#: The intracranial mask is grown by this much before zeroing outside it, so that vessels
#: at the brain surface and in the basal cisterns stay in the input.
MASK_MARGIN_MM = 1.5


class _CachedLoader:
    """Loads each series once, whether the image check or the preparation asks first."""

    def __init__(self) -> None:
        self._volumes: dict[tuple[Path, ...], Volume] = {}

    def __call__(self, paths: Sequence[Path]) -> Volume:
        key = tuple(paths)
        if key not in self._volumes:
            self._volumes[key] = load_series(key)
        return self._volumes[key]


def _template_brain_points(step: int = 3) -> npt.NDArray[np.float64]:
    template = load_template()
    ijk = np.argwhere(template.brain_mask_1mm[::step, ::step, ::step])[:, ::-1] * step
    return template.grid_1mm.index_to_mni(ijk)


def prepare(
    study_dir: Path,
    *,
    rules: ClassificationRules | None = None,
    method: Method = "affine",
    size: int = SIZE,
    min_similarity: float = MIN_SIMILARITY,
) -> ModelInput:
    """Make the model input of the study in ``study_dir`` (one folder per series inside).

    Raises
    ------
    NotAnalysable
        With the reason: no NCCT or CTA, unreadable series, not a head, no brain, the
        registration failed its similarity check, or the brain is not fully covered.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    load = _CachedLoader()
    selection = choose_series(study_dir, rules, load=load)
    reasons = list(selection.reasons)
    if selection.ncct_uid is None:
        raise NotAnalysable("no_ncct", "; ".join(reasons) or "the study holds no series")
    if selection.cta_uid is None:
        raise NotAnalysable("no_cta", "; ".join(reasons))
    paths = {s.series_instance_uid: s.paths for s in find_series(study_dir)}
    try:
        ncct = load(paths[selection.ncct_uid])
        cta = load(paths[selection.cta_uid])
    except ImagingError as exc:
        raise NotAnalysable("unreadable_series", str(exc)) from exc
    for label, volume in (("NCCT", ncct), ("CTA", cta)):
        reasons += [f"{label}: {c}" for c in volume.corrections]
        reasons += [f"{label}: problem: {p}" for p in volume.problems]
    timings["load"] = time.perf_counter() - started

    evidence = image_evidence(ncct)
    if not evidence.is_head:
        raise NotAnalysable("not_a_head", f"NCCT: {evidence.summary}")

    t = time.perf_counter()
    try:
        brain = extract_brain(ncct.hu, ncct.affine)
    except BrainExtractionError as exc:
        raise NotAnalysable("brain_extraction_failed", str(exc)) from exc
    timings["brain_extraction"] = time.perf_counter() - t

    t = time.perf_counter()
    grid = fine_grid(size)
    try:
        registration = register(
            ncct.hu,
            ncct.affine,
            cta.hu,
            cta.affine,
            brain=brain,
            method=method,
            grid=grid,
            min_similarity=min_similarity,
        )
    except RegistrationError as exc:
        raise NotAnalysable("registration_dissimilar", str(exc)) from exc
    timings["registration"] = time.perf_counter() - t
    timings.update({f"registration.{k}": v for k, v in registration.timings.items()})

    points = _template_brain_points()
    coverage = {
        "ncct": brain_coverage(
            points, lambda m: registration.mni_to_patient(m, "ncct"), ncct.hu.shape, ncct.affine
        ),
        "cta": brain_coverage(
            points, lambda m: registration.mni_to_patient(m, "cta"), cta.hu.shape, cta.affine
        ),
    }
    for label, fraction in coverage.items():
        if fraction < MIN_BRAIN_COVERAGE:
            raise NotAnalysable(
                "incomplete_coverage",
                f"{label.upper()} covers {fraction:.0%} of the brain "
                f"(at least {MIN_BRAIN_COVERAGE:.0%} needed)",
            )

    t = time.perf_counter()
    tensor = _tensor(registration, grid)
    timings["tensor"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    qc: dict[str, Any] = {
        "head": evidence.summary,
        "brain_volume_ml": round(brain.volume_ml, 1),
        "registration_similarity": round(float(registration.similarity), 4),
        "min_similarity": min_similarity,
        "brain_coverage": {k: round(v, 4) for k, v in coverage.items()},
        "method": method,
    }
    logger.info(
        "prepared study %s: similarity %.3f, coverage NCCT %.0f%% CTA %.0f%%, %.1f s",
        ncct.study_instance_uid,
        registration.similarity,
        100 * coverage["ncct"],
        100 * coverage["cta"],
        timings["total"],
        extra={"study_uid": ncct.study_instance_uid},
    )
    return ModelInput(
        tensor=tensor,
        grid=slab_grid(size),
        study_instance_uid=str(ncct.study_instance_uid),
        ncct_series_uid=selection.ncct_uid,
        cta_series_uid=selection.cta_uid,
        reasons=reasons,
        qc=qc,
        registration=registration,
        ncct_shape=(int(ncct.hu.shape[0]), int(ncct.hu.shape[1]), int(ncct.hu.shape[2])),
        ncct_affine=np.asarray(ncct.affine, dtype=np.float64),
        ncct_hu=ncct.hu,
        timings=timings,
    )


def _tensor(registration: Any, grid: Any) -> npt.NDArray[np.float32]:
    inside = slab_mask(registration.brain_mask, grid, MASK_MARGIN_MM)
    ncct = window(to_slabs(registration.ncct), *NCCT_WINDOW_HU)
    cta = window(to_slabs(registration.cta, "max"), *CTA_WINDOW_HU)
    return np.stack([np.where(inside, ncct, 0.0), np.where(inside, cta, 0.0)]).astype(np.float32)
