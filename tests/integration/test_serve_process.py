"""``scanet-node serve`` as the administrator runs it: a real process, signals, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from dicom_samples import PATIENT_ID, PATIENT_NAME, ct_series
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from scanet_node.catalog import Catalog

CLI = [sys.executable, "-m", "scanet_node"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


class ServeProcess:
    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [
                *CLI,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "SCANET__NODE__MIN_FREE_DISK_MB": "0",
                "SCANET__ADMIN__PORT": "0",
                **(env or {}),
            },
        )
        assert self.proc.stdout is not None
        self.banner = [self.proc.stdout.readline() for _ in range(4)]
        match = re.search(r"on 127\.0\.0\.1:(\d+)", self.banner[0])
        assert match, f"no listening line: {self.banner} {self.proc.stderr.read()}"  # type: ignore[union-attr]
        self.port = int(match.group(1))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(tmp_path / "data")
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def scu() -> AE:
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    return ae


def test_start_up_banner_and_clean_stop(serve: ServeProcess) -> None:
    assert serve.banner[0].startswith("scanet-node listening as SCANET on 127.0.0.1:")
    assert serve.banner[1].strip() == (
        f"catalog: sqlite:///{serve.data_dir.resolve() / 'catalog.sqlite'}"
    )
    assert serve.banner[2].strip() == f"spool:   {serve.data_dir.resolve() / 'spool'}"
    assert serve.banner[3].strip() == "allowed calling AE titles: any"
    code, err = serve.stop(signal.SIGINT)
    assert code == 0
    assert "received SIGINT, stopping" in err and "stopped" in err


def test_sigterm_during_transfers_loses_nothing_acknowledged(serve: ServeProcess) -> None:
    series = [ct_series(150, size=128) for _ in range(2)]
    acknowledged: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    started = threading.Event()

    def send(batch: list[Any]) -> None:
        assoc = scu().associate("127.0.0.1", serve.port, ae_title="SCANET")
        if not assoc.is_established:
            return
        for ds in batch:
            try:
                status = assoc.send_c_store(ds)
            except (RuntimeError, ValueError):
                break
            with lock:
                (acknowledged if status and status.Status == 0 else refused).append(
                    ds.SOPInstanceUID
                )
                if len(acknowledged) >= 40:
                    started.set()
            if not assoc.is_established:
                break
        if assoc.is_established:
            assoc.release()

    threads = [threading.Thread(target=send, args=(b,)) for b in series]
    for t in threads:
        t.start()
    assert started.wait(60)
    code, err = serve.stop(signal.SIGTERM, timeout=60)
    for t in threads:
        t.join(timeout=60)
    assert code == 0, err
    # New associations are refused once the node has stopped.
    assert not scu().associate("127.0.0.1", serve.port, ae_title="SCANET").is_established
    spool = serve.data_dir / "spool"
    assert list((spool / ".tmp").iterdir()) == []
    files = {p.stem for p in spool.rglob("*.dcm")}
    catalog = Catalog(f"sqlite:///{serve.data_dir / 'catalog.sqlite'}")
    try:
        catalogued = catalog.count_instances()
    finally:
        catalog.close()
    assert set(acknowledged) <= files
    assert catalogued >= len(acknowledged)
    assert len(files) == catalogued
    for secret in (PATIENT_ID, *PATIENT_NAME.split("^")):
        assert secret not in err


def test_studies_and_study_commands(serve: ServeProcess, tmp_path: Path) -> None:
    series = ct_series(4)
    # The association stays open while the commands run: released, the series would settle
    # a second later ([pipeline] settle_after_release_seconds).
    assoc = scu().associate("127.0.0.1", serve.port, ae_title="SCANET")
    for ds in series:
        assert assoc.send_c_store(ds).Status == 0
    env = {**os.environ, "SCANET__NODE__DATA_DIR": str(serve.data_dir)}
    listing = run_cli("studies", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    studies = json.loads(listing.stdout)
    assert len(studies) == 1
    study_uid = series[0].StudyInstanceUID
    assert studies[0]["study_instance_uid"] == study_uid
    assert studies[0]["num_instances"] == 4
    assert studies[0]["series"][0]["state"] == "receiving"
    assert studies[0]["series"][0]["series_description"] == "Head 5mm"
    assert studies[0]["last_received_at"].endswith("Z")
    text = run_cli("studies", env=env)
    assert study_uid in text.stdout and "receiving" in text.stdout
    one = run_cli("study", study_uid, "--json", env=env)
    assert json.loads(one.stdout)["series"][0]["num_instances"] == 4
    missing = run_cli("study", "1.2.3.4", env=env)
    assert missing.returncode == 1 and "no study" in missing.stderr
    by_option = run_cli("studies", "--json", "--data-dir", str(serve.data_dir))
    assert json.loads(by_option.stdout) == studies
    nowhere = run_cli("studies", "--data-dir", str(tmp_path / "empty"))
    assert nowhere.returncode == 2
    assert "no catalog at" in nowhere.stderr and not (tmp_path / "empty").exists()
    for secret in (PATIENT_ID, *PATIENT_NAME.split("^")):
        assert secret not in listing.stdout + text.stdout
    assoc.release()


def test_bad_config_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[node]\nport = 99999\n\n[security]\nallowed_calling_aets = ["A\\\\B"]\n')
    done = run_cli("--config", str(config), "serve")
    assert done.returncode == 2
    assert "[node] port: Input should be less than or equal to 65535 (got 99999)" in done.stderr
    assert "[security] allowed_calling_aets" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_cli("serve", env={**os.environ, "SCANET__NODE__MAX_ASSOCIATIONS": "-1"})
    assert done.returncode == 2 and "[node] max_associations" in done.stderr


def test_port_in_use_is_a_clear_error(serve: ServeProcess, tmp_path: Path) -> None:
    done = run_cli("serve", "--port", str(serve.port), "--data-dir", str(tmp_path / "other"))
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{serve.port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    done = run_cli("--help")
    assert done.returncode == 0 and "serve" in done.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, scanet_node.cli, scanet_node.config; "
            "print(sorted(m for m in ('pynetdicom', 'sqlalchemy', 'torch') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"


def _processes_with(marker: str) -> list[int]:
    """The pids of processes whose environment holds ``marker`` (children inherit it)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("SCANET_TEST_MARKER") == marker:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_serve_stops_whole_when_its_banner_cannot_be_written(tmp_path: Path) -> None:
    """`scanet-node serve | head -1` where head has gone: the banner's write fails after the
    node has started; serve must stop its listener and its worker and exit, leaving nothing."""
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        "SCANET__ADMIN__PORT": "0",
        "SCANET__NODE__MIN_FREE_DISK_MB": "0",
        "SCANET__PIPELINE__WORKERS": "1",
        "SCANET_TEST_MARKER": marker,
    }
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first line of the banner raises BrokenPipeError
    with (tmp_path / "stderr.log").open("w") as err:
        try:
            proc = subprocess.Popen(
                [*CLI, "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
                stdout=write_end,
                stderr=err,
                env=env,
            )
        finally:
            os.close(write_end)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            for pid in [proc.pid, *_processes_with(marker)]:
                os.kill(pid, signal.SIGKILL)
            pytest.fail("serve kept running after its banner could not be written")
    assert proc.returncode != 0
    assert "BrokenPipeError" in (tmp_path / "stderr.log").read_text()
    assert _processes_with(marker) == []  # no worker left behind


def _serve_with_a_worker(tmp_path: Path) -> tuple[ServeProcess, str]:
    """serve with one worker, its processes marked; returns once all three are up (serve,
    multiprocessing's resource tracker and the spawned worker)."""
    marker = uuid.uuid4().hex
    server = ServeProcess(
        tmp_path / "data",
        env={"SCANET__PIPELINE__WORKERS": "1", "SCANET_TEST_MARKER": marker},
    )
    wait_for("serve's three processes", lambda: len(_processes_with(marker)) >= 3, 60)
    assert len(_processes_with(marker)) == 3
    return server, marker


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_returns_only_when_nothing_of_it_is_left(tmp_path: Path, sig: int) -> None:
    """Stopped by a signal, serve exits after its worker and multiprocessing's resource tracker
    have: nothing of it is alive the moment it has exited (no waiting here)."""
    server, marker = _serve_with_a_worker(tmp_path)
    code, err = server.stop(sig, timeout=60)
    left = _processes_with(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert code == 0, err
    assert left == []


def test_a_worker_stops_when_serve_is_killed(tmp_path: Path) -> None:
    """SIGKILL of serve (the OOM killer, kill -9): its worker process notices and exits instead
    of working on as an orphan."""
    server, marker = _serve_with_a_worker(tmp_path)
    server.proc.kill()
    server.proc.communicate(timeout=30)
    try:
        wait_for("no process of serve left", lambda: not _processes_with(marker), 20)
    finally:
        for pid in _processes_with(marker):
            os.kill(pid, signal.SIGKILL)
