"""The config file of a ``scanet-node serve``/``worker`` process in the interop tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
    checkpoint: Path,
    destination: tuple[str, str, int],
    pipeline: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Path:
    """Write the settings of a test node to ``path`` and return it.

    Port 0 on 127.0.0.1, data in ``data_dir``, no low-disk guard, the model on one CPU
    thread, fast delivery retries, one ``[[destinations]]`` (name, AE title, port on
    127.0.0.1); ``pipeline`` and further ``sections`` add to or override these.
    """
    name, ae_title, port = destination
    merged: dict[str, dict[str, Any]] = {
        "node": {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": data_dir,
            "min_free_disk_mb": 0,
        },
        "pipeline": {"series_settle_seconds": 1, "job_lease_seconds": 6, **(pipeline or {})},
        "delivery": {"retry_initial_seconds": 0.5, "retry_max_seconds": 1, "timeout_seconds": 10},
        "model": {"checkpoint": checkpoint, "device": "cpu", "threads": 1},
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    lines = []
    for section, values in merged.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    lines += [
        "[[destinations]]",
        f"name = {_toml(name)}",
        f"ae_title = {_toml(ae_title)}",
        'host = "127.0.0.1"',
        f"port = {port}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
