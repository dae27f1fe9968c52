"""Retention: which studies to purge (a pure decision), and the sweep that purges them.

Rules (README, "Retention"):

* A study whose last instance arrived more than ``[retention] days`` ago is purged ("age"),
  whatever became of its deliveries: one still failing then is given up and counted in the
  audit row's ``deliveries_failed``.
* With ``purge_after_delivery``, a study is purged as soon as the newest job filed in it is
  done and every one of that job's deliveries (at least one) is sent, and none of its series
  is still receiving or waiting for its role ("delivered").
* Studies linked by a job (filed in one, the NCCT read from another study of the patient)
  are decided and purged together: purging the CTA's study alone would leave its NCCT to be
  reported "CTA missing" by the trigger. Such a group is purged by age when all its studies
  are old, by delivery when every study with jobs filed in it is delivered.
* Never while a job of the group is queued or running, or its results are being sent.

The sweep deletes the files first (the instance files the catalog names, the jobs' results
folders), then the rows with one de-identified audit row per study in one transaction, so a
crash in between is healed by the next sweep. A study folder is never removed whole: an
instance arriving during the purge is kept, and the study is skipped this time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from scanet_node.catalog.models import ACTIVE_JOB_STATUSES, DeliveryStatus, JobStatus
from scanet_node.catalog.retention import (
    SENDING,
    AuditInfo,
    RetentionJob,
    RetentionStore,
    RetentionStudy,
    StudyContents,
    StudyToPurge,
)
from scanet_node.catalog.store import Catalog, utcnow
from scanet_node.config import RetentionSettings
from scanet_node.errors import SpoolError
from scanet_node.ingest.spool import TMP_DIR, purge_study_caches

logger = logging.getLogger(__name__)

#: A spool file modified after its study's last arrival (plus this, for coarse timestamps
#: and a file server's clock) and less than ``RECENT_FILE_SECONDS`` before the decision may
#: be the same instance sent again during the purge: it is kept, and the study's rows stay
#: until the next sweep decides again. (Only recent files: a spool copied without its
#: modification times must still be purged.)
MTIME_TOLERANCE_SECONDS = 2.0
RECENT_FILE_SECONDS = 60.0


class DiskUsage(NamedTuple):
    """Files and bytes, of a folder or a study."""

    files: int
    bytes: int


class _Deleted(NamedTuple):
    """What deleting one study's files did."""

    files: int
    bytes: int
    kept: int  # files left as too new (maybe the same instance sent again)


@dataclass(frozen=True)
class PurgeGroup:
    """Studies to purge together, and by which rule ("age" or "delivered")."""

    study_instance_uids: tuple[str, ...]
    rule: str


@dataclass(frozen=True)
class Held:
    """Studies old enough to purge that are kept for now, and why."""

    study_instance_uids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class RetentionPlan:
    """What the purge decision wants: groups to purge, and old groups held back."""

    purge: list[PurgeGroup] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)


def _groups(studies: Sequence[RetentionStudy], jobs: Sequence[RetentionJob]) -> list[list[str]]:
    """The catalogued studies, grouped by the jobs that link them (union-find)."""
    parent: dict[str, str] = {s.study_instance_uid: s.study_instance_uid for s in studies}

    def find(uid: str) -> str:
        while parent[uid] != uid:
            parent[uid] = parent[parent[uid]]
            uid = parent[uid]
        return uid

    for job in jobs:
        linked = [u for u in (job.study_instance_uid, *job.input_study_uids) if u in parent]
        for uid in linked[1:]:
            parent[find(uid)] = find(linked[0])
    members: dict[str, list[str]] = defaultdict(list)
    for uid in parent:
        members[find(uid)].append(uid)
    return [sorted(m) for m in members.values()]


def _busy(jobs: Iterable[RetentionJob]) -> str:
    """Why these jobs keep their studies now ("" when nothing does)."""
    jobs = list(jobs)
    if any(j.status in ACTIVE_JOB_STATUSES for j in jobs):
        return "an analysis is queued or running"
    if any(SENDING in j.deliveries for j in jobs):
        return "results are being sent"
    return ""


def _delivered(newest: RetentionJob) -> bool:
    return (
        newest.status == JobStatus.DONE
        and bool(newest.deliveries)
        and (all(d == DeliveryStatus.SENT for d in newest.deliveries))
    )


def plan_purge(
    studies: Sequence[RetentionStudy],
    jobs: Sequence[RetentionJob],
    now: datetime,
    settings: RetentionSettings,
) -> RetentionPlan:
    """Decide which studies to purge now (the rules in this module's docstring).

    Parameters
    ----------
    studies
        Every catalogued study (or a closed group of them).
    jobs
        Every job filed in or reading from these studies.
    now
        The time of the decision (naive UTC, the catalog's convention).
    settings
        ``[retention]``.
    """
    cutoff = now - timedelta(days=settings.days)
    by_uid = {s.study_instance_uid: s for s in studies}
    jobs_of: dict[str, list[RetentionJob]] = defaultdict(list)
    for job in jobs:
        for uid in {job.study_instance_uid, *job.input_study_uids}:
            if uid in by_uid:
                jobs_of[uid].append(job)
    plan = RetentionPlan()
    for group in _groups(studies, jobs):
        group_jobs = {j.id: j for uid in group for j in jobs_of[uid]}
        old = all(by_uid[uid].last_received_at < cutoff for uid in group)
        busy = _busy(group_jobs.values())
        if busy:
            if old:
                plan.held.append(Held(tuple(group), busy))
            continue
        if old:
            plan.purge.append(PurgeGroup(tuple(group), "age"))
            continue
        if not settings.purge_after_delivery or any(by_uid[uid].pending for uid in group):
            continue
        filed: dict[str, RetentionJob] = {}
        for job in group_jobs.values():
            newest = filed.get(job.study_instance_uid)
            if job.study_instance_uid in by_uid and (newest is None or job.id > newest.id):
                filed[job.study_instance_uid] = job
        if filed and all(_delivered(job) for job in filed.values()):
            plan.purge.append(PurgeGroup(tuple(group), "delivered"))
    return plan


# -- the sweep ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgedStudy:
    """One study the sweep purged (or, in a dry run, would purge)."""

    study_instance_uid: str
    rule: str
    files: int
    bytes_freed: int
    audit: AuditInfo | None = None


@dataclass
class SweepReport:
    """What one retention sweep did."""

    dry_run: bool = False
    purged: list[PurgedStudy] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    #: Groups left for the next sweep: an instance arrived or a job started meanwhile.
    skipped: int = 0
    #: Spool files written after the decision, left in place.
    files_kept: int = 0

    @property
    def bytes_freed(self) -> int:
        """Bytes freed (or that would be) over all purged studies."""
        return sum(p.bytes_freed for p in self.purged)


class _Refused(Exception):
    """A path to delete lies outside the spool or the results folder."""


@dataclass
class _Files:
    """Checked paths of one study: instance files, results folders."""

    instance_files: list[Path]
    results_dirs: list[Path]
    last_received: float  # epoch seconds of the study's last arrival, as decided


def _inside(path: Path, root: Path) -> bool:
    return path != root and path.is_relative_to(root)


def _check_paths(contents: StudyContents, spool_root: Path, results_root: Path) -> _Files:
    files = []
    for relative in contents.instance_paths:
        rel = Path(relative)
        # Not resolve(): a file's own name must not be followed; its folders are ours.
        path = (spool_root / rel.parent).resolve() / rel.name
        if rel.is_absolute() or ".." in rel.parts or not _inside(path, spool_root):
            raise _Refused(f"instance path {relative!r} is outside the spool ([node] data_dir)")
        files.append(path)
    folders = []
    for folder in contents.results_dirs:
        path = Path(folder).resolve()
        if not _inside(path, results_root):
            raise _Refused(f"results folder {folder!r} is outside {results_root} ([node] data_dir)")
        folders.append(path)
    last = contents.last_received_at.replace(tzinfo=UTC).timestamp()
    return _Files(files, folders, last)


def tree_bytes(folder: Path) -> DiskUsage:
    """Files and bytes under ``folder`` (0, 0 if it is gone); links are not followed, and what
    cannot be read is left out."""
    count = size = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(dirpath, name)).st_size
                count += 1
    return DiskUsage(count, size)


def _measure(files: _Files) -> DiskUsage:
    count = size = 0
    for path in files.instance_files:
        with contextlib.suppress(FileNotFoundError):
            size += os.lstat(path).st_size
            count += 1
    for folder in files.results_dirs:
        usage = tree_bytes(folder)
        count, size = count + usage.files, size + usage.bytes
    return DiskUsage(count, size)


def _remove_empty_parents(folders: set[Path], root: Path) -> None:
    """Remove each folder and its parents below ``root`` while they are empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        current = folder
        while _inside(current, root):
            try:
                current.rmdir()
            except OSError:  # not empty (an instance arrived), or already gone
                break
            current = current.parent


def _delete(files: _Files, spool_root: Path, decided_at: float) -> _Deleted:
    """Delete the files; what was deleted, and what was kept as too new."""
    count = size = kept = 0
    keep_after = max(
        files.last_received + MTIME_TOLERANCE_SECONDS, decided_at - RECENT_FILE_SECONDS
    )
    for path in files.instance_files:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # deleted by an earlier sweep that stopped before its transaction
        if st.st_mtime > keep_after:
            kept += 1  # maybe written during the purge: the same instance sent again
            continue
        if stat.S_ISDIR(st.st_mode):
            continue  # not an instance file, whatever the row says
        # Any other failure (a read-only spool) ends the sweep: the rows must stay.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            count, size = count + 1, size + st.st_size
    for folder in files.results_dirs:
        usage = tree_bytes(folder)
        if folder.exists():
            shutil.rmtree(folder)
        count, size = count + usage.files, size + usage.bytes
    _remove_empty_parents({p.parent for p in files.instance_files}, spool_root)
    return _Deleted(count, size, kept)


def _purge_group(
    store: RetentionStore,
    group: PurgeGroup,
    settings: RetentionSettings,
    now: datetime,
    spool_root: Path,
    results_root: Path,
    report: SweepReport,
) -> None:
    # Decide again on fresh rows: the first decision may be minutes old in a long sweep.
    decided_at = time.time()
    studies, jobs = store.state(group.study_instance_uids)
    if group not in plan_purge(studies, jobs, now, settings).purge:
        report.skipped += 1
        return
    contents = store.contents(group.study_instance_uids)
    decided = {s.study_instance_uid: s.last_received_at for s in studies}
    if {c.study_instance_uid: c.last_received_at for c in contents} != {
        uid: decided[uid] for uid in group.study_instance_uids
    }:
        report.skipped += 1  # an instance arrived between the two reads
        return
    try:
        checked = {
            c.study_instance_uid: _check_paths(c, spool_root, results_root) for c in contents
        }
    except _Refused as exc:
        logger.warning("retention: study %s not purged: %s", group.study_instance_uids[0], exc)
        report.held.append(Held(group.study_instance_uids, str(exc)))
        return
    if report.dry_run:
        for c in contents:
            usage = _measure(checked[c.study_instance_uid])
            report.purged.append(
                PurgedStudy(c.study_instance_uid, group.rule, usage.files, usage.bytes)
            )
        return
    done: dict[str, _Deleted] = {}
    for c in contents:
        done[c.study_instance_uid] = _delete(checked[c.study_instance_uid], spool_root, decided_at)
        purge_study_caches(spool_root, c.study_instance_uid)  # the prepared NCCT, if any
    kept = sum(d.kept for d in done.values())
    report.files_kept += kept
    audits = None
    if not kept:
        audits = store.purge(
            [
                StudyToPurge(
                    c.study_instance_uid, c.last_received_at, done[c.study_instance_uid].bytes
                )
                for c in contents
            ],
            group.rule,
            utcnow(),
        )
    if audits is None:
        logger.info(
            "retention: study %s changed during the purge; left for the next sweep",
            group.study_instance_uids[0],
            extra={"study_uid": group.study_instance_uids[0]},
        )
        report.skipped += 1
        return
    for c, audit in zip(contents, audits, strict=True):
        deleted = done[c.study_instance_uid]
        report.purged.append(
            PurgedStudy(c.study_instance_uid, group.rule, deleted.files, deleted.bytes, audit)
        )
        logger.info(
            "retention: purged study %s (%s): %d series, %d instances, %d files, %d bytes",
            c.study_instance_uid,
            group.rule,
            audit.num_series,
            audit.num_instances,
            deleted.files,
            deleted.bytes,
            extra={"study_uid": c.study_instance_uid},
        )


def run_retention(
    catalog: Catalog,
    settings: RetentionSettings,
    spool_root: Path,
    results_root: Path,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    guard: AbstractContextManager[object] | None = None,
    stop: threading.Event | None = None,
) -> SweepReport:
    """One retention sweep: decide, then purge each group (files, then rows and audit).

    Parameters
    ----------
    catalog
        The node's catalog.
    settings
        ``[retention]``.
    spool_root, results_root
        The spool and the results folder: nothing outside them is deleted.
    dry_run
        Decide and measure only; delete nothing.
    now
        The time of the decision (default: now).
    guard
        Held while one group is purged (the scheduler's lock: no job is queued meanwhile).
    stop
        Set to end the sweep after the group in progress.
    """
    now = now or utcnow()
    spool_root, results_root = Path(spool_root).resolve(), Path(results_root).resolve()
    if not (spool_root / TMP_DIR).is_dir():
        # Not the node's spool (a relative data_dir from another folder?): every file would
        # look deleted already and its rows would go, leaving the files behind.
        raise SpoolError(f"no spool at {spool_root} (check [node] data_dir); nothing purged")
    store = RetentionStore(catalog)
    report = SweepReport(dry_run=dry_run)
    plan = plan_purge(*store.state(), now, settings)
    report.held.extend(plan.held)
    for group in plan.purge:
        if stop is not None and stop.is_set():
            break
        with guard if guard is not None else contextlib.nullcontext():
            _purge_group(store, group, settings, now, spool_root, results_root, report)
    if report.purged and not dry_run:
        store.checkpoint()
    if report.purged or report.skipped or report.files_kept:
        logger.info(
            "retention sweep: %s %d studies, %d bytes; %d held, %d left for later, "
            "%d newer files kept",
            "would purge" if dry_run else "purged",
            len(report.purged),
            report.bytes_freed,
            len(report.held),
            report.skipped,
            report.files_kept,
        )
    return report
