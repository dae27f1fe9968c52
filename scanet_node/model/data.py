"""Cohorts for training and evaluation: labels, model inputs, and their cache.

A cohort folder holds ``labels.csv`` (at least ``case_id`` and ``label``, 1 = mTICI >= 2c)
and, per case, either

* ``inputs/<case_id>.npz`` with the prepared ``tensor`` (``2 x 26 x S x S``; what
  ``scanet-node synth --template-space`` writes), or
* ``<case_id>/``, the study's DICOM (one folder per series inside, as ``scanet-node synth``
  writes and as the node spools). It is prepared once (``imaging.prepare``: brain extraction,
  ANTs registration) and the input is cached in ``<cache>/<case_id>-<S>-v<INPUT_VERSION>.npz``:
  a second run, another fold or ``evaluate`` never registers it again, and a change to the
  preparation bumps the version, so a stale input is never reused.

A case that cannot be prepared is left out with its reason (``Cohort.excluded``), never silently.
An optional ``clot_slab`` column (synthetic cohorts) lets evaluation check where the model looked.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanet_node.errors import ScanetError
from scanet_node.imaging.model_input import INPUT_VERSION

logger = logging.getLogger(__name__)


class CohortError(ScanetError):
    """The cohort folder cannot be used (no labels, bad labels, no usable case)."""


class InputSizeError(CohortError):
    """Prepared inputs of another size than the model takes: the whole cohort is unusable."""


@dataclass
class Cohort:
    """Inputs (float16 in memory) and labels of the usable cases, in ``labels.csv`` order."""

    root: Path
    case_ids: list[str]
    inputs: npt.NDArray[np.float16]  # N x 2 x 26 x S x S
    labels: npt.NDArray[np.int64]
    clot_slabs: npt.NDArray[np.int64]  # -1 where unknown
    probabilities: npt.NDArray[np.float64]  # the synthetic truth, nan where unknown
    excluded: dict[str, str] = field(default_factory=dict)
    #: Per case, what its preparation recorded of its inputs (``monitoring.descriptors``'
    #: names: registration similarity, brain volume, ...); empty for template-space cases.
    descriptors: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def size(self) -> int:
        """In-plane size S of the inputs."""
        return int(self.inputs.shape[-1])


def read_labels(path: Path) -> list[dict[str, str]]:
    """Rows of ``labels.csv``; raises :class:`CohortError` naming what is wrong."""
    if not path.is_file():
        raise CohortError(f"{path}: no labels.csv (columns case_id,label; label 1 = mTICI >= 2c)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise CohortError(f"{path}: no cases")
    for column in ("case_id", "label"):
        if column not in rows[0]:
            raise CohortError(f"{path}: column {column!r} is missing")
    for number, row in enumerate(rows, start=2):
        if row["label"].strip() not in ("0", "1"):
            raise CohortError(f"{path} line {number}: label must be 0 or 1, got {row['label']!r}")
    return rows


def load_cohort(
    root: Path,
    size: int,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Cohort:
    """Load every case of ``root`` at in-plane size ``size``, preparing DICOM cases once."""
    rows = read_labels(root / "labels.csv")
    cache = cache_dir or root / ".cache"
    tensors, ids, labels, slabs, probs = [], [], [], [], []
    described: list[dict[str, Any]] = []
    excluded: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        case = row["case_id"].strip()
        try:
            tensor, descriptors = _case_input(root, case, size, cache)
        except InputSizeError:
            raise
        except CohortError as exc:
            excluded[case] = str(exc)
            logger.warning("case %s left out: %s", case, exc)
        else:
            tensors.append(tensor)
            described.append(descriptors)
            ids.append(case)
            labels.append(int(row["label"]))
            slabs.append(int(row["clot_slab"]) if row.get("clot_slab", "").strip() else -1)
            p = row.get("probability", "").strip()
            probs.append(float(p) if p else float("nan"))
        if progress is not None:
            progress(number, len(rows))
    if not tensors:
        raise CohortError(f"{root}: none of the {len(rows)} cases could be used")
    return Cohort(
        root,
        ids,
        np.stack(tensors),
        np.array(labels, dtype=np.int64),
        np.array(slabs, dtype=np.int64),
        np.array(probs, dtype=np.float64),
        excluded,
        described,
    )


def _case_input(
    root: Path, case: str, size: int, cache: Path
) -> tuple[npt.NDArray[np.float16], dict[str, Any]]:
    cached = f"{case}-{size}-v{INPUT_VERSION}.npz"  # an older preparation is never reused
    for candidate in (root / "inputs" / f"{case}.npz", cache / cached):
        if candidate.is_file():
            with np.load(candidate) as npz:
                tensor = np.asarray(npz["tensor"], dtype=np.float16)
                descriptors = _recorded_descriptors(npz)
            if tensor.shape != (2, 26, size, size):
                raise InputSizeError(
                    f"{candidate} holds a {tensor.shape} input; the model takes (2, 26, {size}, "
                    f"{size}): prepare the cohort at that size"
                )
            return tensor, descriptors
    study = root / case
    if not study.is_dir():
        raise CohortError(f"neither inputs/{case}.npz nor a DICOM folder {case}/ exists")
    from scanet_node.imaging.prepare import prepare
    from scanet_node.imaging.qc import NotAnalysable

    try:
        prepared = prepare(study, size=size)
    except NotAnalysable as exc:
        raise CohortError(str(exc)) from exc
    tensor = prepared.tensor.astype(np.float16)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{cached}"
    np.savez_compressed(tmp, tensor=tensor)
    tmp.replace(cache / cached)
    return tensor, {k: prepared.qc[k] for k in _QC_DESCRIPTORS if k in prepared.qc}


#: What a prepared study's QC records that drift monitoring describes its inputs by.
_QC_DESCRIPTORS = ("registration_similarity", "brain_volume_ml")
#: Names in a prepared cohort's ``inputs/<case>.npz`` (synth.prepared) -> descriptor names.
_NPZ_DESCRIPTORS = {
    "similarity": "registration_similarity",
    "brain_volume_ml": "brain_volume_ml",
    "ncct_slice_thickness_mm": "ncct_slice_thickness_mm",
    "cta_slice_thickness_mm": "cta_slice_thickness_mm",
    "scanner_model": "scanner_model",
}


def _recorded_descriptors(npz: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, name in _NPZ_DESCRIPTORS.items():
        if key in npz.files:
            value = npz[key]
            found[name] = str(value) if value.dtype.kind in "US" else float(value)
    return found


def stratified_folds(labels: npt.ArrayLike, folds: int, seed: int) -> list[npt.NDArray[np.int64]]:
    """Indices of each validation fold: every class dealt round-robin after a seeded shuffle."""
    y = np.asarray(labels).astype(int)
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    if min(np.sum(y == 0), np.sum(y == 1)) < folds:
        raise CohortError(f"each class needs at least {folds} cases for {folds}-fold validation")
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(y), dtype=np.int64)
    offset = 0
    for cls in (0, 1):
        members = rng.permutation(np.nonzero(y == cls)[0])
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return [np.sort(np.nonzero(assignment == k)[0]) for k in range(folds)]
