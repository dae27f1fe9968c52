"""The spool: received instances, each written whole and durably before it is catalogued.

A file is written under ``.tmp/``, fsynced, renamed into
``<study>/<series>/<sop>.dcm`` and its folder fsynced, so after a crash a path
either holds a complete instance or does not exist. Paths are built from
validated UIDs only (:func:`scanet_node.ingest.uids.check_uid`).

``.cache/<kind>/<study>/`` holds what the pipeline derived from a study's instances ahead of
its job (the prepared NCCT: imaging/ncct_cache.py); it goes with the study.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

from scanet_node.dicom_status import Status
from scanet_node.errors import IngestError, SpoolError
from scanet_node.ingest.uids import check_uid

logger = logging.getLogger(__name__)

TMP_DIR = ".tmp"
CACHE_DIR = ".cache"


def cache_dir(spool_root: Path, kind: str) -> Path:
    """The folder of one kind of derived data under the spool (``.cache/<kind>``)."""
    return Path(spool_root) / CACHE_DIR / kind


def purge_study_caches(spool_root: Path, study_instance_uid: str) -> int:
    """Remove everything derived from a study (every kind); return how many folders went."""
    uid = check_uid(study_instance_uid, "Study Instance UID")
    removed = 0
    root = Path(spool_root) / CACHE_DIR
    if not root.is_dir():
        return 0
    for kind in root.iterdir():
        folder = kind / uid
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
            removed += 1
    return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable file storage for received instances.

    Parameters
    ----------
    root
        The spool folder (created if missing).
    min_free_bytes
        Refuse a write that would leave less free space than this on the spool's
        file system, so the disk never fills up under the catalog.
    """

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root).resolve()
        self.min_free_bytes = min_free_bytes
        self._tmp = self.root / TMP_DIR
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool folder {self.root}: {exc.strerror}") from exc
        self._ready_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()

    def remove_partial_files(self) -> int:
        """Delete temporary files left by a crash; return how many there were."""
        removed = 0
        for leftover in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed

    @staticmethod
    def relative_path(study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The spool-relative path of an instance, from its (re-validated) UIDs."""
        parts = (
            check_uid(study_uid, "StudyInstanceUID"),
            check_uid(series_uid, "SeriesInstanceUID"),
            check_uid(sop_uid, "SOPInstanceUID") + ".dcm",
        )
        return "/".join(parts)

    def path(self, relative: str) -> Path:
        """The absolute path of a spool-relative path."""
        return self.root / relative

    def free_bytes(self) -> int:
        """Free space on the spool's file system, as an unprivileged writer sees it."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def has_room(self, size: int = 0, free: int | None = None) -> bool:
        """Whether writing ``size`` bytes would leave at least ``min_free_bytes`` free (the
        low-disk guard); ``free`` is the free space when the caller has just measured it."""
        if not self.min_free_bytes:
            return True
        free = self.free_bytes() if free is None else free
        return free - size >= self.min_free_bytes

    def _ensure_dir(self, folder: Path) -> None:
        """Make ``folder`` and its parents below the root, fsyncing each new entry."""
        if folder in self._ready_dirs:
            return
        with self._dirs_lock:
            current = self.root
            for part in folder.relative_to(self.root).parts:
                parent, current = current, current / part
                if current in self._ready_dirs:
                    continue
                if not current.is_dir():
                    current.mkdir(exist_ok=True)
                    _fsync_dir(parent)
                self._ready_dirs.add(current)

    def _forget_dirs(self, folder: Path) -> None:
        """Forget ``folder`` and its parents below the root: they are made again when needed."""
        with self._dirs_lock:
            while folder != self.root and self.root in folder.parents:
                self._ready_dirs.discard(folder)
                folder = folder.parent

    def _place(self, tmp: Path, target: Path) -> None:
        """Rename the written file into place, its folders made (again) where needed.

        Retention removes a purged study's emptied folders behind our back (pipeline/
        retention.py); a rename that finds its folder gone makes it again and retries.
        """
        for attempt in range(3):
            try:
                self._ensure_dir(target.parent)
                os.replace(tmp, target)
                break
            except FileNotFoundError:
                if attempt == 2 or not tmp.exists():
                    raise
                self._forget_dirs(target.parent)
        _fsync_dir(target.parent)

    def write(self, relative: str, *parts: bytes) -> int:
        """Write ``parts``, one after the other, durably at ``relative``; return the size.

        An earlier file at ``relative`` is replaced atomically.

        Raises
        ------
        IngestError
            With status 0xA700 when the disk is (nearly) full or the spool cannot
            be written; no partial file remains.
        """
        size = sum(len(part) for part in parts)
        if not self.has_room(size):
            raise IngestError(Status.OUT_OF_RESOURCES, "Out of resources: spool disk nearly full")
        target = self.root / relative
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._place(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._forget_dirs(target.parent)
            name = errno.errorcode.get(exc.errno or 0, "error")
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                reason = f"Out of resources: spool disk full ({name})"
            else:
                reason = f"Out of resources: cannot write spool ({name})"
            logger.error("spool write failed: %s", reason)
            raise IngestError(Status.OUT_OF_RESOURCES, reason) from exc
        return size

    def discard(self, relative: str) -> None:
        """Remove a file written for an instance that was then refused."""
        with contextlib.suppress(FileNotFoundError):
            (self.root / relative).unlink()
