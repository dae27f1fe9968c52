"""Shared fixtures: an in-process node on a free port with its data in tmp_path."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanet_node.config import Settings, load_settings
from scanet_node.service import Node

NodeFactory = Callable[..., Node]


def make_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a test node: port 0 on 127.0.0.1, data in ``data_dir``, no low-disk guard,
    no worker process (tests that analyse ask for one), no admin web page."""
    overrides: dict[str, dict[str, Any]] = {
        "node": {"host": "127.0.0.1", "port": 0, "data_dir": str(data_dir), "min_free_disk_mb": 0},
        "pipeline": {"series_settle_seconds": 30, "workers": 0},
        "admin": {"enabled": False},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(None, environ={}, overrides=overrides)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start nodes on demand; every node started is stopped at teardown."""
    nodes: list[Node] = []

    def start(data_dir: Path | None = None, **sections: dict[str, Any]) -> Node:
        node = Node(make_settings(data_dir or tmp_path / f"node{len(nodes)}", **sections))
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop(grace_seconds=2)


@pytest.fixture
def node(node_factory: NodeFactory) -> Node:
    """A running node with default settings."""
    return node_factory()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests on SQLite (the default) and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A test CA and certificates signed by it (tests/pki.py), in ``tmp_path/pki``."""
    from pki import make_pki

    return make_pki(tmp_path / "pki")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs that fills up (mounting needs root, as tests/run and CI have)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full tests: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 20.0,
    log: Callable[[], str] | None = None,
    *,
    stop_if: Callable[[], bool] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy, and return that.

    On ``timeout`` (or earlier, once ``stop_if()`` is true: a process that ended) fail naming
    ``what``, with the tail of ``log()`` (a node's log) when given.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline or (stop_if is not None and stop_if()):
            break
        time.sleep(0.2)
    tail = f"\n{log()[-6000:]}" if log is not None else ""
    raise AssertionError(f"timed out waiting for {what}{tail}")


def dcmtk(tool: str) -> str:
    """The path of a DCMTK tool (pynetdicom installs Python look-alikes on PATH)."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        path = Path(folder) / tool
        if path.exists():
            out = subprocess.run(
                [str(path), "--version"], capture_output=True, text=True, check=False
            )
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return str(path)
    found = shutil.which(tool)
    raise RuntimeError(f"DCMTK's {tool} is not installed (found {found}); apt-get install dcmtk")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian package postgresql); its base URL."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs:
        pytest.fail("PostgreSQL server not installed: apt-get install postgresql (tests/run does)")
    bindir = Path(bindirs[-1])
    data = Path(tempfile.mkdtemp(prefix="scanet-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "scanet"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "-l",
            str(data / "server.log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://scanet@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{postgres_server}/{name}"
