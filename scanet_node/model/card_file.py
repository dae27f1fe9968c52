"""A checkpoint's model card, read without torch: for ``serve``'s admin page and ``performance``.

A checkpoint is ``torch.save`` of ``{"format", "card", "state_dict"}``: a zip whose
``*/data.pkl`` pickles that dict, with the tensors as references to storages in other
members. Unpickling it with every class replaced by a stand-in yields the dict with the card
(a JSON string) intact and the tensors as ``None``, in milliseconds and without importing
torch (hundreds of MB in a process that never runs the model). Only the names a checkpoint
holds are accepted, so nothing else in the file is ever called.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

from scanet_node.errors import CheckpointError

#: The globals ``torch.save`` of a state dict refers to; anything else is refused.
_ALLOWED_MODULES = ("torch", "torch._utils", "collections")


class _StandIn:
    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def __setstate__(self, _state: Any) -> None:
        pass


class _CardUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _ALLOWED_MODULES:
            return _StandIn
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a checkpoint")

    def persistent_load(self, pid: Any) -> None:
        return None


def read_card_values(path: Path) -> dict[str, Any]:
    """The card of the checkpoint at ``path`` as plain values (``ModelCard`` fields)."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            blob = _CardUnpickler(io.BytesIO(archive.read(member))).load()
        values = json.loads(blob["card"])
    except (OSError, StopIteration, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: no readable model card ({exc})") from exc
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not a scanet-node checkpoint: {exc}") from exc
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: the model card is not an object")
    return values
