"""Where the network runs: the device and its mixed precision (shared by training and inference).

Kept apart from ``train`` so that the serving path (``Predictor``) never imports training code.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``cuda`` when asked or available under ``auto``, else ``cpu``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
    return torch.device(name)


def autocast(
    device: torch.device, cpu_bf16: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (and on CPU when asked); otherwise nothing."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
