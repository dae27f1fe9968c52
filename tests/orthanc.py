"""A throwaway Orthanc (Debian package ``orthanc``) as the PACS the node sends results to.

``run_orthanc(tmp_path)`` starts one on free ports with its storage, index and log in
``tmp_path`` and stops it afterwards. ``stop()`` and ``start()`` take it down and bring it
back on the same ports, for "destination down, then up again" tests. Where Orthanc is not
installed, the test that asks for it skips, or fails in CI (peers.require_tool).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from peers import free_port, require_tool

ORTHANC = Path("/usr/sbin/Orthanc")


class OrthancServer:
    """One Orthanc process: DICOM on ``dicom_port``, REST on ``http_url``, AE ``ae_title``.

    Called AE titles are checked (``DicomCheckCalledAet``); any calling AE may store
    (``DicomAlwaysAllowStore``, also Orthanc's default). No authentication, loopback only.
    ``extra_config`` adds or replaces settings (modalities, Lua scripts, ...); the ports,
    folders, loopback-only access and the lack of authentication stay as above.
    """

    def __init__(
        self,
        folder: Path,
        ae_title: str = "ORTHANC",
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.host = "127.0.0.1"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.http_url = f"http://{self.host}:{self.http_port}"
        self.log_path = folder / "orthanc.log"
        self.config_path = folder / "orthanc.json"
        self._process: subprocess.Popen[bytes] | None = None
        config = {
            "Name": "scanet-test",
            "DicomAet": ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "Plugins": [],
            "SaveJobs": False,
            "StorageCompression": False,
            "DicomThreadsCount": 2,
            "HttpThreadsCount": 4,
            "ConcurrentJobs": 1,
        }
        # extra_config never changes the ports, the folders or the loopback-only access.
        owned = ("DicomAet", "DicomPort", "HttpPort", "StorageDirectory", "IndexDirectory")
        owned += ("RemoteAccessAllowed", "AuthenticationEnabled")
        config = {**config, **(extra_config or {}), **{k: config[k] for k in owned}}
        config.pop("RegisteredUsers", None)
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self, wait: float = 20.0) -> None:
        """Start Orthanc (again, on the same ports) and wait until its REST API answers."""
        if self._process is not None:
            raise RuntimeError("Orthanc is already running")
        # DCMTK inside Orthanc otherwise stalls ~45 ms per C-STORE on loopback (Nagle).
        env = {**os.environ, "TCP_NODELAY": "1"}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(ORTHANC), str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=env,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"Orthanc exited at start-up:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                self.rest("/system")
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {wait:g} s:\n{self.log_tail()}")

    def stop(self, *, graceful: bool = False) -> None:
        """Stop Orthanc; its storage stays for the next ``start()``.

        By default it is killed, as in a crash: its SQLite index survives that, and a
        graceful stop takes Orthanc ~3.5 s (its servers poll for the shutdown flag).
        """
        process, self._process = self._process, None
        if process is None:
            return
        if not graceful:
            process.kill()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def rest(self, path: str) -> Any:
        """GET ``path`` from the REST API, decoded from JSON."""
        with urllib.request.urlopen(self.http_url + path, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def instances(self) -> list[str]:
        """SOP Instance UIDs of every stored instance."""
        return [item["MainDicomTags"]["SOPInstanceUID"] for item in self.rest("/instances?expand")]

    def instance_ids(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc's instance ID."""
        return {
            item["MainDicomTags"]["SOPInstanceUID"]: item["ID"]
            for item in self.rest("/instances?expand")
        }

    def get_instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of one instance, as Orthanc keeps it."""
        url = f"{self.http_url}/instances/{orthanc_id}/file"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            return bytes(response.read())

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def run_orthanc(
    tmp_path: Path, ae_title: str = "ORTHANC", extra_config: Mapping[str, Any] | None = None
) -> Iterator[OrthancServer]:
    """A running Orthanc with its files in ``tmp_path / "orthanc"``; stopped on exit."""
    require_tool("Orthanc", "apt-get install orthanc", ORTHANC)
    server = OrthancServer(tmp_path / "orthanc", ae_title, extra_config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
