"""Turnaround of the node's main job: last instance received -> results acknowledged by the PACS.

What it measures
----------------
``scanet-node serve`` (its defaults: SQLite, local spool, CPU, the default 10 s settle window,
one worker process) runs with a real Orthanc as its destination. For each of ``--studies``
synthetic studies (512x512 NCCT of 5 mm slices and a CTA of ``--cta-slice-mm`` slices, ~300 at
0.625 mm), DCMTK's ``storescu`` sends the study to the node; the benchmark then waits until
the node's delivery to Orthanc is recorded as sent. From the catalog:

* turnaround = delivery acknowledged (the successful attempt's end) - last instance of the
  NCCT/CTA received;
* wait = job started - last instance received (the settle window, classification, trigger);
* load, register (brain extraction + registration + tensor), infer, overlay, build: the job's
  stage timings; send: the successful delivery attempt.

Peak memory is sampled (RSS, every 0.2 s) for the serve process and for its worker process.
The peer, measured in the same run: the same study C-STOREd by ``storescu`` straight to
Orthanc (what a PACS forwarding rule costs). Target (issue 6): p50 turnaround under 30 s on
this 2-core machine, CPU only, peak memory under 4 GB.

The model: ``--checkpoint`` (default: the shipped demo weights, models/scanet-demo.pt; when
there are none, an untrained 224 px SCANet written for the benchmark, which costs the same
to run and says so in the output).

How to run
----------
Needs ``dcmtk`` and ``orthanc`` (Debian packages)::

    python tests/benchmarks/turnaround.py --studies 3
    python tests/benchmarks/turnaround.py --studies 1 --cta-slice-mm 1.25 --checkpoint m.pt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--cta-slice-mm", type=float, default=0.625)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=900.0, help="per study")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="scanet-turnaround-") as tmp:
        folder = Path(tmp)
        model, model_text = checkpoint(args.checkpoint, folder)
        tic = time.perf_counter()
        studies = synthetic_studies(
            folder / "studies", args.studies, cta_slice_mm=args.cta_slice_mm
        )
        print(
            f"{args.studies} synthetic studies ({len(studies[0][1])} instances each) "
            f"in {time.perf_counter() - tic:.0f} s; model: {model_text}"
        )
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
            try:
                for manifest, files in studies:
                    peer.append(storescu(orthanc.dicom_port, orthanc.ae_title, files).seconds)
                    storescu(port, "SCANET", files)
                    queue = JobQueue(Catalog(f"sqlite:///{folder / 'data' / 'catalog.sqlite'}"))
                    deadline = time.monotonic() + args.timeout
                    row = None
                    while time.monotonic() < deadline and row is None:
                        time.sleep(0.5)
                        jobs = queue.jobs(manifest["study_instance_uid"])
                        if jobs and jobs[0].status in ("done", "failed"):
                            if jobs[0].status == "failed":
                                print(f"job failed: {jobs[0].reason}")
                                return 1
                            deliveries = queue.deliveries(job_id=jobs[0].id)
                            if deliveries and deliveries[0].status == "sent":
                                row = turnaround_row(jobs[0], deliveries[0])
                                if jobs[0].outcome != "analysed":
                                    print(f"not analysed: {jobs[0].reason}")
                    queue.catalog.close()
                    if row is None:
                        print(f"no result within {args.timeout:.0f} s; see {serve.log_path}")
                        return 1
                    rows.append(row)
                    print(
                        f"  study {len(rows)}: turnaround {row['turnaround']:.1f} s "
                        f"(peer C-STORE to Orthanc {peer[-1]:.1f} s)"
                    )
            finally:
                memory.stop()
                serve.stop()

    print()
    print_stages(rows, f"{len(rows)} studies, 2-core CPU, settle 10 s")
    p50 = statistics.median(r["turnaround"] for r in rows)
    peer_p50 = statistics.median(peer)
    print()
    print(f"peer: storescu -> Orthanc, the same study: p50 {peer_p50:.1f} s")
    print(f"ratio turnaround / peer C-STORE: {p50 / peer_p50:.1f}x")
    print(
        f"peak memory: serve + worker {memory.peak_total / 2**30:.2f} GiB "
        + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(memory.peak_by_name.items()))
    )
    verdict = "PASS" if p50 < 30 and memory.peak_total < 4 * 2**30 else "FAIL"
    print(f"target p50 < 30 s and peak < 4 GB: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
