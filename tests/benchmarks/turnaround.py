"""Turnaround of the node's main job: last instance received -> results acknowledged by the PACS.

What it measures
----------------
``scanet-node serve`` on its defaults (SQLite, local spool, CPU, the default settle times,
one worker process) runs with a real Orthanc as its destination. For each of ``--studies``
synthetic studies (512x512 NCCT of 5 mm slices and a CTA of ``--cta-slice-mm`` slices, ~300 at
0.625 mm), DCMTK's ``storescu`` sends the study to the node as a scanner does: the NCCT first,
then the CTA (series by series, in one association; ``--per-series``: each series over its own
association, one after the other; ``--concurrent N``: N studies at once, each in its own
association). The benchmark waits until the node's delivery to Orthanc is recorded as sent,
then, once all are, for one more ``series_settle_seconds`` in case a series settled too early
and its study gets amended. From the catalog:

* turnaround = delivery acknowledged (the successful attempt's end) - last instance of the
  NCCT/CTA received;
* wait = job started - last instance received (settling, classification, trigger);
* load, register (brain extraction + registration + tensor; with the NCCT prepared while the
  CTA arrived, only the CTA's part is left), infer, overlay, build: the job's stage timings;
  send: the successful delivery attempt;
* amended: jobs that amend an earlier one (a series that settled before it was complete).

Peak memory is sampled (RSS, every 0.2 s) for the serve process and for its worker process.
The peer, measured in the same run: the same study C-STOREd by ``storescu`` straight to
Orthanc (what a PACS forwarding rule costs). Targets (issue 16): p50 turnaround <= 10 s on
this 2-core machine, CPU only; worker peak RSS <= 1.5 GiB; no amended result.

The model: ``--checkpoint`` (default: the shipped demo weights, models/scanet-demo.pt; when
there are none, an untrained 224 px SCANet written for the benchmark, which costs the same
to run and says so in the output).

How to run
----------
Needs ``dcmtk`` and ``orthanc`` (Debian packages)::

    python tests/benchmarks/turnaround.py --studies 3
    python tests/benchmarks/turnaround.py --studies 3 --per-series
    python tests/benchmarks/turnaround.py --studies 4 --concurrent 4
    python tests/benchmarks/turnaround.py --studies 1 --cta-slice-mm 1.25 --checkpoint m.pt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    PeakRss,
    Serve,
    checkpoint,
    print_stages,
    storescu,
    synthetic_studies,
    turnaround_row,
    write_config,
)
from orthanc import run_orthanc

from scanet_node.catalog import Catalog
from scanet_node.catalog.jobs import JobQueue
from scanet_node.config import Settings


def _series_batches(files: list[Path]) -> list[list[Path]]:
    """A study's files, one list per series folder, in sending order (NCCT before CTA)."""
    batches: dict[Path, list[Path]] = {}
    for f in files:
        batches.setdefault(f.parent, []).append(f)
    return list(batches.values())


def _send(port: int, files: list[Path], per_series: bool) -> None:
    for batch in _series_batches(files) if per_series else [files]:
        storescu(port, "SCANET", batch)


def _result(queue: JobQueue, study_uid: str) -> dict[str, float] | str | None:
    """The study's row once its result is acknowledged; a string when it failed."""
    jobs = queue.jobs(study_uid)
    if not jobs or jobs[0].status not in ("done", "failed"):
        return None
    if jobs[0].status == "failed":
        return f"job failed: {jobs[0].reason}"
    deliveries = queue.deliveries(job_id=jobs[0].id)
    if not deliveries or deliveries[0].status != "sent":
        return None
    if jobs[0].outcome != "analysed":
        return f"not analysed: {jobs[0].reason}"
    return turnaround_row(jobs[0], deliveries[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--cta-slice-mm", type=float, default=0.625)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--per-series", action="store_true", help="one association per series")
    parser.add_argument("--concurrent", type=int, default=1, help="studies sent at once")
    parser.add_argument("--timeout", type=float, default=900.0, help="per round of studies")
    args = parser.parse_args(argv)
    mode = (
        f"{args.concurrent} studies at once"
        if args.concurrent > 1
        else "one association per series"
        if args.per_series
        else "one association per study"
    )

    with tempfile.TemporaryDirectory(prefix="scanet-turnaround-") as tmp:
        folder = Path(tmp)
        model, model_text = checkpoint(args.checkpoint, folder)
        tic = time.perf_counter()
        studies = synthetic_studies(
            folder / "studies", args.studies, cta_slice_mm=args.cta_slice_mm
        )
        print(
            f"{args.studies} synthetic studies ({len(studies[0][1])} instances each) "
            f"in {time.perf_counter() - tic:.0f} s; model: {model_text}; {mode}"
        )
        settle = Settings().pipeline.series_settle_seconds
        with run_orthanc(folder) as orthanc:
            config = write_config(folder, model, orthanc, admin={"port": 0})
            serve = Serve(config, folder / "serve.log")
            if serve.port is None:
                serve.stop()
                print("serve did not start:\n" + serve.log_tail())
                return 1
            port = serve.port
            memory = PeakRss(serve.process.pid)
            rows = []
            peer = []
            amended = 0
            queue = JobQueue(Catalog(f"sqlite:///{folder / 'data' / 'catalog.sqlite'}"))
            try:
                for first in range(0, len(studies), args.concurrent):
                    group = studies[first : first + args.concurrent]
                    for _, files in group:
                        peer.append(storescu(orthanc.dicom_port, orthanc.ae_title, files).seconds)
                    senders = [
                        threading.Thread(target=_send, args=(port, files, args.per_series))
                        for _, files in group
                    ]
                    for t in senders:
                        t.start()
                    for t in senders:
                        t.join()
                    uids = [m["study_instance_uid"] for m, _ in group]
                    results: dict[str, dict[str, float]] = {}
                    deadline = time.monotonic() + args.timeout
                    while len(results) < len(uids) and time.monotonic() < deadline:
                        time.sleep(0.5)
                        for uid in uids:
                            if uid not in results:
                                row = _result(queue, uid)
                                if isinstance(row, str):
                                    print(row)
                                    return 1
                                if row is not None:
                                    results[uid] = row
                    if len(results) < len(uids):
                        print(f"no result within {args.timeout:.0f} s; see {serve.log_path}")
                        return 1
                    for uid in uids:
                        rows.append(results[uid])
                        print(
                            f"  study {len(rows)}: turnaround {results[uid]['turnaround']:.1f} s "
                            f"(peer C-STORE to Orthanc {peer[len(rows) - 1]:.1f} s)"
                        )
                time.sleep(settle + 2)  # a series settled too early would be amended by now
                for manifest, _ in studies:
                    amended += sum(
                        1
                        for j in queue.jobs(manifest["study_instance_uid"])
                        if j.supersedes_id is not None
                    )
            finally:
                queue.catalog.close()
                memory.stop()
                serve.stop()

    print()
    print_stages(rows, f"{len(rows)} studies, 2-core CPU, defaults, {mode}")
    p50 = statistics.median(r["turnaround"] for r in rows)
    peer_p50 = statistics.median(peer)
    worker = memory.peak_by_name.get("worker", 0)
    print()
    print(f"peer: storescu -> Orthanc, the same study: p50 {peer_p50:.1f} s")
    print(f"ratio turnaround / peer C-STORE: {p50 / peer_p50:.1f}x")
    print(
        f"peak memory: serve + worker {memory.peak_total / 2**30:.2f} GiB; "
        + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(memory.peak_by_name.items()))
    )
    print(f"amended results: {amended}")
    ok = p50 <= 10 and worker <= 1.5 * 2**30 and amended == 0
    print(
        f"targets p50 <= 10 s, worker peak <= 1.5 GiB, no amended result: "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
