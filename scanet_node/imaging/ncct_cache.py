"""The prepared NCCT, kept under the spool until its CTA arrives.

Scanners and PACS send the NCCT first, and the CTA (~300 images) takes the longest to arrive.
A worker with nothing else to do prepares a settled NCCT at once (load, head check, brain
extraction, NCCT -> template, the NCCT on the model's grid: :func:`prepare.prepare_ncct`) and
keeps the result here; when the job comes, ``prepare`` takes it from here and is left with the
CTA's half.

An entry is named by the NCCT's *signature*: its Series Instance UID and, for each of its
files, the name (the SOP Instance UID in the spool), size and modification time, with the
preparation's options (method, model size) and this package's version. A series that grew,
lost an instance or had one replaced has another signature, so its old entry is never used.
Entries lie in ``ROOT/<Study Instance UID>/<signature>.npz`` (plain arrays, no pickle), are
written atomically, and go with their study when retention purges it
(:func:`scanet_node.ingest.spool.purge_study_caches`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanet_node import __version__
from scanet_node.imaging.register import (
    Displacement,
    NcctRegistration,
    RigidTarget,
    StudyTransform,
)
from scanet_node.imaging.template import Grid
from scanet_node.ingest.spool import cache_dir
from scanet_node.ingest.uids import check_uid

logger = logging.getLogger(__name__)

#: Raised whenever what an entry holds changes meaning; older entries are then not found.
FORMAT = 1
#: A claim older than this is taken to belong to a worker that died.
STALE_CLAIM_SECONDS = 600.0

FloatArray = npt.NDArray[np.float64]


@dataclass(eq=False)
class PreparedNcct:
    """An NCCT prepared for its study's analysis: what ``prepare`` needs of it.

    Attributes
    ----------
    study_instance_uid, series_instance_uid, frame_of_reference_uid
        The NCCT.
    shape, affine
        Its regular grid (``[k, j, i]``, index -> LPS mm) after loading.
    reasons
        What loading corrected or found questionable, as ``prepare`` reports it.
    head
        The head check's summary.
    coverage
        The fraction of the template's brain the NCCT covers.
    registration
        The NCCT's half of the registration.
    timings
        Seconds per stage of its preparation.
    """

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    shape: tuple[int, int, int]
    affine: FloatArray
    reasons: list[str]
    head: str
    coverage: float
    registration: NcctRegistration
    timings: dict[str, float] = field(default_factory=dict)


def signature(paths: Sequence[Path], *, series_instance_uid: str, method: str, size: int) -> str:
    """The name of an NCCT's cache entry (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(f"{FORMAT}|{__version__}|{method}|{size}|{series_instance_uid}".encode())
    files = []
    for path in paths:
        real = Path(path).resolve()
        st = real.stat()
        files.append(f"{real.name}|{st.st_size}|{st.st_mtime_ns}")
    for line in sorted(files):
        digest.update(b"\n" + line.encode())
    return digest.hexdigest()[:40]


class NcctCache:
    """Prepared NCCTs under ``root`` (the node's ``SPOOL/.cache/ncct``: :meth:`in_spool`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def in_spool(cls, spool_root: Path) -> NcctCache:
        """The cache of the spool at ``spool_root``, purged with each study (ingest/spool.py)."""
        return cls(cache_dir(spool_root, "ncct"))

    def has(self, study_instance_uid: str, key: str) -> bool:
        """Whether an entry is there (without reading it)."""
        return self._path(study_instance_uid, key).is_file()

    def _folder(self, study_instance_uid: str) -> Path:
        return self.root / check_uid(study_instance_uid, "Study Instance UID")

    def _path(self, study_instance_uid: str, key: str) -> Path:
        if not key.isalnum():
            raise ValueError(f"not a cache key: {key!r}")
        return self._folder(study_instance_uid) / f"{key}.npz"

    def get(self, study_instance_uid: str, key: str) -> PreparedNcct | None:
        """The entry, or None (absent, or unreadable: then it is removed)."""
        path = self._path(study_instance_uid, key)
        try:
            with np.load(path, allow_pickle=False) as data:
                return _unpack(data)
        except FileNotFoundError:
            return None
        except Exception as exc:  # a damaged entry is a miss, never a failed study
            logger.warning("NCCT cache entry %s unreadable (%s); removed", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def put(self, key: str, prepared: PreparedNcct) -> Path:
        """Write an entry atomically; return its path."""
        path = self._path(prepared.study_instance_uid, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.part")
        with open(tmp, "wb") as fh:
            np.savez(fh, **_pack(prepared))
        os.replace(tmp, path)
        return path

    def wait(self, study_instance_uid: str, key: str, timeout: float) -> PreparedNcct | None:
        """The entry, waiting up to ``timeout`` seconds while another holds its claim (it is
        being prepared: that is sooner than preparing it again); None when it did not come."""
        claim = self._path(study_instance_uid, key).with_suffix(".claim")
        deadline = time.monotonic() + timeout
        while not self.has(study_instance_uid, key) and time.monotonic() < deadline:
            try:
                if time.time() - claim.stat().st_mtime > timeout:
                    break  # left by a worker that died
            except FileNotFoundError:
                break  # nobody is preparing it
            time.sleep(0.05)
        return self.get(study_instance_uid, key)

    @contextlib.contextmanager
    def claim(self, study_instance_uid: str, key: str) -> Iterator[bool]:
        """Claim the preparation of an entry among workers: yields False when another holds
        it (a claim older than ``STALE_CLAIM_SECONDS`` is taken over), True otherwise."""
        lock = self._path(study_instance_uid, key).with_suffix(".claim")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - lock.stat().st_mtime > STALE_CLAIM_SECONDS:
                lock.unlink()
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            yield False
            return
        os.close(fd)
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()


# ---------------------------------------------------------------------------------------------
# Plain arrays in, plain arrays out


def _pack(p: PreparedNcct) -> dict[str, Any]:
    r = p.registration
    t = r.transform
    meta = {
        "study_instance_uid": p.study_instance_uid,
        "series_instance_uid": p.series_instance_uid,
        "frame_of_reference_uid": p.frame_of_reference_uid,
        "shape": list(p.shape),
        "reasons": p.reasons,
        "head": p.head,
        "coverage": p.coverage,
        "timings": p.timings,
        "method": t.method,
        "grid_shape": list(r.grid.shape),
        "similarity": r.similarity,
        "brain_volume_ml": r.brain_volume_ml,
        "registration_timings": r.timings,
    }
    arrays: dict[str, Any] = {
        "meta": np.array(json.dumps(meta)),
        "affine": p.affine,
        "grid_affine": r.grid.affine,
        "ncct_to_mni": t.ncct_to_mni,
        "ncct": r.ncct,
        "brain_mask": r.brain_mask,
        "rigid_image": r.rigid_target.image,
        "rigid_mask": r.rigid_target.mask,
        "rigid_affine": r.rigid_target.affine,
    }
    for name, warp in (("warp", t.warp), ("inverse_warp", t.inverse_warp)):
        if warp is not None:
            arrays[f"{name}_vectors"] = warp.vectors
            arrays[f"{name}_affine"] = warp.affine_lps
    return arrays


def _unpack(data: Any) -> PreparedNcct:
    meta = json.loads(str(data["meta"]))
    warps = {
        name: Displacement(data[f"{name}_vectors"], data[f"{name}_affine"])
        if f"{name}_vectors" in data
        else None
        for name in ("warp", "inverse_warp")
    }
    registration = NcctRegistration(
        transform=StudyTransform(
            method=meta["method"],
            ncct_to_mni=np.asarray(data["ncct_to_mni"], dtype=np.float64),
            warp=warps["warp"],
            inverse_warp=warps["inverse_warp"],
        ),
        grid=Grid(tuple(meta["grid_shape"]), np.asarray(data["grid_affine"])),
        ncct=np.asarray(data["ncct"], dtype=np.float32),
        brain_mask=np.asarray(data["brain_mask"], dtype=bool),
        similarity=float(meta["similarity"]),
        brain_volume_ml=float(meta["brain_volume_ml"]),
        rigid_target=RigidTarget(
            np.asarray(data["rigid_image"], dtype=np.float32),
            np.asarray(data["rigid_mask"], dtype=bool),
            np.asarray(data["rigid_affine"], dtype=np.float64),
        ),
        timings=dict(meta["registration_timings"]),
    )
    return PreparedNcct(
        study_instance_uid=meta["study_instance_uid"],
        series_instance_uid=meta["series_instance_uid"],
        frame_of_reference_uid=meta["frame_of_reference_uid"],
        shape=tuple(meta["shape"]),
        affine=np.asarray(data["affine"], dtype=np.float64),
        reasons=list(meta["reasons"]),
        head=str(meta["head"]),
        coverage=float(meta["coverage"]),
        registration=registration,
        timings=dict(meta["timings"]),
    )
