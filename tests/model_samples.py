"""Untrained SCANet checkpoints for tests of the plumbing (their card says so)."""

from __future__ import annotations

from pathlib import Path

import torch

from scanet_node.model.checkpoint import ModelCard, preprocessing, save_checkpoint
from scanet_node.model.network import Architecture, build


def untrained_checkpoint(path: Path, size: int, purpose: str, threshold: float = 0.5) -> Path:
    """Write an untrained SCANet taking ``size``-pixel inputs; the card names ``purpose``."""
    torch.manual_seed(0)
    card = ModelCard(
        architecture={},
        preprocessing=preprocessing(size),
        training={"data": f"none: untrained weights, {purpose}"},
        metrics={},
        threshold=threshold,
    )
    save_checkpoint(path, build(Architecture(size=size)), card)
    return path
