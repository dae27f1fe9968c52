"""Synthetic cohorts: many studies, each with its manifest, and one labels.csv.

Study ``i`` of seed ``s`` depends only on ``(s, i)``: its random streams are
``default_rng([s, i, stream])`` and its UIDs are derived from the same numbers,
so the same seed writes the same cohort, and a larger cohort starts with the
studies of a smaller one.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.uid import JPEGLosslessSV1, RLELossless, generate_uid

from scanet_node.synth.outcome import (
    OcclusionFeatures,
    draw_label,
    recanalization_probability,
    roc_auc,
    sample_features,
)

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "2"  # 2: patients who differ, cortical arteries, early ischaemic change
STUDY_YEAR = 2026

# Random streams of one study, so that changing one part never shifts another.
_STREAM_FEATURES, _STREAM_LABEL, _STREAM_POSE, _STREAM_IMAGES, _STREAM_IDENTITY = range(5)
_STREAM_ANATOMY = 5

#: Variants used by the tests of later stages; "standard" is the default.
VARIANTS: dict[str, dict[str, Any]] = {
    "standard": {},
    "reversed": {"reversed_order": True},
    "gantry-tilt": {"gantry_tilt_deg": 15.0},
    "missing-slice": {"missing_ncct_slice": True},
    "no-cta": {"with_cta": False},
    "jpeg-lossless": {"transfer_syntax": JPEGLosslessSV1},
    "rle": {"transfer_syntax": RLELossless},
}


@dataclass(frozen=True)
class StudyPlan:
    """Everything drawn for one study before any image is made."""

    seed: int
    index: int
    features: OcclusionFeatures
    probability: float
    label: int

    @property
    def case_id(self) -> str:
        """The study's folder name and fake Patient ID."""
        return f"SYN{self.seed:04d}-{self.index:04d}"


def plan_study(seed: int, index: int) -> StudyPlan:
    """Draw a study's occlusion, its true probability and its label (no images)."""
    features = sample_features(np.random.default_rng([seed, index, _STREAM_FEATURES]))
    probability = recanalization_probability(features)
    label = draw_label(probability, np.random.default_rng([seed, index, _STREAM_LABEL]))
    return StudyPlan(seed, index, features, round(probability, 6), label)


def occlusion_of(plan: StudyPlan, *, fixed_anatomy: bool = False) -> Any:
    """The :class:`~scanet_node.synth.vessels.Occlusion` a plan's features describe.

    It lies on the patient's own arterial tree (:func:`subject_of`), or on the atlas tree with
    ``fixed_anatomy``; its ``clot_center_mni`` is in atlas (template) space either way.
    """
    from scanet_node.synth.vessels import Occlusion

    f = plan.features
    return Occlusion(
        side=f.side,
        site=f.site,
        length_mm=f.length_mm,
        start_fraction=f.start_fraction,
        clot_hu=f.clot_hu,
        collateral_grade=f.collateral_grade,
        tree=None if fixed_anatomy else subject_of(plan).tree,
    )


def _identity_draws(plan: StudyPlan) -> tuple[int, str, int, int, str]:
    """Birth year, birth date, study day, study second of day and sex of a plan's patient."""
    rng = np.random.default_rng([plan.seed, plan.index, _STREAM_IDENTITY])
    year = int(rng.integers(1935, 1990))
    birth = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    day = int(rng.integers(1, 29))
    seconds = int(rng.integers(0, 86400))
    return year, birth, day, seconds, "F" if rng.random() < 0.5 else "M"


def demographics(plan: StudyPlan) -> tuple[int, str]:
    """The patient's birth year and sex (those of the study's DICOM identity)."""
    year, _, _, _, sex = _identity_draws(plan)
    return year, sex


@functools.lru_cache(maxsize=16)
def subject_of(plan: StudyPlan) -> Any:
    """The patient of a plan (:class:`~scanet_node.synth.subject.Subject`): own anatomy by age
    and sex, own arterial tree, and early ischaemic change that grows as collaterals worsen."""
    from scanet_node.synth.subject import draw_subject

    year, sex = demographics(plan)
    f = plan.features
    return draw_subject(
        np.random.default_rng([plan.seed, plan.index, _STREAM_ANATOMY]),
        age=STUDY_YEAR - year,
        sex=sex,
        side=f.side,
        site=f.site,
        collateral_grade=f.collateral_grade,
    )


def images_stream(plan: StudyPlan) -> tuple[np.random.Generator, float]:
    """The study's image random stream and the CTA contrast level, its first draw."""
    rng = np.random.default_rng([plan.seed, plan.index, _STREAM_IMAGES])
    return rng, float(rng.uniform(320.0, 440.0))


def plan_cohort(studies: int, seed: int) -> list[StudyPlan]:
    """The plans of a cohort, cheap: enough to compute its oracle ROC-AUC and balance."""
    return [plan_study(seed, i) for i in range(studies)]


def oracle_auc(plans: Sequence[StudyPlan]) -> float:
    """ROC-AUC of the true probabilities against the drawn labels: the best any model can do."""
    return roc_auc(np.array([p.probability for p in plans]), np.array([p.label for p in plans]))


#: Reference points (MNI mm, right hemisphere) of known tissue, recorded in every manifest so
#: that tests and people can check the Hounsfield units where they should be. They are put in
#: the hemisphere opposite the occlusion, whose tissue has no ischaemic change.
TISSUE_LANDMARKS_MNI = {
    "grey_matter_caudate": (13.0, 18.0, 2.0),
    "white_matter_centrum": (26.0, 1.0, 31.0),
    "csf_ventricle_atrium": (18.0, -36.0, 19.0),
}


#: Anatomical landmarks (MNI mm of the atlas) whose position after registration is measured:
#: anterior and posterior commissure.
COMMISSURES_MNI = {
    "anterior_commissure": (0.0, 2.0, -4.0),
    "posterior_commissure": (0.0, -28.0, -2.0),
}


def _landmarks_mni(occlusion: Any) -> dict[str, npt.NDArray[np.float64]]:
    from scanet_node.synth.subject import ventricle_tops
    from scanet_node.synth.vessels import tree_landmarks, vessel_tree

    tree = occlusion.tree or vessel_tree()
    by_name = {s.name: s for s in tree}
    other = "R" if occlusion.side == "L" else "L"
    patent = by_name[f"{other}_M1"].points
    flip = np.array([1.0 if other == "R" else -1.0, 1.0, 1.0])
    marks = {name: np.array(p, dtype=float) * flip for name, p in TISSUE_LANDMARKS_MNI.items()}
    marks["patent_contralateral_m1"] = np.asarray(patent[len(patent) // 2], dtype=float)
    marks["clot_center"] = np.asarray(occlusion.clot_center_mni, dtype=float)
    marks.update({name: np.array(p, dtype=float) for name, p in COMMISSURES_MNI.items()})
    marks.update({k: np.asarray(v, dtype=float) for k, v in tree_landmarks(tree).items()})
    marks.update(ventricle_tops())
    return marks


#: Landmarks whose registration error ``tests/benchmarks/synth_realism.py`` reports.
REGISTRATION_LANDMARKS = (
    "anterior_commissure",
    "posterior_commissure",
    "left_m1_origin",
    "right_m1_origin",
    "basilar_tip",
    "left_ventricle_top",
    "right_ventricle_top",
)


def _identity(plan: StudyPlan, variant: str, small: bool, cta_slice_mm: float | None) -> Any:
    from scanet_node.synth.dicom_common import StudyIdentity

    year, birth, day, seconds, sex = _identity_draws(plan)
    return StudyIdentity(
        patient_name=f"SYNTH^CASE{plan.index:04d}",
        patient_id=plan.case_id,
        birth_date=birth,
        sex=sex,
        age=f"{STUDY_YEAR - year:03d}Y",
        accession=f"A{plan.seed:04d}{plan.index:05d}",
        # The variant and sizes are part of the study's identity: two renderings of
        # one case are two studies of one patient, never one study.
        study_uid=generate_uid(
            entropy_srcs=[
                "scanet-synth",
                str(plan.seed),
                str(plan.index),
                variant,
                str(small),
                str(cta_slice_mm),
            ]
        ),
        study_date=f"202611{day:02d}",
        study_time=f"{seconds // 3600:02d}{seconds % 3600 // 60:02d}{seconds % 60:02d}",
    )


@dataclass
class CohortSummary:
    """What ``generate_cohort`` wrote."""

    out_dir: Path
    studies: int
    positives: int
    oracle_auc: float | None
    seconds: float
    manifests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def balance(self) -> float:
        """Fraction of studies labelled 1 (recanalized)."""
        return self.positives / self.studies if self.studies else 0.0


def write_study(
    out_dir: Path,
    plan: StudyPlan,
    *,
    small: bool = False,
    variant: str = "standard",
    cta_slice_mm: float | None = None,
    fixed_anatomy: bool = False,
) -> dict[str, Any]:
    """Render and write one study as DICOM under ``out_dir / plan.case_id``; return its manifest.

    ``fixed_anatomy`` renders the atlas head and tree instead of the patient's own (for
    comparisons); the occlusion, outcome and acquisition are the same.
    """
    from scanet_node.synth import dicom
    from scanet_node.synth.phantom import Phantom
    from scanet_node.synth.scanner_geometry import Pose

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    f = plan.features
    occlusion = occlusion_of(plan, fixed_anatomy=fixed_anatomy)
    subject = None if fixed_anatomy else subject_of(plan)
    images_rng, contrast_hu = images_stream(plan)
    phantom = Phantom(occlusion, contrast_hu=contrast_hu, seed=plan.index, subject=subject)
    pose = Pose.random(np.random.default_rng([plan.seed, plan.index, _STREAM_POSE]))
    options = dicom.WriteOptions(small=small, cta_slice_mm=cta_slice_mm)
    options = replace(options, **VARIANTS[variant])
    identity = _identity(plan, variant, small, cta_slice_mm)
    study_dir = out_dir / plan.case_id
    started = time.perf_counter()
    files = dicom.write_study(study_dir, phantom, pose, identity, options, images_rng)

    def to_patient(points_mni: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return np.asarray(pose.to_patient(phantom.to_head(points_mni)), dtype=np.float64)

    clot_mni = np.asarray(occlusion.clot_center_mni, dtype=float)
    endpoints = np.asarray(occlusion.clot_endpoints_mni, dtype=float)
    manifest: dict[str, Any] = {
        "generator": "scanet-node synth",
        "generator_version": GENERATOR_VERSION,
        "synthetic": True,
        "seed": plan.seed,
        "index": plan.index,
        "case_id": plan.case_id,
        "variant": variant,
        "small": small,
        "study_instance_uid": identity.study_uid,
        "patient_id": identity.patient_id,
        "pose": pose.as_dict(),
        "anatomy": "atlas" if subject is None else subject.as_dict(),
        "head_affine": np.asarray(phantom.head_affine).round(5).tolist(),
        "contrast_hu": round(contrast_hu, 1),
        "occlusion": {
            **f.as_dict(),
            "clot_center_mni": clot_mni.round(2).tolist(),
            "clot_center_patient": to_patient(clot_mni).round(2).tolist(),
            "clot_endpoints_mni": endpoints.round(2).tolist(),
            "clot_endpoints_patient": to_patient(endpoints).round(2).tolist(),
        },
        "outcome": {
            "probability": plan.probability,
            "label": plan.label,
            "meaning": "1 = recanalization mTICI >= 2c after thrombectomy",
        },
        "landmarks": {
            name: {
                "mni": point.round(2).tolist(),
                "patient": to_patient(point).round(2).tolist(),
            }
            for name, point in _landmarks_mni(occlusion).items()
        },
        "series": files.as_manifest(study_dir),
        "timings": {k: round(v, 3) for k, v in files.timings.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    (study_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


_LABEL_COLUMNS = [
    "case_id",
    "study_instance_uid",
    "label",
    "probability",
    "side",
    "site",
    "length_mm",
    "clot_hu",
    "collateral_grade",
]


def generate_cohort(
    out_dir: Path,
    studies: int,
    seed: int,
    *,
    small: bool = False,
    variant: str = "standard",
    cta_slice_mm: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CohortSummary:
    """Write ``studies`` studies and ``labels.csv`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plans = plan_cohort(studies, seed)
    summary = CohortSummary(out_dir, studies, sum(p.label for p in plans), None, 0.0)
    rows = []
    for number, plan in enumerate(plans, start=1):
        manifest = write_study(
            out_dir, plan, small=small, variant=variant, cta_slice_mm=cta_slice_mm
        )
        summary.manifests.append(manifest)
        rows.append(label_row(plan, manifest["study_instance_uid"]))
        if progress is not None:
            progress(number, studies)
    return finish_cohort(summary, plans, _LABEL_COLUMNS, rows, started)


def label_row(plan: StudyPlan, study_uid: str) -> list[Any]:
    """The ``labels.csv`` values of one study, in ``_LABEL_COLUMNS`` order."""
    f = plan.features
    return [
        *(plan.case_id, study_uid, plan.label, plan.probability),
        *(f.side, f.site, f.length_mm, f.clot_hu, f.collateral_grade),
    ]


def finish_cohort(
    summary: CohortSummary,
    plans: Sequence[StudyPlan],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    started: float,
) -> CohortSummary:
    """Write ``labels.csv``; fill in the summary's oracle ROC-AUC and duration."""
    with (summary.out_dir / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    if 0 < summary.positives < summary.studies:
        summary.oracle_auc = oracle_auc(plans)
    summary.seconds = time.perf_counter() - started
    return summary
