"""Checkpoints: one file holding the weights and the model card that describes them.

The file is a ``torch.save`` dict of plain types (loadable with ``weights_only=True``):
``{"format": 1, "card": <JSON text>, "state_dict": {name: tensor}}``. The card records
the architecture, the preprocessing (input size, slab grid, HU windows), the training data
and settings, the metrics, the decision threshold, the date and the SHA-256 of the weights.

Loading checks, with a message that says what differs:

* the card's architecture version and parameters against this code's;
* the weights' names and shapes against the network the card describes;
* the weights' SHA-256 against the card.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scanet_node.errors import CheckpointError as CheckpointError
from scanet_node.imaging import model_input as mi
from scanet_node.model.network import ARCHITECTURE_VERSION, Architecture, build

FORMAT = 1


def preprocessing(size: int) -> dict[str, Any]:
    """The model-input description a card records (what ``imaging.prepare`` does at ``size``)."""
    return {
        "input_version": mi.INPUT_VERSION,
        "space": "MNI152 2009a (CT template, models/template)",
        "slabs": mi.SLABS,
        "slab_mm": mi.SLAB_MM,
        "slab_from_1mm_planes": {"ncct": "mean", "cta": "max"},
        "z_first_slab_centre_mni": mi.Z_BOTTOM_MNI,
        "size": size,
        "pixel_mm": round(mi.FOV_MM / size, 4),
        "fov_mm": mi.FOV_MM,
        "channels": ["NCCT", "CTA"],
        "windows_hu": {
            "ncct": list(mi.MODEL_INPUT_NCCT_WINDOW_HU),
            "cta": list(mi.MODEL_INPUT_CTA_WINDOW_HU),
        },
        "outside_brain": 0.0,
    }


def data_description(cases: int, cohort: str, *, synthetic: bool) -> str:
    """The card's line on the training data when the user gives none: its size and cohort."""
    text = f"{cases} cases of cohort {cohort}"
    return text + (" (SYNTHETIC: scanet-node synth, no patient data)" if synthetic else "")


@dataclass
class ModelCard:
    """What a checkpoint is, how it was made and how well it did."""

    architecture: dict[str, Any]
    preprocessing: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any]
    threshold: float = 0.5
    intended_use: str = ""
    synthetic: bool = True
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    code_version: str = ""
    weights_sha256: str = ""
    parameters: int = 0
    #: The training cohort's distribution of each input descriptor and of the predicted
    #: probability, which drift monitoring compares a site's studies with
    #: (``monitoring.drift.reference_from``); empty for a card made before it existed.
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> Architecture:
        """The architecture as this code's dataclass (raises if the card's does not fit)."""
        return _architecture(self.architecture)

    def as_dict(self) -> dict[str, Any]:
        """Plain values."""
        return dict(self.__dict__)

    def to_markdown(self) -> str:
        """The card for people (``models/*.md`` sits beside the checkpoint)."""
        a = self.architecture
        lines = [
            f"# Model card: {a.get('kind', '?')} ({self.parameters / 1e6:.1f} M parameters)",
            "",
        ]
        if self.synthetic:
            lines += [
                "**Trained on SYNTHETIC data only. Not for clinical use. Its predictions say "
                "nothing about real patients.**",
                "",
            ]
        command = self.training.get("command")
        held_out = self.metrics.get("held_out", {})
        lines += [
            f"- Intended use: {self.intended_use}",
            f"- Created: {self.created} (scanet-node {self.code_version})",
            f"- Weights SHA-256: `{self.weights_sha256}`",
            f"- Decision threshold: {self.threshold:.4f} (P(mTICI >= 2c) at or above it is "
            "reported as 'recanalization expected')",
            "",
        ]
        if command:
            seconds = self.training.get("epoch_seconds") or self.training.get("seconds")
            lines += [
                "## How it was trained",
                "",
                "```",
                str(command),
                "```",
                "",
                f"Training time: {seconds / 60:.0f} min on {self.training.get('machine', '?')}."
                if isinstance(seconds, (int, float))
                else "",
                "Options marked [ours] in `scanet-node train --help` are not the paper's.",
                "",
            ]
            origin = self.training.get("initialised_from")
            if isinstance(origin, dict) and origin.get("command"):
                before = origin.get("seconds")
                lines += [
                    f"It started from the weights `{origin.get('checkpoint', '?')}` "
                    f"(SHA-256 `{str(origin.get('weights_sha256', ''))[:12]}...`), trained by",
                    "",
                    "```",
                    str(origin["command"]),
                    "```",
                    "",
                    f"on {origin.get('data', '?')} ({before / 60:.0f} min)."
                    if isinstance(before, (int, float))
                    else f"on {origin.get('data', '?')}.",
                    "",
                ]
        if isinstance(held_out, dict) and held_out.get("table"):
            lines += ["## Held-out evaluation", "", str(held_out["table"]).strip(), ""]
        lines += [
            "## Architecture",
            "```json",
            json.dumps(self.architecture, indent=2),
            "```",
            "## Preprocessing",
            "```json",
            json.dumps(self.preprocessing, indent=2),
            "```",
            "## Training",
            "```json",
            json.dumps(self.training, indent=2),
            "```",
            "## Metrics",
            "```json",
            json.dumps(self.metrics, indent=2),
            "```",
            *self._reference_lines(),
        ]
        return "\n".join(lines) + "\n"

    def _reference_lines(self) -> list[str]:
        if not self.reference:
            return []
        lines = [
            "## Drift reference",
            "",
            "What drift monitoring compares a site's last 30 days with (population stability "
            "index per descriptor; `scanet-node performance`):",
            "",
            "| Descriptor | Studies | Reference |",
            "|---|---|---|",
        ]
        for name, ref in self.reference.items():
            if ref.get("kind") == "categorical":
                shown = ", ".join(f"{k} {v:.0%}" for k, v in ref.get("shares", {}).items())
            else:
                edges = ref.get("edges", [])
                shown = f"deciles {edges[0]:.4g} to {edges[-1]:.4g}" if edges else "one value"
            lines.append(f"| {name} | {ref.get('n', 0)} | {shown} |")
        return lines


def _architecture(values: dict[str, Any]) -> Architecture:
    version = values.get("version")
    if version != ARCHITECTURE_VERSION:
        raise CheckpointError(
            f"the checkpoint's architecture version is {version}, this code builds version "
            f"{ARCHITECTURE_VERSION}: use a checkpoint trained by this release"
        )
    try:
        return Architecture.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"the checkpoint's architecture does not fit this code: {exc}"
        ) from exc


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the weights, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path: Path, model: nn.Module, card: ModelCard, *, half: bool = True
) -> ModelCard:
    """Write ``model`` and ``card`` to ``path`` (atomically) and ``path.with_suffix('.md')``."""
    from scanet_node import __version__

    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    card.weights_sha256 = weights_sha256(state)
    card.parameters = sum(p.numel() for p in model.parameters())
    card.code_version = __version__
    card.architecture = _arch_of(model).as_dict()
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "card": json.dumps(card.as_dict()), "state_dict": state}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(buffer.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    path.with_suffix(".md").write_text(card.to_markdown())
    return card


def update_card(
    path: Path,
    *,
    metrics: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
) -> ModelCard:
    """Add ``metrics`` (e.g. a held-out evaluation) and set the drift ``reference`` of a
    checkpoint's card; weights unchanged.

    The file is rewritten atomically and its ``.md`` beside it; the weights' SHA-256 stays.
    """
    card, state = _read(path)
    card.metrics = {**card.metrics, **(metrics or {})}
    if reference is not None:
        card.reference = reference
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "card": json.dumps(card.as_dict()), "state_dict": state}, buffer)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    path.with_suffix(".md").write_text(card.to_markdown())
    return card


def _arch_of(model: nn.Module) -> Architecture:
    arch = getattr(model, "arch", None)
    if not isinstance(arch, Architecture):
        raise TypeError("the model carries no Architecture")
    return arch


def read_card(path: Path) -> ModelCard:
    """The card of a checkpoint, without building the network."""
    return _read(path)[0]


def _read(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a scanet-node checkpoint: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "card" not in blob:
        raise CheckpointError(f"{path} is not a scanet-node checkpoint (format {FORMAT})")
    try:
        values = json.loads(blob["card"])
        card = ModelCard(**values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the model card cannot be read: {exc}") from exc
    return card, blob["state_dict"]


def load_checkpoint(path: Path) -> tuple[nn.Module, ModelCard]:
    """The network (float32, eval mode, on CPU) and its card; refuses a mismatch, saying why."""
    card, state = _read(path)
    arch = card.arch
    sha = weights_sha256(state)
    if sha != card.weights_sha256:
        raise CheckpointError(
            f"{path}: the weights' SHA-256 {sha[:12]}… does not match the card's "
            f"{card.weights_sha256[:12]}…: the file was altered or damaged"
        )
    model = build(arch)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        shapes = [k for k in expected.keys() & found.keys() if expected[k] != found[k]][:3]
        raise CheckpointError(
            f"{path}: the weights do not fit the {arch.kind} the card describes "
            f"(missing {missing}, unexpected {extra}, other shape {shapes})"
        )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    return model, card
