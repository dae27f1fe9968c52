"""What the SR and SC builders share: input checks, deterministic UIDs, texts, identity."""

from __future__ import annotations

import copy
import math
import numbers
import re
import unicodedata
from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from scanet_node import __version__
from scanet_node.catalog.models import JobOutcome
from scanet_node.results.types import (
    AnalysisResult,
    ResultsError,
    StudyRefs,
)

MANUFACTURER = "scanet-node project"
MODEL_NAME = "scanet-node"
SOFTWARE_VERSION = __version__
SLABS = 26

RESEARCH_USE = "RESEARCH USE - not for clinical decisions"
RESEARCH_USE_SYNTHETIC = "RESEARCH USE - trained on synthetic data, not for clinical use"

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REASON = re.compile(r"[a-z0-9_]{1,64}")

# Patient and General Study attributes copied from the target; Type 2 ones are written empty
# when the target lacks them (PS3.3 C.7.1.1, C.7.2.1).
_PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_PATIENT_STUDY_OPTIONAL = (
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDescription",
    "SpecificCharacterSet",
)


def uid(seed: str, *parts: str) -> UID:
    """A UID that is a pure function of the study's seed and the object it names."""
    return generate_uid(entropy_srcs=[seed, *parts])


def series_description(result: AnalysisResult, what: str) -> str:
    """``SCANet <what>``, with the research-use note of a synthetic-trained model (LO, 64)."""
    if result.algorithm.synthetic:
        return f"SCANet {what} (research use, synthetic-trained demo model)"
    return f"SCANet {what} (research use)"


def research_statement(result: AnalysisResult) -> str:
    """The sentence every output carries about its use."""
    return RESEARCH_USE_SYNTHETIC if result.algorithm.synthetic else RESEARCH_USE


def ascii_text(text: str) -> str:
    """``text`` in the default character repertoire (our texts must not change the charset)."""
    folded = unicodedata.normalize("NFKD", text).replace("\u2265", ">=").replace("\u2264", "<=")
    return folded.encode("ascii", "replace").decode("ascii")


def percent(probability: float) -> float:
    """A probability as percent, rounded to 0.1."""
    return round(100.0 * float(probability), 1)


def class_text(result: AnalysisResult) -> str:
    """The predicted class at the threshold, in words."""
    return "mTICI >= 2c" if result.positive else "mTICI < 2c"


def header(target: Dataset) -> Dataset:
    """The patient and study attributes of ``target`` (plus its identity), Type 2 filled.

    highdicom copies patient and study from the first evidence item and reads the Type 2
    attributes as attributes, so a target without them would raise there.
    """
    out = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(out, keyword, target[keyword].value)
    for keyword in (*_PATIENT_STUDY_TYPE2, *_PATIENT_STUDY_OPTIONAL):
        if keyword in target:
            out[keyword] = copy.deepcopy(target[keyword])
        elif keyword in _PATIENT_STUDY_TYPE2:
            setattr(out, keyword, None)
    for keyword in ("Manufacturer", "ManufacturerModelName", "InstitutionName"):
        if keyword in target:
            out[keyword] = copy.deepcopy(target[keyword])
    return out


def validate(study: StudyRefs, result: AnalysisResult) -> None:
    """Raise ResultsError naming the first input that cannot make a valid result."""
    _check_instance(study.target, "study.target")
    if not isinstance(study.uid_seed, str) or not study.uid_seed.strip():
        raise ResultsError("study.uid_seed is empty")
    patient_id = str(study.target.get("PatientID", "") or "")
    seen: set[str] = set()
    for role, instances in (("ncct", study.ncct), ("cta", study.cta)):
        series = {str(ds.get("SeriesInstanceUID", "")) for ds in instances}
        if len(series) > 1:
            raise ResultsError(f"study.{role} holds {len(series)} series; expected one")
        for i, ds in enumerate(instances):
            _check_instance(ds, f"study.{role}[{i}]")
            if ds.SOPInstanceUID in seen:
                raise ResultsError(f"study.{role}[{i}]: SOP Instance UID {ds.SOPInstanceUID} twice")
            seen.add(ds.SOPInstanceUID)
            other = str(ds.get("PatientID", "") or "")
            if patient_id and other and other != patient_id:
                raise ResultsError(f"study.{role}[{i}] belongs to another patient than the target")
    if study.predecessor is not None:
        _check_instance(study.predecessor, "study.predecessor")
        if study.predecessor.SOPInstanceUID == uid(study.uid_seed, "sr", "instance"):
            raise ResultsError("study.predecessor is the SR this seed makes; amend with a new seed")
    _check_algorithm(result)
    if result.status == JobOutcome.ANALYSED:
        _check_analysed(study, result)
    elif result.status == JobOutcome.NOT_ANALYSABLE:
        _check_not_analysable(result)
    else:
        raise ResultsError(
            f"result.status {result.status!r} is neither analysed nor not_analysable"
        )


def _check_instance(ds: Dataset, name: str) -> None:
    if not isinstance(ds, Dataset):
        raise ResultsError(f"{name} is a {type(ds).__name__}, not a pydicom Dataset")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "")
        if not value:
            raise ResultsError(f"{name} has no {keyword}")
        if len(value) > 64 or not _UID.fullmatch(value):
            raise ResultsError(f"{name}: {keyword} {value!r} is not a valid UID")


def _check_algorithm(result: AnalysisResult) -> None:
    algo = result.algorithm
    if not algo.name.strip() or not algo.version.strip():
        raise ResultsError("result.algorithm needs a name and a version")
    if not _SHA256.fullmatch(algo.checkpoint_sha256):
        raise ResultsError("result.algorithm.checkpoint_sha256 is not 64 lower-case hex digits")
    if not (math.isfinite(algo.threshold) and 0.0 < algo.threshold < 1.0):
        raise ResultsError(f"result.algorithm.threshold {algo.threshold} is not in (0, 1)")
    if algo.input_size <= 0:
        raise ResultsError(f"result.algorithm.input_size {algo.input_size} is not positive")


def _check_analysed(study: StudyRefs, result: AnalysisResult) -> None:
    if not study.ncct or not study.cta:
        raise ResultsError("an analysed result needs the NCCT and the CTA instances")
    p = result.probability
    real = isinstance(p, numbers.Real) and not isinstance(p, bool)
    if p is None or not real or not math.isfinite(p) or not 0 <= p <= 1:
        raise ResultsError(f"result.probability {p!r} is not a probability in [0, 1]")
    if result.positive is None or result.positive != (p >= result.algorithm.threshold):
        raise ResultsError(
            f"result.positive {result.positive!r} does not match probability {p} at "
            f"threshold {result.algorithm.threshold}"
        )
    if result.reason is not None:
        raise ResultsError("an analysed result has no reason")
    weights = np.asarray(result.slice_weights, dtype=np.float64)
    if weights.shape != (SLABS,):
        raise ResultsError(f"result.slice_weights has {weights.size} values; expected {SLABS}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or abs(weights.sum() - 1) > 1e-3:
        raise ResultsError("result.slice_weights are not non-negative weights summing to 1")
    ncct_uids = {ds.SOPInstanceUID for ds in study.ncct}
    for i, overlay in enumerate(result.overlays):
        name = f"result.overlays[{i}]"
        src = overlay.source
        if str(src.get("SOPInstanceUID", "")) not in ncct_uids:
            raise ResultsError(f"{name}.source is not one of the NCCT instances")
        shape = (int(src.get("Rows", 0)), int(src.get("Columns", 0)))
        for field_name in ("hu", "attention"):
            array = getattr(overlay, field_name)
            if not isinstance(array, np.ndarray) or array.shape != shape:
                got = getattr(array, "shape", None)
                raise ResultsError(f"{name}.{field_name} has shape {got}; the source is {shape}")
            if not np.all(np.isfinite(array)):
                raise ResultsError(f"{name}.{field_name} is not finite everywhere")
        att = overlay.attention
        if att.min() < -1e-6 or att.max() > 1 + 1e-6:
            raise ResultsError(f"{name}.attention is outside [0, 1]")
        if not 0 <= overlay.slab < SLABS:
            raise ResultsError(f"{name}.slab {overlay.slab} is not in 0..{SLABS - 1}")
        if not (math.isfinite(overlay.slice_weight) and 0 <= overlay.slice_weight <= 1):
            raise ResultsError(f"{name}.slice_weight {overlay.slice_weight} is not in [0, 1]")
        _check_spacing(src, name)
    if (result.attention_point is None) != (result.attention_slab is None):
        raise ResultsError("result.attention_point and attention_slab go together")
    if result.attention_point is not None:
        point = np.asarray(result.attention_point, dtype=np.float64)
        if point.shape != (3,) or not np.all(np.isfinite(point)):
            raise ResultsError(f"result.attention_point {result.attention_point!r} is not x, y, z")
        if not 0 <= int(result.attention_slab or 0) < SLABS:
            raise ResultsError(f"result.attention_slab {result.attention_slab} is not in 0..25")
        if not str(study.ncct[0].get("FrameOfReferenceUID", "")):
            raise ResultsError("the NCCT has no Frame of Reference UID for the attention point")


def _check_not_analysable(result: AnalysisResult) -> None:
    if result.probability is not None or result.positive is not None:
        raise ResultsError("a not_analysable result has no probability and no class")
    if result.overlays or result.slice_weights or result.attention_point is not None:
        raise ResultsError(
            "a not_analysable result has no overlays, slice weights or attention point"
        )
    if result.reason is None or not _REASON.fullmatch(result.reason):
        raise ResultsError(f"result.reason {result.reason!r} is not a reason code ([a-z0-9_])")
    if not result.detail or not result.detail.strip():
        raise ResultsError("a not_analysable result needs the detail sentence")


def _check_spacing(src: Dataset, name: str) -> None:
    spacing = src.get("PixelSpacing")
    if spacing is not None and (len(spacing) != 2 or min(float(v) for v in spacing) <= 0):
        raise ResultsError(f"{name}.source PixelSpacing {list(spacing)} is not two positive values")


def unique(datasets: Iterable[Dataset]) -> list[Dataset]:
    """``datasets`` without repeated SOP Instance UIDs, first kept."""
    seen: set[str] = set()
    out = []
    for ds in datasets:
        if ds.SOPInstanceUID not in seen:
            seen.add(ds.SOPInstanceUID)
            out.append(ds)
    return out
