"""Registration settings: time per stage and target registration error (TRE), before/after.

For each synthetic study (``--studies`` of seed ``--seed``, full size: 512x512 NCCT of 5 mm
slices, CTA of ``--cta-slice-mm``; and ``--per-variant`` studies of each geometry variant:
gantry tilt, reversed slice order, a missing NCCT slice) it loads the NCCT and CTA once,
extracts the brain once, moves the CTA by a known rigid transform (a patient who moved between
the two scans: up to ``--move-mm`` and ``--move-deg``, drawn per study), then runs
``imaging.register.register`` with each named setting of the ANTs stages and measures:

* seconds of the CTA -> NCCT rigid and the NCCT -> template affine stages;
* NCCT TRE: the distance, in MNI mm, between where the registration puts each anatomical
  landmark of the study's manifest (commissures, vessel branch points, ventricles, the clot;
  known in the patient and in the atlas) and where the atlas has it. An affine registration of
  a head that differs from the atlas keeps a residual here: compare settings, not zero;
* CTA TRE: the same landmarks seen in the moved CTA, through CTA -> NCCT -> template;
* rigid error: the distance between a landmark of the moved CTA taken back to the NCCT and
  where it lies in the NCCT (0 for a perfect rigid stage);
* the QC similarity.

It prints one Markdown table per setting and group (median and 90th percentile over the
landmarks of all the group's studies; seconds as p50) and the ratio of each setting's time
to the first's, measured in the same run. A report, not a test: the exit status is 0.

    python tests/benchmarks/registration.py --studies 20 --per-variant 3
    python tests/benchmarks/registration.py --studies 4 --per-variant 0 --settings current,fast
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanet_node.imaging import register as reg
from scanet_node.imaging.brain import block_reduce, extract_brain
from scanet_node.imaging.model_input import fine_grid
from scanet_node.imaging.series import find_series, load_series
from scanet_node.synth.cohort import plan_study, write_study

VARIANTS = ("gantry-tilt", "reversed", "missing-slice")
#: Whether ``prepare`` starts the rigid search from the identity for a CTA of the NCCT's frame.
CURRENT_SAME_FRAME = True

#: Named settings of the two ANTs stages: (rigid options, affine options) overriding
#: ``reg.RIGID_OPTIONS`` and ``reg.AFFINE_OPTIONS``. "before" is what the node did until
#: issue 16 (these options, the rigid search from the centres of mass, and the block
#: averaging of the time); "current" is whatever the code holds now. Settings whose name has
#: "-id" start the rigid search from the identity (CTA and NCCT share a Frame of Reference
#: UID), the others from the centres of mass.
_SCHEDULE_BEFORE: dict[str, Any] = {  # both stages, until issue 16
    "aff_metric": "mattes",
    "aff_sampling": 32,
    "aff_random_sampling_rate": 0.1,
    "aff_iterations": (200, 100, 50),
    "aff_shrink_factors": (4, 2, 1),
    "aff_smoothing_sigmas": (2, 1, 0),
}
#: The schedule without its finest (2 mm) level.
_ENDS_AT_4MM: dict[str, Any] = {
    "aff_iterations": (200, 100),
    "aff_shrink_factors": (4, 2),
    "aff_smoothing_sigmas": (2, 1),
}
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "before": (dict(_SCHEDULE_BEFORE), dict(_SCHEDULE_BEFORE)),
    "current": (dict(reg.RIGID_OPTIONS), dict(reg.AFFINE_OPTIONS)),
    "iter-half": (
        {"aff_iterations": (100, 50, 25)},
        {"aff_iterations": (100, 50, 25)},
    ),
    "sample-5": (
        {"aff_random_sampling_rate": 0.05},
        {"aff_random_sampling_rate": 0.05},
    ),
    "rigid-id": ({}, {}),
    "rigid-id-2lv": (
        {
            "aff_iterations": (100, 50),
            "aff_shrink_factors": (2, 1),
            "aff_smoothing_sigmas": (1, 0),
        },
        {},
    ),
    "rigid-id-4mm": (
        dict(_ENDS_AT_4MM),
        {},
    ),
    "rigid-4mm": (
        dict(_ENDS_AT_4MM),
        {},
    ),
    "both-4mm": (
        dict(_ENDS_AT_4MM),
        dict(_ENDS_AT_4MM),
    ),
}


def _rotation(axis: npt.NDArray[np.float64], degrees: float) -> npt.NDArray[np.float64]:
    a = axis / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.asarray(np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k), dtype=np.float64)


def _move(rng: np.random.Generator, mm: float, deg: float, centre: Any) -> Any:
    """A rigid 4x4 (LPS): a rotation about ``centre`` and a shift, drawn up to the limits."""
    rotation = _rotation(rng.normal(size=3), rng.uniform(-deg, deg))
    shift = rng.normal(size=3)
    shift *= rng.uniform(0, mm) / np.linalg.norm(shift)
    move = np.eye(4)
    move[:3, :3] = rotation
    move[:3, 3] = centre - rotation @ centre + shift
    return move


def _apply(matrix: Any, points: Any) -> Any:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _study(folder: Path, seed: int, index: int, variant: str, cta_mm: float) -> dict[str, Any]:
    manifest = write_study(folder, plan_study(seed, index), variant=variant, cta_slice_mm=cta_mm)
    study = folder / manifest["case_id"]
    manifest = json.loads((study / "manifest.json").read_text())
    roles = {s["series_instance_uid"]: s["role"] for s in manifest["series"]}
    series = {roles.get(s.series_instance_uid): s for s in find_series(study)}
    return {
        "manifest": manifest,
        "ncct": load_series(series["ncct"].paths),
        "cta": load_series(series["cta"].paths),
    }


def _block_reduce_before(
    array: npt.NDArray[Any], factors: tuple[int, ...], how: str = "mean"
) -> npt.NDArray[Any]:
    """``imaging.brain.block_reduce`` as it was before issue 16 (a mean over reshaped axes)."""
    if how != "mean" or all(f == 1 for f in factors):
        return block_reduce(array, factors, how)
    shape = [s // f for s, f in zip(array.shape, factors, strict=True)]
    view = array[tuple(slice(0, n * f) for n, f in zip(shape, factors, strict=True))]
    blocks = view.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    return np.asarray(blocks.mean(axis=(1, 3, 5), dtype=np.float32))


def _run(setting: str, data: dict[str, Any], brain: Any, move: Any) -> dict[str, Any]:
    rigid, affine = SETTINGS[setting]
    saved = dict(reg.RIGID_OPTIONS), dict(reg.AFFINE_OPTIONS)
    reg.RIGID_OPTIONS.update(rigid)
    reg.AFFINE_OPTIONS.update(affine)
    if setting == "before":  # the code as it was, not only the options
        setattr(reg, "block_reduce", _block_reduce_before)  # noqa: B010
    try:
        ncct, cta = data["ncct"], data["cta"]
        tic = time.perf_counter()
        result = reg.register(
            ncct.hu,
            ncct.affine,
            cta.hu,
            move @ cta.affine,
            brain=brain,
            grid=fine_grid(112),
            min_similarity=None,
            cta_same_frame="-id" in setting or (setting == "current" and CURRENT_SAME_FRAME),
        )
        total = time.perf_counter() - tic
    finally:
        setattr(reg, "block_reduce", block_reduce)  # noqa: B010
        reg.RIGID_OPTIONS.clear()
        reg.RIGID_OPTIONS.update(saved[0])
        reg.AFFINE_OPTIONS.clear()
        reg.AFFINE_OPTIONS.update(saved[1])
    marks = data["manifest"]["landmarks"]
    patient = np.array([m["patient"] for m in marks.values()])
    mni = np.array([m["mni"] for m in marks.values()])
    moved = _apply(move, patient)
    back = _apply(result.transform.cta_to_ncct, moved)
    return {
        "rigid_s": result.timings["cta_to_ncct"],
        "affine_s": result.timings["ncct_to_template"],
        "total_s": total,
        "ncct_tre": np.linalg.norm(result.patient_to_mni(patient) - mni, axis=1),
        "cta_tre": np.linalg.norm(result.patient_to_mni(moved, "cta") - mni, axis=1),
        "rigid_err": np.linalg.norm(back - patient, axis=1),
        "similarity": result.similarity,
    }


def _summary(rows: list[dict[str, Any]]) -> str:
    def pct(key: str) -> str:
        values = np.concatenate([r[key] for r in rows])
        return f"{np.median(values):.2f} / {np.percentile(values, 90):.2f}"

    def p50(key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    return (
        f"{p50('rigid_s'):.2f} | {p50('affine_s'):.2f} | {p50('total_s'):.2f} | "
        f"{pct('ncct_tre')} | {pct('cta_tre')} | {pct('rigid_err')} | "
        f"{min(r['similarity'] for r in rows):.3f} / {p50('similarity'):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--per-variant", type=int, default=3)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--cta-slice-mm", type=float, default=0.625)
    parser.add_argument("--move-mm", type=float, default=10.0)
    parser.add_argument("--move-deg", type=float, default=8.0)
    parser.add_argument("--settings", default="before,current")
    args = parser.parse_args(argv)
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")

    plan = [("standard", n) for n in range(args.studies)]
    for v, variant in enumerate(VARIANTS):
        plan += [(variant, 1000 * (v + 1) + n) for n in range(args.per_variant)]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    rng = np.random.default_rng(args.seed)
    tic = time.perf_counter()
    for variant, index in plan:
        with tempfile.TemporaryDirectory(prefix="scanet-tre-") as tmp:
            data = _study(Path(tmp), args.seed, index, variant, args.cta_slice_mm)
        ncct = data["ncct"]
        brain = extract_brain(ncct.hu, ncct.affine)
        centre = _apply(ncct.affine, (np.array(ncct.hu.shape[::-1]) - 1) / 2.0)
        move = _move(rng, args.move_mm, args.move_deg, centre)
        for name in names:
            rows.setdefault((name, variant), []).append(_run(name, data, brain, move))
        print(
            f"  {variant} {index}: "
            + ", ".join(
                f"{n} {rows[(n, variant)][-1]['total_s']:.1f} s "
                f"TRE {np.median(rows[(n, variant)][-1]['ncct_tre']):.2f} mm"
                for n in names
            ),
            flush=True,
        )
    print(f"{len(plan)} studies in {time.perf_counter() - tic:.0f} s\n")
    print(
        "| setting | group | studies | rigid s | affine s | register s | NCCT TRE mm "
        "(median / p90) | CTA TRE mm | rigid error mm | similarity (min / median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    groups = ["standard", *(v for v in VARIANTS if args.per_variant)]
    for name in names:
        for group in groups:
            got = rows[(name, group)]
            print(f"| {name} | {group} | {len(got)} | {_summary(got)} |")
        every = [r for g in groups for r in rows[(name, g)]]
        print(f"| {name} | all | {len(every)} | {_summary(every)} |")
    base = statistics.median(r["total_s"] for g in groups for r in rows[(names[0], g)])
    for name in names[1:]:
        mine = statistics.median(r["total_s"] for g in groups for r in rows[(name, g)])
        print(f"\n{name}: register time {mine / base:.2f}x {names[0]}'s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
