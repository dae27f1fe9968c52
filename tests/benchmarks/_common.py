"""What the end-to-end benchmarks (turnaround.py, load.py) share.

A ``scanet-node serve`` child process with a config file written for the run, the synthetic
studies it is sent, DCMTK's ``storescu`` as the sender (with what the peer acknowledged), the
peak memory of the node's processes, and one study's row of stage timings from the catalog.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

STORESCU = "/usr/bin/storescu"
STAGES = ("wait", "load", "register", "infer", "overlay", "build", "send", "turnaround")


class PeakRss:
    """Samples the RSS of a process and its children until stopped; keeps the peaks.

    ``peak_by_name`` groups the processes by kind (every worker process is "worker");
    ``peak_by_process`` keeps each one apart ("serve" for ``pid``, "worker PID", ...).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_total = 0
        self.peak_by_name: dict[str, int] = {}
        self.peak_by_process: dict[str, int] = {}
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
                    if "resource_tracker" in " ".join(p.cmdline()):
                        kind = "resource-tracker"
                    label = "serve" if p.pid == self.pid else f"{kind} {p.pid}"
                    self.peak_by_process[label] = max(self.peak_by_process.get(label, 0), rss)
                self.peak_total = max(self.peak_total, total)
            except psutil.Error:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def checkpoint(given: Path | None, folder: Path) -> tuple[Path, str]:
    """The model to run and how to name it: ``given``, the shipped demo weights, or else an
    untrained 224 px SCANet written to ``folder`` (same cost to run, and the text says so)."""
    if given is not None:
        return given, f"{given}"
    demo = Path(__file__).resolve().parents[2] / "models" / "scanet-demo.pt"
    if demo.is_file():
        return demo, "the shipped demo weights"
    from model_samples import untrained_checkpoint

    path = untrained_checkpoint(folder / "untrained-224.pt", 224, "for timing only")
    return path, "UNTRAINED 224 px SCANet (no demo weights shipped; same cost to run)"


def _ncct_is_recognised(files: list[Path]) -> bool:
    from scanet_node.imaging.classify_read import classify_files

    ncct = [f for f in files if f.parent.name.endswith("ncct")]
    return classify_files(ncct).role == "ncct"


def synthetic_studies(
    folder: Path, count: int, *, small: bool = False, cta_slice_mm: float | None = None
) -> list[tuple[dict[str, Any], list[Path]]]:
    """Write ``count`` synthetic studies under ``folder`` (seed 2026, studies 0, 1, ...).

    Returns each study's manifest and its files (sorted by path: series by series). A study
    whose NCCT the node would not recognise stops the benchmark: it would wait an hour for an
    NCCT and report it missing, and that is a defect to fix, not a study to leave out. (It
    happened to 4 of 24 with the image check's first thresholds, CTA >= 0.08 % of the
    intracranial space at 150-500 HU: patients who differ put their NCCTs at up to 0.22 %.
    The thresholds are 0.5 % and 0.3 % since; tests/benchmarks/classification.py measures.)
    """
    from scanet_node.synth.cohort import plan_study, write_study

    studies: list[tuple[dict[str, Any], list[Path]]] = []
    for n in range(count):
        manifest = write_study(folder, plan_study(2026, n), small=small, cta_slice_mm=cta_slice_mm)
        files = sorted((folder / manifest["case_id"]).rglob("*.dcm"))
        if not _ncct_is_recognised(files):
            raise SystemExit(f"{manifest['case_id']}: its NCCT is not recognised as one")
        studies.append((manifest, files))
    return studies


@dataclass(frozen=True)
class Sent:
    """One ``storescu`` run (one association): when, its exit status, what the peer took.

    ``started`` and ``ended`` are ``time.perf_counter()`` values around the process;
    ``stored`` are the files answered with Success or a Warning status, ``problems`` the
    error lines and the other statuses, each with its file.
    """

    files: list[Path]
    started: float
    ended: float
    returncode: int
    stored: list[Path]
    problems: list[str]

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def storescu(port: int, aet: str, files: list[Path], *, check: bool = True) -> Sent:
    """C-STORE ``files`` to 127.0.0.1:``port`` in one association with DCMTK ``storescu``.

    Runs verbose to read each response; with ``check``, a non-zero exit raises
    ``CalledProcessError``.
    """
    started = time.perf_counter()
    done = subprocess.run(
        [STORESCU, "-v", "-aet", "BENCH", "-aec", aet, "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    ended = time.perf_counter()
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout)
    stored: list[Path] = []
    problems: list[str] = []
    current: Path | None = None
    for line in done.stdout.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: "))
        elif line.startswith("I: Received Store Response ("):
            status = line.removeprefix("I: Received Store Response (").rstrip(")")
            if current is not None and status.startswith(("Success", "Warning")):
                stored.append(current)
            else:
                problems.append(f"{current}: {status}")
            current = None
        elif line.startswith(("E: ", "F: ")):
            problems.append(line)
    return Sent(list(files), started, ended, done.returncode, stored, problems)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def write_config(
    folder: Path, checkpoint: Path, orthanc: Any, **sections: dict[str, object]
) -> Path:
    """Write the node's config file for a run and return its path.

    The node's defaults but: 127.0.0.1 on a free port, data under ``folder``, no low-disk
    guard, ``checkpoint`` on the CPU, ``orthanc`` as the one destination. ``sections`` add
    or override keys (``pipeline={"workers": 2}``).
    """
    tables: dict[str, dict[str, object]] = {
        "node": {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": str(folder / "data"),
            "min_free_disk_mb": 0,
        },
        "model": {"checkpoint": str(checkpoint), "device": "cpu"},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    destination = {
        "name": "orthanc",
        "ae_title": orthanc.ae_title,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
    }
    headed = [*((f"[{name}]", values) for name, values in tables.items())]
    headed.append(("[[destinations]]", destination))
    config = folder / "config.toml"
    config.write_text(
        "".join(
            head + "\n" + "".join(f"{key} = {_toml(v)}\n" for key, v in values.items())
            for head, values in headed
        )
    )
    return config


class Serve:
    """``scanet-node --config CONFIG serve`` as a child process, its log in ``log``.

    ``port`` is the DICOM port it announced, or None when it did not start (see
    ``log_tail()``). ``stop()`` ends it as an administrator would: SIGTERM, then wait.
    """

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scanet_node", "--config", str(config), "serve"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.process.stdout is not None
        match = re.search(r":(\d+)", self.process.stdout.readline())
        self.port = int(match.group(1)) if match else None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text()[-chars:]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=120)
        self._log.close()


def turnaround_row(job: Any, delivery: Any) -> dict[str, float]:
    """One study's stage timings (s) from its job and its sent delivery (``STAGES``)."""
    sent = [a for a in delivery.attempt_rows if a.ok][-1]
    acknowledged = sent.started_at.timestamp() + sent.seconds
    received = job.inputs_received_at.timestamp()
    row = {k: float(job.timings.get(k, 0.0)) for k in STAGES if k in job.timings}
    row["wait"] = job.started_at.timestamp() - received
    row["send"] = sent.seconds
    row["turnaround"] = acknowledged - received
    return row


def print_stages(rows: list[dict[str, float]], note: str) -> None:
    """The p50 and max of each stage over ``rows``, as a Markdown table."""
    print(f"| stage | p50 (s) | max (s) |  ({note})")
    print("|---|---|---|")
    for stage in STAGES:
        values = [r[stage] for r in rows if stage in r]
        if values:
            print(f"| {stage} | {statistics.median(values):.1f} | {max(values):.1f} |")
