"""Prepared cohorts: synthetic studies through the node's own path, kept as model inputs.

Each study is written as DICOM into a temporary folder and prepared by
:func:`scanet_node.imaging.prepare.prepare` (series choice, brain extraction, ANTs registration,
resampling and windowing: what the node does to a study from a scanner); what is kept is
``inputs/<case>.npz`` (the tensor as float16, the clot's slab, the registration's error at the
clot and its similarity, the clot's centre in patient coordinates and the registration's
affine), and the DICOM is deleted. So training sees what the node sees, at the
cost of preparing each study once (~20-25 s of one core at full size).

Studies are prepared in parallel processes, one per core by default, each with one ITK thread.
A study already in ``inputs/`` is kept, so an interrupted run resumes where it stopped; a study
that cannot be prepared is listed with its reason in ``excluded.csv``, never dropped silently.
``labels.csv`` has the columns of ``--template-space`` cohorts, for the prepared studies.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from scanet_node.synth.cohort import (
    _LABEL_COLUMNS,
    CohortSummary,
    StudyPlan,
    finish_cohort,
    label_row,
    plan_cohort,
    write_study,
)

logger = logging.getLogger(__name__)


def _one_thread() -> None:
    # Set before ANTs (ITK) is imported in the worker: one thread per process, one process a core.
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"


def prepare_study(job: tuple[Path, StudyPlan, int, bool]) -> tuple[str, str | None]:
    """Write, prepare and keep one study's input; return its case and the reason it failed."""
    from scanet_node.imaging.prepare import prepare
    from scanet_node.imaging.qc import NotAnalysable
    from scanet_node.synth.direct import clot_slab

    out_dir, plan, size, small = job
    target = out_dir / "inputs" / f"{plan.case_id}.npz"
    with tempfile.TemporaryDirectory(prefix="scanet-prepared-", dir=out_dir) as tmp:
        manifest = write_study(Path(tmp), plan, small=small)
        try:
            prepared = prepare(Path(tmp) / plan.case_id, size=size)
        except NotAnalysable as exc:
            return plan.case_id, str(exc)
        occlusion = manifest["occlusion"]
        mapped = prepared.registration.patient_to_mni(np.array(occlusion["clot_center_patient"]))
        error = float(np.linalg.norm(mapped - np.array(occlusion["clot_center_mni"])))
        partial = target.with_name(f".{target.stem}.partial.npz")
        np.savez_compressed(
            partial,
            tensor=prepared.tensor.astype(np.float16),
            clot_slab=np.int16(clot_slab(plan)),
            study_instance_uid=np.array(manifest["study_instance_uid"]),
            clot_error_mm=np.float32(error),
            similarity=np.float32(prepared.qc["registration_similarity"]),
            # what drift monitoring describes a study's inputs by (monitoring.descriptors)
            **_descriptors(Path(tmp) / plan.case_id, prepared),
            # where the clot truly is, and the registration's affine, so that an evaluation
            # can map the model's attention back into the patient as the node does
            clot_center_patient=np.array(occlusion["clot_center_patient"], dtype=np.float64),
            ncct_to_mni=np.asarray(prepared.registration.transform.ncct_to_mni, dtype=np.float64),
            registration_method=np.array(prepared.registration.transform.method),
        )
        partial.replace(target)
    return plan.case_id, None


def _descriptors(study_dir: Path, prepared: Any) -> dict[str, Any]:
    from pydicom import dcmread

    from scanet_node.monitoring.descriptors import header_descriptors

    headers: dict[str, Any] = {}
    wanted = {prepared.ncct_series_uid: "ncct", prepared.cta_series_uid: "cta"}
    for path in sorted(study_dir.rglob("*")):
        if len(headers) == len(wanted):
            break
        if not path.is_file():
            continue
        ds = dcmread(path, stop_before_pixels=True, force=True)
        role = wanted.get(str(ds.get("SeriesInstanceUID", "")))
        if role is not None:
            headers.setdefault(role, ds)
    found = header_descriptors(headers.get("ncct"), headers.get("cta"))
    found["brain_volume_ml"] = prepared.qc["brain_volume_ml"]
    return {
        k: np.array(v) if isinstance(v, str) else np.float32(v)
        for k, v in found.items()
        if v is not None
    }


def generate_prepared_cohort(
    out_dir: Path,
    studies: int,
    seed: int,
    *,
    size: int = 224,
    small: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CohortSummary:
    """Prepare ``studies`` studies of ``seed`` into ``out_dir`` (resuming); see the module."""
    (out_dir / "inputs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plans = plan_cohort(studies, seed)
    todo = [p for p in plans if not (out_dir / "inputs" / f"{p.case_id}.npz").is_file()]
    excluded: dict[str, str] = {}
    done = studies - len(todo)
    if progress is not None and done:
        progress(done, studies)
    jobs = [(out_dir, plan, size, small) for plan in todo]
    count = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=count, initializer=_one_thread) as pool:
        for case, reason in pool.map(prepare_study, jobs):
            done += 1
            if reason is not None:
                excluded[case] = reason
                logger.warning("study %s not prepared: %s", case, reason)
            if progress is not None:
                progress(done, studies)
    kept = [p for p in plans if p.case_id not in excluded]
    rows = []
    for plan in kept:
        with np.load(out_dir / "inputs" / f"{plan.case_id}.npz") as npz:
            if npz["tensor"].shape != (2, 26, size, size):
                raise ValueError(
                    f"{out_dir}/inputs/{plan.case_id}.npz is not of size {size}: "
                    "prepare another cohort folder for another size"
                )
            rows.append([*label_row(plan, str(npz["study_instance_uid"])), int(npz["clot_slab"])])
    with (out_dir / "excluded.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "reason"])
        writer.writerows(sorted(excluded.items()))
    summary = CohortSummary(out_dir, len(kept), sum(p.label for p in kept), None, 0.0)
    return finish_cohort(summary, kept, [*_LABEL_COLUMNS, "clot_slab"], rows, started)


def excluded_cases(out_dir: Path) -> dict[str, str]:
    """The studies of a prepared cohort that could not be prepared, with their reasons."""
    path = out_dir / "excluded.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {row["case_id"]: row["reason"] for row in csv.DictReader(fh)}
