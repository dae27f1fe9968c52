"""Shared fixtures: an in-process node on a free port with its data in tmp_path."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from node_config import make_settings
from peers import free_port, missing_tool

from scanet_node.service import Node

NodeFactory = Callable[..., Node]


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian package postgresql); its base URL."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs:
        missing_tool("PostgreSQL's initdb is not installed: apt-get install postgresql")
    bindir = Path(bindirs[-1])
    data = Path(tempfile.mkdtemp(prefix="scanet-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
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
