"""How much of what decides the outcome shows in the model input, and what registration leaves.

A report, not a test (run on demand; the exit status is 0 whatever the figures):

1. Visibility: noise-free template-space inputs (``synth.direct.template_input``) of one
   study with a single feature changed, at 112 and 224 px: the number of input voxels that
   change by more than 0.1 (and by more than 0.03) between collateral grade 0 and 3, clot
   length 6 and 16 mm, clot density 50 and 80 HU, and with and without early ischaemic change.
   Bar: grade 0 vs 3 changes at least 20 x 162 voxels at 112 px (162: the phantom before
   cortical arteries).
2. The oracle ROC-AUC of seeds 1 and 2 (400 studies each). Bar: 0.85-0.9.
3. Landmark errors after ``imaging.prepare``: studies written as DICOM, prepared (brain
   extraction, affine registration to the template), and the registration's image of each
   landmark's true patient position compared with its atlas position (anterior and posterior
   commissure, both M1 origins, the basilar tip, the top of each lateral ventricle), for the
   patients' own anatomy and for the fixed atlas head. Bar: median 1.5-4 mm with patients who
   differ (what affine registration of real adult brains to MNI space leaves).

``--render DIR`` also writes PNGs: the CTA MIP of the affected hemisphere of a grade-0 and a
grade-3 study (lateral view, intracranial only) with the contralateral hemisphere beside it,
and the NCCTs of three studies side by side at the ganglionic and supraganglionic levels.

    python tests/benchmarks/synth_realism.py [--studies 30] [--full] [--render DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]

from scanet_node.synth.cohort import (
    REGISTRATION_LANDMARKS,
    StudyPlan,
    oracle_auc,
    plan_cohort,
    plan_study,
    subject_of,
    write_study,
)
from scanet_node.synth.direct import template_input

BEFORE_GRADE_VOXELS = 162  # grade 0 vs 3 at 112 px with M1-M3 tubes only (issue 13)
BEFORE_LENGTH_VOXELS = 14


def _plan(base: StudyPlan, **features: Any) -> StudyPlan:
    return dataclasses.replace(base, features=dataclasses.replace(base.features, **features))


def _changed(a: np.ndarray, b: np.ndarray, threshold: float) -> tuple[int, int, int]:
    diff = np.abs(a - b) > threshold
    return int(diff.sum()), int(diff[0].sum()), int(diff[1].sum())


def visibility(size: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Pairs of noise-free inputs that differ in one feature."""
    base = _plan(
        plan_study(1, 0),
        side="R",
        site="M1",
        length_mm=10.0,
        clot_hu=65.0,
        collateral_grade=2,
        start_fraction=0.2,
    )
    pairs = []
    for name, low, high in (
        ("collateral grade 0 vs 3", {"collateral_grade": 0}, {"collateral_grade": 3}),
        ("clot length 6 vs 16 mm", {"length_mm": 6.0}, {"length_mm": 16.0}),
        ("clot density 50 vs 80 HU", {"clot_hu": 50.0}, {"clot_hu": 80.0}),
    ):
        a = template_input(_plan(base, **low), size, noise=False)
        b = template_input(_plan(base, **high), size, noise=False)
        pairs.append((name, a, b))
    grade0 = _plan(base, collateral_grade=0)
    subject = subject_of(grade0)
    without = dataclasses.replace(subject, ischemia_regions=(), ischemia_severity=0.0)
    pairs.append(
        (
            f"early ischaemic change ({len(subject.ischemia_regions)} regions) vs none",
            template_input(grade0, size, noise=False, subject=subject),
            template_input(grade0, size, noise=False, subject=without),
        )
    )
    return pairs


def _landmark_errors(job: tuple[int, int, bool, bool]) -> dict[str, float] | str:
    """Errors (mm) of one study's landmarks after prepare, or why it could not be prepared."""
    from scanet_node.imaging.prepare import prepare
    from scanet_node.imaging.qc import NotAnalysable

    seed, index, small, fixed = job
    with tempfile.TemporaryDirectory(prefix="scanet-realism-") as tmp:
        manifest = write_study(Path(tmp), plan_study(seed, index), small=small, fixed_anatomy=fixed)
        try:
            prepared = prepare(Path(tmp) / manifest["case_id"], size=112)
        except NotAnalysable as exc:
            return f"{manifest['case_id']}: {exc}"
        errors = {}
        for name in REGISTRATION_LANDMARKS:
            mark = manifest["landmarks"][name]
            mapped = prepared.registration.patient_to_mni(np.asarray(mark["patient"]))
            errors[name] = float(np.linalg.norm(mapped - np.asarray(mark["mni"])))
        return errors


def landmark_table(studies: int, seed: int, small: bool, workers: int) -> None:
    print(
        f"\nlandmark error after prepare, {studies} studies of seed {seed}"
        f" ({'small' if small else 'full-size'} DICOM), mm:"
    )
    print(f"{'anatomy':<22} {'median':>7} {'p90':>7} {'max':>7}   per landmark (median)")
    for fixed in (True, False):
        jobs = [(seed, i, small, fixed) for i in range(studies)]
        started = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            outcomes = list(pool.map(_landmark_errors, jobs))
        results = [r for r in outcomes if isinstance(r, dict)]
        for failure in (r for r in outcomes if isinstance(r, str)):
            print(f"  not analysable: {failure[:300]}")
        every = np.array([[r[n] for n in REGISTRATION_LANDMARKS] for r in results])
        label = "fixed atlas head" if fixed else "patients who differ"
        per = ", ".join(
            f"{n} {np.median(every[:, k]):.1f}" for k, n in enumerate(REGISTRATION_LANDMARKS)
        )
        print(
            f"{label:<22} {np.median(every):7.2f} {np.percentile(every, 90):7.2f}"
            f" {every.max():7.2f}   {per}  ({time.perf_counter() - started:.0f} s)"
        )
        if not fixed:
            median = float(np.median(every))
            verdict = "PASS" if 1.5 <= median <= 4.0 else "FAIL"
            print(f"bar: median 1.5-4 mm with patients who differ: {median:.2f} mm {verdict}")


def render(out: Path) -> None:
    """PNGs for people: CTA MIPs by collateral grade, NCCTs of three patients (seed 1, studies
    0-2, as drawn: their manifests give age, atrophy and the ASPECTS regions affected)."""
    from scanet_node.png import save_png
    from scanet_node.synth.cohort import images_stream, occlusion_of
    from scanet_node.synth.phantom import Phantom
    from scanet_node.synth.render import display_window

    out.mkdir(parents=True, exist_ok=True)
    base = _plan(
        plan_study(1, 3), side="L", site="M1", length_mm=12.0, clot_hu=65.0, start_fraction=0.2
    )

    def phantom_of(plan: StudyPlan) -> Phantom:
        _, contrast = images_stream(plan)
        return Phantom(occlusion_of(plan), contrast_hu=contrast, subject=subject_of(plan))

    step = 0.5
    ys = np.arange(-105.0, 75.0, step)
    zs = np.arange(-35.0, 80.0, step)[::-1]
    panels = []
    for grade in (0, 3):
        plan = _plan(base, collateral_grade=grade)
        phantom = phantom_of(plan)
        # The brain and the CSF around it, without the skull: the brain grown by 3 mm.
        anatomy = phantom.anatomy
        inside_mask = ndi.binary_dilation(anatomy.brain_mask, iterations=3)
        for side in (-1.0, 1.0):  # the affected (left) hemisphere, then the other
            mip = np.full((len(zs), len(ys)), -1000.0, dtype=np.float32)
            for x in np.arange(2.0, 72.0, step) * side:  # the patient's own head space
                head = np.stack(np.meshgrid([x], ys, zs, indexing="ij"), -1)[0].transpose(1, 0, 2)
                hu = phantom.sample(head, "cta")
                inside = anatomy.mask_at(inside_mask, head) & anatomy.mask_at(
                    anatomy.cavity_mask, head
                )
                mip = np.maximum(mip, np.where(inside & (hu < 700.0), hu, -1000.0))
            panels.append(display_window(mip, 150.0, 500.0))
        gap = np.zeros((len(zs), 8), dtype=np.uint8)
        save_png(
            np.concatenate([panels[-2], gap, panels[-1]], 1), out / f"cta_mip_grade{grade}.png"
        )

    rows = []
    xs = np.arange(-80.0, 80.0, step)
    yy = np.arange(-112.0, 80.0, step)[::-1]
    for z in (4.0, 30.0):
        row = []
        for index in (0, 1, 2):
            phantom = phantom_of(plan_study(1, index))
            slab = np.zeros((len(yy), len(xs)), dtype=np.float32)
            for dz in np.arange(-2.0, 2.5, 1.0):
                head = np.stack(np.meshgrid(xs, yy, [z + dz], indexing="xy"), -1)[:, :, 0]
                slab += phantom.sample(head, "ncct") / 5.0
            rng = np.random.default_rng(index)
            slab += rng.normal(0.0, 2.5, slab.shape).astype(np.float32)
            # radiological: the patient's left on the right
            row.append(display_window(slab[:, ::-1], 40.0, 80.0))
            row.append(np.zeros((len(yy), 6), dtype=np.uint8))
        rows.append(np.concatenate(row[:-1], 1))
    save_png(np.concatenate(rows, 0), out / "ncct_three_patients.png")
    print(f"\npictures written to {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--full", action="store_true", help="full-size DICOM (slower)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--render", type=Path, default=None)
    parser.add_argument("--skip-landmarks", action="store_true")
    args = parser.parse_args()

    for size in (112, 224):
        print(f"\nnoise-free input voxels that change, {size} px (of {2 * 26 * size * size}):")
        print(f"{'':<48} {'> 0.1 (NCCT, CTA)':>24} {'> 0.03':>10}")
        for name, a, b in visibility(size):
            total, ncct, cta = _changed(a, b, 0.1)
            print(f"{name:<48} {total:>10} ({ncct}, {cta}) {_changed(a, b, 0.03)[0]:>10}")
            if size == 112 and name.startswith("collateral"):
                bar = 20 * BEFORE_GRADE_VOXELS
                verdict = "PASS" if total >= bar else "FAIL"
                print(f"{'  bar: >= 20 x 162 = ' + str(bar):<48} {verdict}")

    print("\noracle ROC-AUC (400 studies):")
    for seed in (1, 2):
        auc = oracle_auc(plan_cohort(400, seed))
        verdict = "PASS" if 0.85 <= auc <= 0.9 else "FAIL"
        print(f"  seed {seed}: {auc:.3f} {verdict}")

    if not args.skip_landmarks:
        landmark_table(args.studies, args.seed, not args.full, args.workers)
    if args.render is not None:
        render(args.render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
