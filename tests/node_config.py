"""The settings of a test node, the one way the tests build them: :func:`make_settings` for a
node in the test's process, :func:`node_config` for the config file of a ``scanet-node``
process. Both start from :func:`node_sections`: port 0 on 127.0.0.1, data in ``data_dir``, no
low-disk guard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scanet_node.config import Settings, load_settings


def node_sections(
    data_dir: Path, defaults: dict[str, dict[str, Any]], sections: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The ``[node]`` section of every test node, then ``defaults``, then ``sections`` (each
    section's keys added to or replacing those before)."""
    merged: dict[str, dict[str, Any]] = {
        "node": {"host": "127.0.0.1", "port": 0, "data_dir": str(data_dir), "min_free_disk_mb": 0}
    }
    for extra in (defaults, sections):
        for name, values in extra.items():
            merged.setdefault(name, {}).update(values)
    return merged


def make_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a node in the test's process: no worker process (tests that analyse ask
    for one), no admin web page, a long quiet time before a series settles."""
    defaults: dict[str, dict[str, Any]] = {
        "pipeline": {"series_settle_seconds": 30, "workers": 0},
        "admin": {"enabled": False},
    }
    return load_settings(None, environ={}, overrides=node_sections(data_dir, defaults, sections))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string


def node_config(
    path: Path,
    *,
    data_dir: Path,
    checkpoint: Path | None = None,
    destination: tuple[str, str, int] | None = None,
    pipeline: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Path:
    """Write the settings of a test node for a ``scanet-node`` process to ``path``; return it.

    A series settles after 1 s, fast delivery retries, the model (``checkpoint``) on one CPU
    thread, one ``[[destinations]]`` (``destination``: name, AE title, port on 127.0.0.1);
    ``pipeline`` and further ``sections`` add to or override these.
    """
    defaults: dict[str, dict[str, Any]] = {
        "pipeline": {"series_settle_seconds": 1, "job_lease_seconds": 6, **(pipeline or {})},
        "delivery": {"retry_initial_seconds": 0.5, "retry_max_seconds": 1, "timeout_seconds": 10},
    }
    if checkpoint is not None:
        defaults["model"] = {"checkpoint": checkpoint, "device": "cpu", "threads": 1}
    lines = []
    for section, values in node_sections(data_dir, defaults, sections).items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    if destination is not None:
        name, ae_title, port = destination
        lines += [
            "[[destinations]]",
            f"name = {_toml(name)}",
            f"ae_title = {_toml(ae_title)}",
            'host = "127.0.0.1"',
            f"port = {port}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path
