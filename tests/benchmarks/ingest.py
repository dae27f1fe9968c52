"""Ingest throughput of scanet-node against DCMTK ``storescp`` and Orthanc.

What it measures
----------------
A synthetic head CT series (default 300 slices of 512x512 int16, Explicit VR
Little Endian, CT Image Storage) is sent with DCMTK's ``storescu`` to three
receivers, each started fresh on a free 127.0.0.1 port and stopped at the end:

1. DCMTK ``storescp --fork`` (a C++ lower bound: writes files, no index, no fsync);
2. Orthanc (C++ with a SQLite index and fsync of each file, ``SyncStorageArea``);
3. a minimal pynetdicom SCP (the library the node is built on, configured as the
   node configures it, whose handler only writes each instance to a file: no
   parsing, no fsync, no catalog): the ceiling of any pynetdicom-based receiver;
4. ``scanet-node serve`` with its defaults (SQLite catalog, fsync of file, folder
   and catalog row before each C-STORE response).

For every receiver: one warm-up association, then ``--repeats`` rounds of (a) the
whole series in one association and (b) the series split in four quarters sent
by four ``storescu`` processes in parallel, timed from the first start to the
last exit. Every send uses a copy of the series with fresh Study, Series and SOP
Instance UIDs, so no receiver ever sees a duplicate; the figure reported is the
median of the repeats. After each send the receiver's instance count is checked
(files for storescp, ``/statistics`` for Orthanc, ``scanet-node studies --json``
and the spool's files for the node); a missing instance fails the benchmark.

Every receiver and sender runs with ``TCP_NODELAY=1`` in its environment: DCMTK
3.6.7 otherwise waits for delayed ACKs on Linux loopback (~45 ms per C-STORE).

It prints images/s per receiver, the node's peak memory (VmHWM), the ratios
and a PASS/FAIL verdict against the targets. The exit status is 0 whether the
targets are met or not; it is non-zero only when the benchmark itself failed
(a receiver did not start, a send failed, instances are missing).

How to run
----------
Needs the Debian packages ``dcmtk`` and ``orthanc`` (``/usr/bin/storescu``,
``/usr/bin/storescp``, ``/usr/bin/echoscu``, ``/usr/sbin/Orthanc``) and the
node installed (``pip install -e '.[test]'``)::

    python tests/benchmarks/ingest.py
    python tests/benchmarks/ingest.py --images 100 --repeats 1 --skip-orthanc
    python tests/benchmarks/ingest.py --workdir ~/.cache/scanet-bench   # keep the series

The DCMTK tools are called by absolute path because pynetdicom installs Python
``storescu``/``storescp`` scripts that shadow them on ``PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"

HOST = "127.0.0.1"
CALLING_AET = "BENCHSCU"
PARALLEL_ASSOCIATIONS = 4
WARMUP_IMAGES = 20
START_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 600.0
SERIES_FORMAT_VERSION = 1

TARGET_VS_STORESCP = 0.5
TARGET_VS_ORTHANC = 2.0
TARGET_PEAK_RSS_MB = 300.0
TARGET_PARALLEL_RATIO = 1.0
PARALLEL_TOLERANCE = 0.05


class BenchmarkError(Exception):
    """The benchmark itself could not run (not a missed target)."""


def _env(**extra: str) -> dict[str, str]:
    """The environment of every receiver and sender: ours plus TCP_NODELAY=1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANET__")}
    env["TCP_NODELAY"] = "1"
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# -- the synthetic series ------------------------------------------------------


@dataclass(frozen=True)
class SeriesCopy:
    """One copy of the series on disk, with its own Study/Series/SOP Instance UIDs."""

    name: str
    files: list[Path]


def _phantom_slices(images: int, size: int, seed: int = 20240) -> list[bytes]:
    """A head-like phantom in stored values (HU + 1024): skull ring, brain, noise."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    d2 = (xx / 0.80) ** 2 + (yy / 0.92) ** 2
    out = []
    for i in range(images):
        z = (i + 0.5) / images * 1.8 - 0.9  # -0.9 .. 0.9 of the head's half height
        scale = float(np.sqrt(max(1.0 - z * z, 0.05)))
        hu = np.full((size, size), -1000.0, dtype=np.float32)
        hu[d2 < scale**2] = 1200.0
        hu[d2 < (0.9 * scale) ** 2] = 35.0
        hu += rng.normal(0.0, 6.0, size=(size, size)).astype(np.float32)
        out.append(np.clip(hu + 1024.0, -2048, 4095).astype("<i2").tobytes())
    return out


def _base_dataset(size: int, series_name: str) -> Dataset:
    """The attributes shared by every slice of one copy (fresh study and series UIDs)."""
    now = datetime.now(UTC)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "BENCH0001"
    ds.Modality = "CT"
    ds.Manufacturer = "scanet-bench"
    ds.ManufacturerModelName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD BENCHMARK"
    ds.SeriesDescription = f"Head 0.5 mm {series_name}"
    ds.PatientName = "BENCH^SYNTHETIC"
    ds.PatientID = "BENCH-000001"
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = "0.5"
    ds.KVP = "120"
    ds.ConvolutionKernel = "H30s"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [f"{250.0 / size:.6g}", f"{250.0 / size:.6g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _write_copy(folder: Path, name: str, slices: Sequence[bytes], size: int) -> SeriesCopy:
    folder.mkdir(parents=True, exist_ok=True)
    ds = _base_dataset(size, name)
    files = []
    for i, pixels in enumerate(slices):
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = i + 1
        z = -0.5 * i
        ds.ImagePositionPatient = [-125.0, -125.0, z]
        ds.SliceLocation = z
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
        path = folder / f"{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    (folder / "complete").touch()
    return SeriesCopy(name, files)


def generate_series(root: Path, images: int, size: int, copies: Sequence[str]) -> list[SeriesCopy]:
    """Write (or reuse from ``root``) one warm-up series and one series per named copy."""
    root = root / f"ct-{images}x{size}-v{SERIES_FORMAT_VERSION}"
    wanted = [("warmup", min(WARMUP_IMAGES, images)), *((c, images) for c in copies)]
    missing = [(n, k) for n, k in wanted if not (root / n / "complete").is_file()]
    if missing:
        started = time.perf_counter()
        slices = _phantom_slices(images, size)
        for name, count in missing:
            shutil.rmtree(root / name, ignore_errors=True)
            _write_copy(root / name, name, slices[:count], size)
        print(
            f"generated {len(missing)} series ({sum(k for _, k in missing)} files) "
            f"in {time.perf_counter() - started:.1f} s under {root}",
            flush=True,
        )
    else:
        print(f"reusing the series under {root}", flush=True)
    return [SeriesCopy(n, sorted((root / n).glob("*.dcm"))) for n, _ in wanted]


# -- processes -----------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Children (storescp --fork) may outlive their parent in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _proc_status_kb(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _echo(aet: str, port: int) -> bool:
    try:
        done = subprocess.run(
            [ECHOSCU, "-to", "2", "-aet", CALLING_AET, "-aec", aet, HOST, str(port)],
            env=_env(),
            capture_output=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


class Receiver:
    """A C-STORE SCP under test, run as a child process in its own process group."""

    name = "receiver"
    aet = "ANY-SCP"

    def __init__(self, root: Path, logs: Path) -> None:
        self.root = root / self.name
        self.root.mkdir(parents=True)
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / f"{self.name}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss_mb: float | None = None

    # Subclasses: _launch() starts self.proc and sets self.port; count() says how
    # many instances are stored.
    def _launch(self) -> None:
        raise NotImplementedError

    def _spawn(self, cmd: list[str], cwd: Path | None = None) -> None:
        """Start the receiver in its own process group, output to its log."""
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=_env(),
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def count(self) -> int:
        """How many instances the receiver has stored."""
        raise NotImplementedError

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchmarkError(
                    f"{self.name} exited with status {self.proc.returncode} at start-up:\n"
                    + _tail(self.log)
                )
            if self.port and _echo(self.aet, self.port):
                return
            time.sleep(0.2)
        raise BenchmarkError(f"{self.name} did not answer C-ECHO within {START_TIMEOUT_S:.0f} s")

    def start(self) -> None:
        """Start the receiver and wait until it answers a C-ECHO."""
        self._launch()
        self._wait_ready()

    def cpu_seconds(self) -> float | None:
        """CPU time of the receiver process so far, where one process does all the work."""
        return None if self.proc is None else _cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """Note the peak memory, then stop the process group."""
        if self.proc is None:
            return
        hwm = _proc_status_kb(self.proc.pid, "VmHWM")
        if hwm is not None and self.peak_rss_mb is None:
            self.peak_rss_mb = hwm / 1024
        _stop(self.proc)


class StorescpReceiver(Receiver):
    """DCMTK storescp, one forked process per association."""

    name = "storescp"
    aet = "STORESCP"

    def _launch(self) -> None:
        self.store = self.root / "store"
        self.store.mkdir()
        self.port = _free_port()
        self._spawn(
            [STORESCP, "--fork", "-dhl", "-od", str(self.store), "-aet", self.aet, str(self.port)]
        )

    def count(self) -> int:
        return sum(1 for p in self.store.iterdir() if p.is_file())

    def cpu_seconds(self) -> float | None:
        return None  # the work is in short-lived forked children

    def stop(self) -> None:
        # The parent only accepts and forks; its VmHWM says nothing of the work.
        super().stop()
        self.peak_rss_mb = None


class OrthancReceiver(Receiver):
    """Orthanc with its own storage and index folders, no plugins."""

    name = "orthanc"
    aet = "ORTHANC"

    def _launch(self) -> None:
        self.port = _free_port()
        self.http_port = _free_port()
        while self.http_port == self.port:
            self.http_port = _free_port()
        config = {
            "Name": "scanet-bench",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {},
            "OrthancPeers": {},
            "SaveJobs": False,
            "LuaScripts": [],
        }
        config_path = self.root / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self._spawn([ORTHANC, "--no-jobs", str(config_path)], cwd=self.root)

    def _get(self, path: str) -> object:
        conn = http.client.HTTPConnection(HOST, self.http_port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise BenchmarkError(f"orthanc GET {path}: HTTP {response.status}")
            return json.loads(body)
        finally:
            conn.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchmarkError(
                    f"orthanc exited with status {self.proc.returncode} at start-up:\n"
                    + _tail(self.log)
                )
            with contextlib.suppress(OSError, BenchmarkError, ValueError):
                self._get("/system")
                break
            time.sleep(0.2)
        else:
            raise BenchmarkError(f"orthanc's /system did not answer within {START_TIMEOUT_S:.0f} s")
        super()._wait_ready()

    def count(self) -> int:
        stats = self._get("/statistics")
        if not isinstance(stats, dict):
            raise BenchmarkError(f"orthanc /statistics: unexpected answer {stats!r}")
        return int(stats["CountInstances"])


class NodeReceiver(Receiver):
    """``scanet-node serve`` with its default settings but for host, port and data_dir."""

    name = "scanet-node"
    aet = "SCANET"

    def __init__(self, root: Path, logs: Path) -> None:
        super().__init__(root, logs)
        self.data_dir = self.root / "data"
        self._stdout: list[str] = []
        self._listening = threading.Event()

    def _node_env(self) -> dict[str, str]:
        return _env(SCANET__NODE__DATA_DIR=str(self.data_dir), SCANET__ADMIN__PORT="0")

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self._stdout.append(line)
            match = re.match(r"scanet-node listening as \S+ on [^:]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._listening.set()

    def _launch(self) -> None:
        # Port 0: the node binds a free port and announces it, so there is no race.
        cmd = [sys.executable, "-m", "scanet_node", "serve", "--host", HOST, "--port", "0"]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self._node_env(),
                cwd=self.root,  # so that no ./config.toml is picked up
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._listening.wait(0.2):
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchmarkError(
                    f"scanet-node exited with status {self.proc.returncode} at start-up:\n"
                    + "\n".join(self._stdout)
                    + "\n"
                    + _tail(self.log)
                )
            if time.monotonic() > deadline:
                raise BenchmarkError("scanet-node did not announce its port in time")
        super()._wait_ready()

    def count(self) -> int:
        done = subprocess.run(
            [sys.executable, "-m", "scanet_node", "studies", "--json"],
            env=self._node_env(),
            cwd=self.root,
            capture_output=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise BenchmarkError(
                f"scanet-node studies --json failed ({done.returncode}): {done.stderr.decode()}"
            )
        catalogued = sum(int(s["num_instances"]) for s in json.loads(done.stdout))
        spool = self.data_dir / "spool"
        files = sum(1 for p in spool.rglob("*.dcm") if ".tmp" not in p.parts)
        if files != catalogued:
            raise BenchmarkError(
                f"scanet-node: {catalogued} instances catalogued but {files} files in the spool"
            )
        return catalogued


_MINIMAL_SCP = """
import socket, sys, threading
from pathlib import Path
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification

_config.LOG_HANDLER_LEVEL = "none"
out, port = Path(sys.argv[1]), int(sys.argv[2])
ae = AE(ae_title="PYNETDICOM")
ae.maximum_associations = 8
ae.maximum_pdu_size = 0
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
ae.add_supported_context(Verification)

def on_open(event):
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

def on_store(event):
    (out / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
    return 0x0000

ae.start_server(("127.0.0.1", port), block=True,
                evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, on_store)])
"""


class MinimalPynetdicomReceiver(Receiver):
    """A pynetdicom SCP that only writes files: the library's own ceiling, for reference."""

    name = "pynetdicom"
    aet = "PYNETDICOM"

    def _launch(self) -> None:
        self.store = self.root / "store"
        self.store.mkdir()
        self.port = _free_port()
        script = self.root / "minimal_scp.py"
        script.write_text(_MINIMAL_SCP)
        self._spawn([sys.executable, str(script), str(self.store), str(self.port)])

    def count(self) -> int:
        return sum(1 for p in self.store.iterdir() if p.is_file())


# -- sending -------------------------------------------------------------------


@dataclass
class Result:
    """The measurements of one receiver."""

    name: str
    single: list[float] = field(default_factory=list)  # images/s, one per repeat
    parallel: list[float] = field(default_factory=list)
    cpu_ms_per_image: float | None = None
    peak_rss_mb: float | None = None

    @property
    def single_median(self) -> float:
        return statistics.median(self.single)

    @property
    def parallel_median(self) -> float:
        return statistics.median(self.parallel)


def _chunks(files: Sequence[Path], parts: int) -> list[list[Path]]:
    size, extra = divmod(len(files), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(files[start:end]))
        start = end
    return [c for c in out if c]


def send(receiver: Receiver, files: Sequence[Path], associations: int, logs: Path) -> float:
    """Send ``files`` in ``associations`` parallel storescu runs; return images/s."""
    logs.mkdir(parents=True, exist_ok=True)
    chunks = _chunks(files, associations)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    started = time.perf_counter()
    try:
        for i, chunk in enumerate(chunks):
            log = logs / f"storescu-{i}.log"
            with log.open("wb") as out:
                cmd = [STORESCU, "-aet", CALLING_AET, "-aec", receiver.aet, HOST]
                proc = subprocess.Popen(
                    [*cmd, str(receiver.port), *map(str, chunk)],
                    env=_env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            procs.append((proc, log))
        for proc, _ in procs:
            proc.wait(SEND_TIMEOUT_S)
        elapsed = time.perf_counter() - started
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in procs:
        text = log.read_text(encoding="utf-8", errors="replace")
        errors = [line for line in text.splitlines() if line.startswith(("E:", "F:"))]
        if proc.returncode != 0 or errors:
            raise BenchmarkError(
                f"storescu to {receiver.name} failed (status {proc.returncode}):\n"
                + "\n".join(errors or text.splitlines()[-10:])
            )
    return len(files) / elapsed


def _verify(receiver: Receiver, expected: int) -> None:
    got = receiver.count()
    if got != expected:
        raise BenchmarkError(f"{receiver.name} holds {got} instances, expected {expected}")


def measure(
    receiver: Receiver,
    warmup: SeriesCopy,
    rounds: Sequence[tuple[SeriesCopy, SeriesCopy]],
    logs: Path,
) -> Result:
    """Warm up, then time each round's one-association and parallel sends."""
    result = Result(receiver.name)
    expected = 0
    send(receiver, warmup.files, 1, logs / "warmup")
    expected += len(warmup.files)
    _verify(receiver, expected)
    cpu = 0.0
    sent = 0
    for i, (single, parallel) in enumerate(rounds, start=1):
        for copy, associations, into in (
            (single, 1, result.single),
            (parallel, PARALLEL_ASSOCIATIONS, result.parallel),
        ):
            before = receiver.cpu_seconds()
            rate = send(receiver, copy.files, associations, logs / f"{copy.name}")
            after = receiver.cpu_seconds()
            if before is not None and after is not None:
                cpu += after - before
                sent += len(copy.files)
            into.append(rate)
            expected += len(copy.files)
            _verify(receiver, expected)
            print(
                f"  {receiver.name:12} round {i}: {associations} association(s) "
                f"{rate:7.1f} images/s",
                flush=True,
            )
    if sent:
        result.cpu_ms_per_image = 1000 * cpu / sent
    return result


@contextlib.contextmanager
def running(receiver: Receiver) -> Iterator[Receiver]:
    """Start a receiver and always stop it, whatever happens in between."""
    try:
        receiver.start()
        yield receiver
    finally:
        receiver.stop()


# -- report --------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _verdict(ok: bool | None) -> str:
    return "skipped" if ok is None else ("PASS" if ok else "FAIL")


def report(results: dict[str, Result], images: int, size: int, repeats: int) -> None:
    """Print the table, the ratios and the verdicts against the targets."""
    print()
    print(
        f"{images} CT images {size}x{size} int16, Explicit VR LE; storescu senders; "
        f"median of {repeats} repeat(s); fresh UIDs for every send"
    )
    header = (
        f"{'receiver':12} {'1 assoc img/s':>14} {'4 assoc img/s':>14} {'4/1':>6} "
        f"{'peak RSS MB':>12} {'CPU ms/img':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results.values():
        print(
            f"{r.name:12} {r.single_median:14.1f} {r.parallel_median:14.1f} "
            f"{r.parallel_median / r.single_median:6.2f} {_fmt(r.peak_rss_mb):>12} "
            f"{_fmt(r.cpu_ms_per_image):>11}"
        )
    print()
    for r in results.values():
        runs1 = ", ".join(f"{v:.1f}" for v in r.single)
        runs4 = ", ".join(f"{v:.1f}" for v in r.parallel)
        print(f"  {r.name:12} runs, 1 assoc: [{runs1}]  4 assoc: [{runs4}]")

    node = results["scanet-node"]
    storescp = results.get("storescp")
    orthanc = results.get("orthanc")
    vs_storescp = node.single_median / storescp.single_median if storescp else None
    vs_orthanc = node.single_median / orthanc.single_median if orthanc else None
    vs_orthanc4 = node.parallel_median / orthanc.parallel_median if orthanc else None
    minimal = results.get("pynetdicom")
    vs_minimal = node.single_median / minimal.single_median if minimal else None
    minimal_vs_orthanc = (
        minimal.single_median / orthanc.single_median if minimal and orthanc else None
    )
    parallel_ratio = node.parallel_median / node.single_median
    print()
    print("ratios")
    print(f"  node / storescp (1 assoc)       {_fmt(vs_storescp, '.2f')}")
    print(f"  node / Orthanc  (1 assoc)       {_fmt(vs_orthanc, '.2f')}")
    print(f"  node / Orthanc  (4 assoc)       {_fmt(vs_orthanc4, '.2f')}  (information)")
    print(f"  node / minimal pynetdicom SCP   {_fmt(vs_minimal, '.2f')}  (information)")
    print(f"  minimal pynetdicom / Orthanc    {_fmt(minimal_vs_orthanc, '.2f')}  (information)")
    print(f"  node 4 assoc / node 1 assoc     {parallel_ratio:.2f}")
    print(f"  node peak RSS (VmHWM)           {_fmt(node.peak_rss_mb)} MB")
    print()
    print("targets")
    checks = [
        (
            f"node >= {TARGET_VS_STORESCP}x storescp on one association",
            _fmt(vs_storescp, ".2f"),
            None if vs_storescp is None else vs_storescp >= TARGET_VS_STORESCP,
        ),
        (
            f"node >= {TARGET_VS_ORTHANC}x Orthanc on one association",
            _fmt(vs_orthanc, ".2f"),
            None if vs_orthanc is None else vs_orthanc >= TARGET_VS_ORTHANC,
        ),
        (
            f"node peak memory < {TARGET_PEAK_RSS_MB:.0f} MB",
            f"{_fmt(node.peak_rss_mb)} MB",
            None if node.peak_rss_mb is None else node.peak_rss_mb < TARGET_PEAK_RSS_MB,
        ),
        (
            f"node 4 assoc not slower than 1 (ratio >= "
            f"{TARGET_PARALLEL_RATIO - PARALLEL_TOLERANCE:.2f}: "
            f"{PARALLEL_TOLERANCE:.0%} noise allowed)",
            f"{parallel_ratio:.2f}",
            parallel_ratio >= TARGET_PARALLEL_RATIO - PARALLEL_TOLERANCE,
        ),
    ]
    width = max(len(c[0]) for c in checks)
    for text, value, ok in checks:
        print(f"  {text:{width}}  {value:>9}  {_verdict(ok)}")


# -- main ----------------------------------------------------------------------


def _check_tools(skip_orthanc: bool) -> None:
    tools = [STORESCU, STORESCP, ECHOSCU] + ([] if skip_orthanc else [ORTHANC])
    missing = [t for t in tools if not os.access(t, os.X_OK)]
    if missing:
        raise BenchmarkError(
            f"missing {', '.join(missing)} (Debian packages dcmtk and orthanc; "
            "or pass --skip-orthanc)"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=300, help="slices per series (300)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (512)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (3)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="cache folder for the generated series, kept and reused (default: a temp dir)",
    )
    parser.add_argument("--skip-orthanc", action="store_true", help="do not run Orthanc")
    args = parser.parse_args(argv)
    if args.images < PARALLEL_ASSOCIATIONS or args.size < 16 or args.repeats < 1:
        parser.error(f"need --images >= {PARALLEL_ASSOCIATIONS}, --size >= 16, --repeats >= 1")
    return args


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Result]:
    """Generate the series, then measure each receiver in turn."""
    names = [f"r{i}-{kind}" for i in range(1, args.repeats + 1) for kind in ("1assoc", "4assoc")]
    series_root = args.workdir.expanduser().resolve() if args.workdir else scratch / "series"
    copies = generate_series(series_root, args.images, args.size, names)
    warmup, rest = copies[0], copies[1:]
    rounds = list(zip(rest[0::2], rest[1::2], strict=True))

    kinds: list[type[Receiver]] = [StorescpReceiver]
    if not args.skip_orthanc:
        kinds.append(OrthancReceiver)
    kinds += [MinimalPynetdicomReceiver, NodeReceiver]
    results: dict[str, Result] = {}
    for kind in kinds:
        # Start each receiver with no dirty pages of earlier writes left to flush.
        os.sync()
        receiver = kind(scratch / "receivers", scratch / "logs")
        print(f"{receiver.name}: starting", flush=True)
        try:
            with running(receiver):
                print(f"{receiver.name}: listening on {HOST}:{receiver.port}", flush=True)
                result = measure(receiver, warmup, rounds, scratch / "logs" / receiver.name)
        except BenchmarkError as exc:
            raise BenchmarkError(f"{exc}\n(receiver log: {receiver.log})") from None
        result.peak_rss_mb = receiver.peak_rss_mb
        results[receiver.name] = result
        # Each receiver holds ~0.5 MB per image sent; free the disk before the next.
        shutil.rmtree(receiver.root, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, through the finally blocks that stop the receivers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    scratch = Path(tempfile.mkdtemp(prefix="scanet-bench-"))
    try:
        _check_tools(args.skip_orthanc)
        results = run(args, scratch)
    except (BenchmarkError, KeyboardInterrupt) as exc:
        why = str(exc) if isinstance(exc, BenchmarkError) else "interrupted"
        print(f"benchmark failed: {why}", file=sys.stderr)
        # Keep the (small) logs; the series and the received images go.
        shutil.rmtree(scratch / "series", ignore_errors=True)
        shutil.rmtree(scratch / "receivers", ignore_errors=True)
        print(f"logs kept under {scratch / 'logs'}", file=sys.stderr)
        return 1
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    report(results, args.images, args.size, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
