"""Load: a busy scanner fleet sends while the node analyses; does it keep up, does it lose any?

What it measures
----------------
``scanet-node serve`` (its defaults: SQLite, local spool, CPU, the 10 s settle window;
``--workers`` worker processes, default 1) runs with a real Orthanc as its destination.
``--studies`` synthetic studies (default 20: 512x512 NCCT and a ~300-slice 0.625 mm CTA,
with localizer, MIPs and dose report; ``--small``: 128 px) go to the node through a pool of
``--associations`` DCMTK ``storescu`` senders (default 8): each sender takes the next whole
study and sends it in one association, as each scanner sends its own study, so 8
associations are open at once while the studies that arrived first settle and are analysed.
(Chunks of instances would keep all 8 open to the last instance, but split each study across
associations, which no scanner does.)

* The send: instances/s and MB/s (file bytes) from the first ``storescu`` start to the last
  one's exit, the most associations open at once, and each association's figures.
* Lost instances: the SOP Instance UIDs that ``storescu`` saw acknowledged with Success (or a
  Warning) minus those in the node's catalog. Target 0. Every exit status and every
  non-success status is printed too.
* Per study, from the catalog as turnaround.py does it: turnaround (last NCCT/CTA instance
  received -> results acknowledged by Orthanc), the stage timings, and the outcome: analysed,
  not analysable, failed (with the reasons).
* Peak RSS (sampled every 0.2 s) of serve and of each worker; queue depth (queued and
  running jobs, sampled every second) over the run.

The peer, in the same run before the node's: the same studies sent by the same pool of
``storescu`` senders straight to the Orthanc (what a PACS costs to receive them); the node's
ingest rate is printed as a ratio of it. ``--baseline S`` (the single-study p50 turnaround
from turnaround.py) adds the ratio of the turnaround under load to it. Figures are printed,
never asserted; the exit status is non-zero only when instances were lost, a send failed or
the node did not start.

Target: 20 studies over 8 associations, 0 lost.

How to run
----------
Needs ``dcmtk`` and ``orthanc`` (Debian packages); the full run writes ~4 GB under /tmp::

    python tests/benchmarks/load.py
    python tests/benchmarks/load.py --small --studies 4 --associations 4   # a quick check
    python tests/benchmarks/load.py --workers 2 --baseline 25
"""

from __future__ import annotations

import argparse
import math
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as bench
from orthanc import run_orthanc
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from scanet_node.catalog import Catalog
from scanet_node.catalog.jobs import DeliveryInfo, JobInfo, JobQueue
from scanet_node.catalog.models import Instance, Job

MB = 1e6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sop_instance_uids(files: list[Path]) -> dict[Path, str]:
    from pydicom import dcmread

    return {
        f: str(dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        for f in files
    }


def send_all(port: int, aet: str, studies: list[list[Path]], associations: int) -> list[bench.Sent]:
    """Send each study in one association, ``associations`` senders at once, in order."""
    with ThreadPoolExecutor(associations, thread_name_prefix="storescu") as pool:
        return list(pool.map(lambda files: bench.storescu(port, aet, files, check=False), studies))


def _most_open(sends: list[bench.Sent]) -> int:
    """The most associations (storescu runs) open at the same time."""
    events = sorted([(s.started, 1) for s in sends] + [(s.ended, -1) for s in sends])
    open_now = most = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


def summarise(label: str, sends: list[bench.Sent], sizes: dict[Path, int]) -> float:
    """Print one whole send (all associations together); return its instances/s."""
    window = max(s.ended for s in sends) - min(s.started for s in sends)
    stored = [f for s in sends for f in s.stored]
    megabytes = sum(sizes[f] for f in stored) / MB
    rate = len(stored) / window
    print(
        f"{label}: {len(stored)} instances, {megabytes:.0f} MB in {window:.1f} s: "
        f"{rate:.1f} instances/s, {megabytes / window:.1f} MB/s; "
        f"up to {_most_open(sends)} associations open at once"
    )
    bad = [(i, s) for i, s in enumerate(sends, 1) if s.returncode != 0 or s.problems]
    for i, s in bad:
        print(f"  !!! association {i}: storescu exit status {s.returncode}")
        for problem in s.problems[:5]:
            print(f"  !!!   {problem}")
    if not bad:
        print("  every storescu exited 0; no failure status")
    return rate


class QueueDepth:
    """Counts queued and running jobs in the catalog every second until stopped."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.samples: list[tuple[float, int, int]] = []  # (s since start, queued, running)
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        query = select(Job.status, func.count()).group_by(Job.status)
        while not self._stop.wait(1.0):
            try:
                with self.engine.connect() as connection:
                    counts = {str(status): n for status, n in connection.execute(query)}
            except SQLAlchemyError:
                continue
            now = time.monotonic() - self._start
            self.samples.append((now, counts.get("queued", 0), counts.get("running", 0)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> None:
        """Print the peaks and the queue over time (at most ~30 points)."""
        if not self.samples:
            print("queue depth: no samples")
            return
        step = max(1, math.ceil(self.samples[-1][0] / 30))
        points, next_t = [], 0.0
        for t, queued, running in self.samples:
            if t >= next_t:
                points.append(f"{queued}/{running}")
                next_t = t + step
        print(
            f"queue depth: max {max(s[1] for s in self.samples)} queued, "
            f"max {max(s[2] for s in self.samples)} running"
        )
        print(f"  queued/running every {step} s: " + " ".join(points))


Result = tuple[JobInfo | None, DeliveryInfo | None]


def _result(queue: JobQueue, job: JobInfo | None) -> tuple[bool, Result]:
    """Whether a study is finished (its job failed, or every delivery is settled)."""
    if job is None or job.status in ("queued", "running"):
        return False, (job, None)
    if job.status == "failed":
        return True, (job, None)
    deliveries = queue.deliveries(job_id=job.id)
    settled = bool(deliveries) and all(d.status != "pending" for d in deliveries)
    return settled, (job, deliveries[0] if deliveries else None)


def wait_for_results(queue: JobQueue, study_uids: list[str], timeout: float) -> dict[str, Result]:
    """Poll the catalog until every study is finished or ``timeout`` s have passed."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    reported = -1
    while True:
        latest = queue.latest_jobs()
        results = {uid: _result(queue, latest.get(uid)) for uid in study_uids}
        finished = sum(done for done, _ in results.values())
        if finished != reported:
            print(f"  +{time.monotonic() - started:.0f} s: {finished}/{len(study_uids)} finished")
            reported = finished
        if finished == len(study_uids) or time.monotonic() > deadline:
            return {uid: result for uid, (_, result) in results.items()}
        time.sleep(2.0)


def _outcome(job: JobInfo | None, delivery: DeliveryInfo | None) -> str:
    if job is None:
        return "unfinished: no job"
    if job.status == "failed":
        return f"failed: {job.reason}"
    if job.status != "done" or delivery is None or delivery.status == "pending":
        return f"unfinished: job {job.status}"
    if delivery.status != "sent":
        return f"delivery {delivery.status}: {delivery.last_detail}"
    return str(job.outcome) if job.outcome == "analysed" else f"{job.outcome}: {job.reason}"


def _catalogued(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.scalars(select(Instance.sop_instance_uid)))


def _metrics(port: int) -> list[str]:
    """The queue and job lines of the admin page's /metrics, where there is one."""
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        return [f"(no admin /metrics: {exc})"]
    return [
        line
        for line in text.splitlines()
        if not line.startswith("#") and ("queue" in line or "job" in line)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--associations", type=int, default=8, help="parallel senders")
    parser.add_argument("--workers", type=int, default=1, help="[pipeline] workers")
    parser.add_argument("--small", action="store_true", help="128 px studies, a quick check")
    parser.add_argument("--cta-slice-mm", type=float, default=None, help="default 0.625")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--baseline", type=float, default=None, help="single-study p50 (s)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="for all results (s)")
    args = parser.parse_args(argv)
    cta_slice_mm = args.cta_slice_mm or (None if args.small else 0.625)

    with tempfile.TemporaryDirectory(prefix="scanet-load-") as tmp:
        folder = Path(tmp)
        model, model_text = bench.checkpoint(args.checkpoint, folder)
        tic = time.perf_counter()
        written = bench.synthetic_studies(
            folder / "studies", args.studies, small=args.small, cta_slice_mm=cta_slice_mm
        )
        studies = [files for _, files in written]
        every_file = [f for files in studies for f in files]
        uids = _sop_instance_uids(every_file)
        sizes = {f: f.stat().st_size for f in every_file}
        print(
            f"{args.studies} synthetic studies, {len(every_file)} instances, "
            f"{sum(sizes.values()) / MB:.0f} MB, in {time.perf_counter() - tic:.0f} s; "
            f"{args.associations} senders, {args.workers} worker(s); model: {model_text}"
        )
        with run_orthanc(folder) as orthanc:
            peer = send_all(orthanc.dicom_port, orthanc.ae_title, studies, args.associations)
            peer_rate = summarise("peer, storescu -> Orthanc", peer, sizes)
            in_orthanc = int(orthanc.rest("/statistics")["CountInstances"])
            peer_lost = sum(len(s.stored) for s in peer) - in_orthanc
            print(f"  Orthanc holds {in_orthanc} instances (acknowledged but missing: {peer_lost})")

            admin_port = _free_port()
            config = bench.write_config(
                folder,
                model,
                orthanc,
                node={"max_associations": max(8, args.associations)},
                pipeline={"workers": args.workers},
                admin={"port": admin_port},
            )
            serve = bench.Serve(config, folder / "serve.log")
            if serve.port is None:
                serve.stop()
                print("serve did not start:\n" + serve.log_tail())
                return 1
            memory = bench.PeakRss(serve.process.pid)
            catalog = Catalog(f"sqlite:///{folder / 'data' / 'catalog.sqlite'}", create=False)
            depth = QueueDepth(catalog.engine)
            try:
                sends = send_all(serve.port, "SCANET", studies, args.associations)
                node_rate = summarise("node, storescu -> scanet-node", sends, sizes)
                acknowledged = {uids[f] for s in sends for f in s.stored}
                catalogued = _catalogued(catalog.engine)
                study_uids = [m["study_instance_uid"] for m, _ in written]
                print(f"waiting for the results of {len(study_uids)} studies")
                results = wait_for_results(JobQueue(catalog), study_uids, args.timeout)
                metrics = _metrics(admin_port)
            finally:
                depth.stop()
                memory.stop()
                serve.stop()
                catalog.close()

    per_study = [
        bench.turnaround_row(job, delivery)
        if job is not None and delivery is not None and delivery.status == "sent"
        else None
        for job, delivery in results.values()
    ]
    print()
    print(
        "| study | instances | MB | node start (s) | node s | node inst/s | node MB/s "
        "| peer s | peer inst/s | job wait (s) | turnaround (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    first = min(s.started for s in sends)
    for i, (s, p, row) in enumerate(zip(sends, peer, per_study, strict=True), 1):
        megabytes = sum(sizes[f] for f in s.stored) / MB
        timed = f"{row['wait']:.1f} | {row['turnaround']:.1f}" if row else "- | -"
        print(
            f"| {i} | {len(s.stored)} | {megabytes:.1f} | {s.started - first:.1f} "
            f"| {s.seconds:.1f} | {len(s.stored) / s.seconds:.1f} | {megabytes / s.seconds:.1f} "
            f"| {p.seconds:.1f} | {len(p.stored) / p.seconds:.1f} | {timed} |"
        )
    print()
    print(f"node ingest rate / peer (Orthanc): {node_rate / peer_rate:.2f}x")
    lost = acknowledged - catalogued
    unacknowledged = len(every_file) - sum(len(s.stored) for s in sends)
    print(
        f"*** LOST INSTANCES: {len(lost)} *** (acknowledged by the node {len(acknowledged)}, "
        f"in its catalog {len(catalogued)}, not acknowledged {unacknowledged})"
    )
    for uid in sorted(lost)[:10]:
        print(f"  !!! lost {uid}")

    print()
    outcomes = Counter(_outcome(job, delivery) for job, delivery in results.values())
    print("studies: " + "; ".join(f"{n} {what}" for what, n in outcomes.most_common()))
    rows = [row for row in per_study if row is not None]
    if rows:
        turnarounds = [r["turnaround"] for r in rows]
        p50 = statistics.median(turnarounds)
        print(f"turnaround under load: p50 {p50:.1f} s, max {max(turnarounds):.1f} s")
        if args.baseline:
            print(f"  / single-study baseline {args.baseline:.1f} s: {p50 / args.baseline:.1f}x")
        bench.print_stages(rows, f"{len(rows)} studies under load, settle 10 s")
    print()
    peaks = sorted(memory.peak_by_process.items(), key=lambda kv: (kv[0] != "serve", kv[0]))
    print(
        f"peak RSS: all {memory.peak_total / 2**30:.2f} GiB; "
        + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in peaks)
    )
    depth.report()
    for line in metrics:
        print(f"  /metrics {line}")
    failed_sends = any(s.returncode != 0 or s.problems for s in [*sends, *peer])
    return 1 if lost or failed_sends or peer_lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
