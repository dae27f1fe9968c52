"""The outside world of the tests: free ports on 127.0.0.1 and the peer tools (DCMTK,
dicom3tools, Orthanc, PostgreSQL, Chromium, docker-compose, systemd-analyze).

A missing tool skips its test on a developer's machine and fails it in CI (where the
environment variable ``CI`` is set), so a CI run never passes by skipping what it was meant
to check. ``bash tests/run`` installs every tool.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

# DCMTK 3.6.7 stalls ~45 ms per message on loopback without it.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing_tool(message: str) -> NoReturn:
    """Skip the test for a missing peer tool, or fail it in CI."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{message} (CI is set: a missing tool fails the run)")
    pytest.skip(message)


def require_tool(name: str, install: str, path: str | Path | None = None) -> str:
    """The path of the peer tool ``name`` (the executable ``path``, else ``name`` on PATH);
    where it is missing, :func:`missing_tool` with how to ``install`` it."""
    found = shutil.which(name if path is None else str(path))
    if found is None:
        missing_tool(f"{name} is not installed: {install} (bash tests/run installs it)")
    return found


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
    missing_tool(
        f"DCMTK's {tool} is not installed (found {shutil.which(tool)}): apt-get install dcmtk"
    )


def storescu(
    port: int,
    files: Sequence[Path],
    *options: str,
    calling: str = "CT01",
    called: str = "SCANET",
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sends ``files`` to 127.0.0.1:``port``; with ``check``, it must succeed."""
    done = subprocess.run(
        [dcmtk("storescu"), *options, "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=300,
        env=DCMTK_ENV,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done
