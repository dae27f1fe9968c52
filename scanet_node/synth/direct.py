"""The SCANet input of a synthetic study, made straight from the phantom in template space.

Preparing a study from its DICOM costs ~15 s (brain extraction, ANTs registration); a
cohort of hundreds costs hours. A synthetic study is defined in MNI space in the first
place, so its template-space input can be sampled from the phantom directly: the same
fine grid as :func:`scanet_node.imaging.model_input.fine_grid`, the same 5-plane slabs
(NCCT mean, CTA maximum), the same windows and intracranial mask, with scanner-like noise added.
``tests/integration/test_synth_direct.py`` checks that this matches what
:func:`scanet_node.imaging.prepare.prepare` makes of the same study's DICOM.

Each study has its own patient (``synth/subject.py``): the template's grid is mapped into the
patient's head by the patient's best affine, which is what an ideal affine registration finds,
so the smooth deformation beyond it is left in the input as ``prepare`` leaves it.

The NCCT is given the profile of a 5 mm slice interpolated onto 1 mm planes and an in-plane
blur; the intracranial mask is the patient's cavity, grown a little more than ``prepare`` grows
the extracted brain. The CTA gets a 3D blur that stands for the
scanner's reconstruction kernel and the resampling of its thin slices. What differs,
knowingly: no error of the registration itself beyond the patient's non-affine residual, and
independent (white) noise per fine plane.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]

from scanet_node.imaging.model_input import (
    MODEL_INPUT_CTA_WINDOW_HU,
    MODEL_INPUT_NCCT_WINDOW_HU,
    PLANES_PER_SLAB,
    SLAB_MM,
    Z_BOTTOM_MNI,
    fine_grid,
    slab_mask,
    to_slabs,
    window_to_unit,
)
from scanet_node.synth.cohort import (
    _LABEL_COLUMNS,
    _STREAM_IMAGES,
    CohortSummary,
    StudyPlan,
    finish_cohort,
    images_stream,
    label_row,
    occlusion_of,
    plan_cohort,
    subject_of,
)

if TYPE_CHECKING:
    from scanet_node.synth.subject import Subject

#: Noise (HU, standard deviation) added to each 1 mm plane before slab averaging: the
#: scanner's noise after registration has resampled it onto the 1 mm planes.
NCCT_PLANE_NOISE_HU = 3.0
CTA_PLANE_NOISE_HU = 6.0
#: The NCCT is acquired in 5 mm slices and reaches the 1 mm planes by interpolation: its
#: profile across the planes is about 9 mm wide (a box), and the scanner blurs it in-plane
#: (Gaussian, sigma in mm). Without this the skull base and the vault's inner table differ
#: from what ``prepare`` makes of the DICOM.
NCCT_Z_PROFILE_MM = 9.0
NCCT_BLUR_MM = 1.0
#: The CTA reaches the 1 mm planes through the scanner's reconstruction kernel and the
#: registration's linear resampling of its thin slices, which soften the thin cortical
#: arteries; a Gaussian of this sigma (mm, in 3D) stands for both. Without it the standardised
#: CTA input spreads 1.25-1.35 times wider than ``prepare``'s on the same studies; with it,
#: 0.9-1.1 times (4 held-out studies of seed 2 at 112 px; test_synth_direct.py checks 1.2).
CTA_BLUR_MM = 0.8
#: ``prepare`` grows its mask 1.5 mm around the brain it extracts from the patient's NCCT,
#: which stays about a voxel inside the intracranial cavity (partial volume with the inner
#: table): here the patient's cavity is eroded by one fine voxel, then grown by this.
MASK_MARGIN_MM = 1.0


def clot_slab(plan: StudyPlan) -> int:
    """Index of the slab that holds the clot's centre."""
    z = float(occlusion_of(plan).clot_center_mni[2])
    return int(np.clip(np.round((z - Z_BOTTOM_MNI) / SLAB_MM), 0, 25))


def template_input(
    plan: StudyPlan,
    size: int = 224,
    *,
    noise: bool = True,
    subject: Subject | None = None,
    fixed_anatomy: bool = False,
    contrast_scale: float = 1.0,
) -> npt.NDArray[np.float32]:
    """``(2, 26, size, size)`` float32 in 0..1: the study's model input, without DICOM.

    The template's grid is mapped into the patient's head by the patient's best affine (what
    an ideal affine registration finds), so the smooth deformation beyond it stays, as
    ``prepare`` leaves it. ``subject`` replaces the plan's patient (its tree must carry the
    plan's occlusion, as :func:`~scanet_node.synth.cohort.occlusion_of` builds it);
    ``fixed_anatomy`` uses the atlas head; ``noise=False`` gives the noise-free input.
    ``contrast_scale`` scales the arteries' enhancement, as a bolus caught early or late
    would (a shifted acquisition for drift monitoring's tests).
    """
    from scanet_node.synth.phantom import Phantom

    if subject is None and not fixed_anatomy:
        subject = subject_of(plan)
    occlusion = occlusion_of(plan, fixed_anatomy=fixed_anatomy)
    if subject is not None:
        occlusion = replace(occlusion, tree=subject.tree)
    _, contrast_hu = images_stream(plan)  # the contrast level write_study uses
    phantom = Phantom(
        occlusion, contrast_hu=contrast_hu * contrast_scale, seed=plan.index, subject=subject
    )
    head = phantom.head_affine
    noise_rng = np.random.default_rng([plan.seed, plan.index, _STREAM_IMAGES, 1])
    grid = fine_grid(size)
    planes = grid.shape[0]
    j, i = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    channels = []
    inside = np.empty((planes, size, size), dtype=bool)
    for phase, sigma, win, how in (
        ("ncct", NCCT_PLANE_NOISE_HU, MODEL_INPUT_NCCT_WINDOW_HU, "mean"),
        ("cta", CTA_PLANE_NOISE_HU, MODEL_INPUT_CTA_WINDOW_HU, "max"),
    ):
        fine = np.empty((planes, size, size), dtype=np.float32)
        for k in range(planes):
            ijk = np.stack([i, j, np.full_like(i, k)], axis=-1).astype(np.float64)
            points = grid.index_to_mni(ijk) @ head[:3, :3].T + head[:3, 3]
            fine[k] = phantom.sample(points, phase)
            if phase == "ncct":
                inside[k] = phantom.anatomy.mask_at(phantom.anatomy.cavity_mask, points)
        if phase == "ncct":
            plane_mm, pixel_mm = grid.spacing[2], grid.spacing[0]
            width = max(1, round(NCCT_Z_PROFILE_MM / plane_mm))
            fine = ndi.uniform_filter1d(fine, width, axis=0, mode="nearest")
            sigma_px = NCCT_BLUR_MM / pixel_mm
            fine = ndi.gaussian_filter(fine, (0.0, sigma_px, sigma_px), mode="nearest")
        elif CTA_BLUR_MM > 0:
            sigma_px = CTA_BLUR_MM / grid.spacing[0]
            sigma_z = CTA_BLUR_MM / grid.spacing[2]
            fine = ndi.gaussian_filter(fine, (sigma_z, sigma_px, sigma_px), mode="nearest")
        if noise:
            fine += noise_rng.normal(0.0, sigma, fine.shape).astype(np.float32)
        channels.append(window_to_unit(to_slabs(fine, how), *win))
    mask = slab_mask(ndi.binary_erosion(inside), grid, MASK_MARGIN_MM)
    tensor = np.stack([np.where(mask, c, 0.0) for c in channels]).astype(np.float32)
    assert tensor.shape[1] * PLANES_PER_SLAB == planes
    return tensor


def _write_template_study(job: tuple[Path, StudyPlan, int]) -> int:
    """Write one study's template-space input; return its clot slab."""
    out_dir, plan, size = job
    target = out_dir / "inputs" / f"{plan.case_id}.npz"
    slab = clot_slab(plan)
    if not target.is_file():
        tensor = template_input(plan, size)
        partial = target.with_name(f".{target.stem}.partial.npz")
        np.savez_compressed(partial, tensor=tensor.astype(np.float16), clot_slab=np.int16(slab))
        partial.replace(target)
    return slab


def generate_template_cohort(
    out_dir: Path,
    studies: int,
    seed: int,
    *,
    size: int = 224,
    workers: int | None = 1,
    progress: Callable[[int, int], None] | None = None,
) -> CohortSummary:
    """Write ``inputs/<case>.npz`` (the model input, float16) and ``labels.csv``; no DICOM.

    The cohort's studies are those :func:`~scanet_node.synth.cohort.generate_cohort` writes as
    DICOM for the same seed; ``labels.csv`` adds the clot's slab for attention checks. Studies
    are made in ``workers`` processes (``None``: one per core); a study already in ``inputs/``
    is kept, so an interrupted run resumes. An input of another size is refused.
    """
    import os
    from concurrent.futures import ProcessPoolExecutor

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inputs").mkdir(exist_ok=True)
    started = time.perf_counter()
    plans = plan_cohort(studies, seed)
    for plan in plans:
        existing = out_dir / "inputs" / f"{plan.case_id}.npz"
        if existing.is_file():
            with np.load(existing) as npz:
                if npz["tensor"].shape != (2, 26, size, size):
                    raise ValueError(
                        f"{existing} is not of size {size}: "
                        "write another cohort folder for another size"
                    )
            break
    summary = CohortSummary(out_dir, studies, sum(p.label for p in plans), None, 0.0)
    jobs = [(out_dir, plan, size) for plan in plans]
    count = workers or os.cpu_count() or 1
    rows = []

    def collect(slabs: Iterator[int]) -> None:
        for number, (plan, slab) in enumerate(zip(plans, slabs, strict=True), start=1):
            rows.append([*label_row(plan, ""), slab])
            if progress is not None:
                progress(number, studies)

    if count == 1:
        collect(map(_write_template_study, jobs))
    else:
        with ProcessPoolExecutor(max_workers=count) as pool:
            collect(pool.map(_write_template_study, jobs, chunksize=4))
    return finish_cohort(summary, plans, [*_LABEL_COLUMNS, "clot_slab"], rows, started)
