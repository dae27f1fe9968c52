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
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orthanc import run_orthanc

from scanet_node.catalog import Catalog
from scanet_node.catalog.jobs import JobQueue

STORESCU = "/usr/bin/storescu"
STAGES = ("wait", "load", "register", "infer", "overlay", "build", "send", "turnaround")


class PeakRss:
    """Samples the RSS of a process and its children until stopped; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_total = 0
        self.peak_by_name: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    rss = p.memory_info().rss
                    total += rss
                    kind = "worker" if "spawn_main" in " ".join(p.cmdline()) else p.name()
                    self.peak_by_name[kind] = max(self.peak_by_name.get(kind, 0), rss)
                self.peak_total = max(self.peak_total, total)
            except psutil.Error:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _checkpoint(given: Path | None, folder: Path) -> tuple[Path, str]:
    if given is not None:
        return given, f"{given}"
    demo = Path(__file__).resolve().parents[2] / "models" / "scanet-demo.pt"
    if demo.is_file():
        return demo, "the shipped demo weights"
    from model_samples import untrained_checkpoint

    path = untrained_checkpoint(folder / "untrained-224.pt", 224, "for timing only")
    return path, "UNTRAINED 224 px SCANet (no demo weights shipped; same cost to run)"


def _ncct_is_recognised(files: list[Path]) -> bool:
    from scanet_node.imaging.classify import classify_files

    ncct = [f for f in files if f.parent.name.endswith("ncct")]
    return classify_files(ncct).role == "ncct"


def _storescu(port: int, aet: str, files: list[Path]) -> float:
    tic = time.perf_counter()
    subprocess.run(
        [STORESCU, "-aet", "BENCH", "-aec", aet, "127.0.0.1", str(port), *map(str, files)],
        check=True,
        capture_output=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return time.perf_counter() - tic


def _write_config(folder: Path, checkpoint: Path, orthanc: Any) -> Path:
    config = folder / "config.toml"
    config.write_text(
        f"""[node]
host = "127.0.0.1"
port = 0
data_dir = "{folder / "data"}"
min_free_disk_mb = 0
[model]
checkpoint = "{checkpoint}"
device = "cpu"
[[destinations]]
name = "orthanc"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
"""
    )
    return config


def _row(job: Any, delivery: Any) -> dict[str, float]:
    sent = [a for a in delivery.attempt_rows if a.ok][-1]
    acknowledged = sent.started_at.timestamp() + sent.seconds
    received = job.inputs_received_at.timestamp()
    row = {k: float(job.timings.get(k, 0.0)) for k in STAGES if k in job.timings}
    row["wait"] = job.started_at.timestamp() - received
    row["send"] = sent.seconds
    row["turnaround"] = acknowledged - received
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--cta-slice-mm", type=float, default=0.625)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=900.0, help="per study")
    args = parser.parse_args(argv)

    from scanet_node.synth.cohort import plan_study, write_study

    with tempfile.TemporaryDirectory(prefix="scanet-turnaround-") as tmp:
        folder = Path(tmp)
        checkpoint, model_text = _checkpoint(args.checkpoint, folder)
        studies = []
        tic = time.perf_counter()
        n = 0
        while len(studies) < args.studies:
            manifest = write_study(
                folder / "studies", plan_study(2026, n), cta_slice_mm=args.cta_slice_mm
            )
            n += 1
            files = sorted((folder / "studies" / manifest["case_id"]).rglob("*.dcm"))
            if not _ncct_is_recognised(files):
                # The image check takes some synthetic NCCTs for contrast-enhanced (issue 6
                # note): the node then waits for an NCCT and reports it missing after an hour.
                print(f"  skipped {manifest['case_id']}: its NCCT is not recognised as one")
                continue
            studies.append((manifest, files))
        print(
            f"{args.studies} synthetic studies ({len(studies[0][1])} instances each) "
            f"in {time.perf_counter() - tic:.0f} s; model: {model_text}"
        )
        with run_orthanc(folder) as orthanc:
            config = _write_config(folder, checkpoint, orthanc)
            log = (folder / "serve.log").open("w")
            serve = subprocess.Popen(
                [sys.executable, "-m", "scanet_node", "--config", str(config), "serve"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            assert serve.stdout is not None
            match = re.search(r":(\d+)", serve.stdout.readline())
            if match is None:
                log.close()
                print("serve did not start:\n" + Path(log.name).read_text()[-3000:])
                return 1
            port = int(match.group(1))
            memory = PeakRss(serve.pid)
            rows = []
            peer = []
            try:
                for manifest, files in studies:
                    peer.append(_storescu(orthanc.dicom_port, orthanc.ae_title, files))
                    _storescu(port, "SCANET", files)
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
                                row = _row(jobs[0], deliveries[0])
                                if jobs[0].outcome != "analysed":
                                    print(f"not analysed: {jobs[0].reason}")
                    queue.catalog.close()
                    if row is None:
                        print(f"no result within {args.timeout:.0f} s; see {log.name}")
                        return 1
                    rows.append(row)
                    print(
                        f"  study {len(rows)}: turnaround {row['turnaround']:.1f} s "
                        f"(peer C-STORE to Orthanc {peer[-1]:.1f} s)"
                    )
            finally:
                memory.stop()
                serve.send_signal(signal.SIGTERM)
                serve.communicate(timeout=120)
                log.close()

    print()
    print(f"| stage | p50 (s) | max (s) |  ({len(rows)} studies, 2-core CPU, settle 10 s)")
    print("|---|---|---|")
    for stage in STAGES:
        values = [r[stage] for r in rows if stage in r]
        if values:
            print(f"| {stage} | {statistics.median(values):.1f} | {max(values):.1f} |")
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
