"""Inference: one loaded network per worker, probability, class and attention per study."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from scanet_node.config import DEFAULT_CHECKPOINT
from scanet_node.imaging.model_input import ModelInput
from scanet_node.model.checkpoint import CheckpointError, ModelCard, load_checkpoint
from scanet_node.model.device import autocast, pick_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one study, with the attention behind it."""

    probability: float  # P(mTICI >= 2c)
    positive: bool  # probability >= threshold
    threshold: float
    slice_weights: npt.NDArray[np.float32]  # (slices,), sums to 1
    sat_maps: npt.NDArray[np.float32]  # (slices, g, g), each slice's map sums to 1
    model: str  # kind and weights SHA-256 prefix

    @property
    def top_slice(self) -> int:
        """The slice the model weighted most."""
        return int(np.argmax(self.slice_weights))

    def attention_volume(self, size: int) -> npt.NDArray[np.float32]:
        """``(slices, size, size)``: each SAT map upsampled, times its slice weight, max 1."""
        if self.sat_maps.size == 0:
            volume = np.broadcast_to(
                self.slice_weights[:, None, None], (len(self.slice_weights), size, size)
            )
        else:
            maps = torch.as_tensor(self.sat_maps)[:, None]
            up = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            volume = up.numpy() * self.slice_weights[:, None, None]
        peak = float(np.max(volume))
        return np.asarray(volume / peak if peak > 0 else volume, dtype=np.float32)


def resolve_checkpoint(checkpoint: Path | None) -> Path:
    """The checkpoint to load: the one given, else the shipped demo weights."""
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if checkpoint is None and not path.is_file():
        raise CheckpointError(
            f"the demo weights are missing ({path}; they ship with scanet-node): reinstall, "
            "or train a model with 'scanet-node train' and pass its checkpoint "
            "([model] checkpoint, --checkpoint)"
        )
    return path


class Predictor:
    """Loads a checkpoint once; ``predict`` a ``(2, 26, S, S)`` model input.

    On CUDA it runs under bf16 autocast; on CPU in float32 with a fixed thread count, so the
    same input gives the same output bit for bit.
    """

    def __init__(
        self, checkpoint: Path | None = None, *, device: str = "auto", threads: int | None = None
    ) -> None:
        self.path = resolve_checkpoint(checkpoint)
        model, card = load_checkpoint(self.path)
        self.device = pick_device(device)
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        self.model = model.to(self.device).eval()
        self.card: ModelCard = card
        logger.info(
            "loaded %s weights %s (%s, input %d px) on %s",
            card.architecture["kind"],
            card.weights_sha256[:12],
            "SYNTHETIC training data" if card.synthetic else "trained on clinical data",
            self.input_size,
            self.device,
        )

    @property
    def input_size(self) -> int:
        """In-plane size the model takes; prepare studies at this size."""
        return int(self.card.preprocessing["size"])

    def describe(self) -> dict[str, Any]:
        """What is loaded, for logs, reports and the SR."""
        return {
            "kind": self.card.architecture["kind"],
            "weights_sha256": self.card.weights_sha256,
            "synthetic": self.card.synthetic,
            "threshold": self.card.threshold,
            "input_size": self.input_size,
            "created": self.card.created,
            "device": str(self.device),
        }

    def document(self, study_instance_uid: str, prediction: Prediction) -> dict[str, Any]:
        """The JSON-able answer for one study (``scanet-node predict`` prints it), rounded to
        4 places, with what model gave it."""
        return {
            "study_instance_uid": study_instance_uid,
            "probability_mtici_2c_3": round(prediction.probability, 4),
            "recanalization_expected": prediction.positive,
            "threshold": round(prediction.threshold, 4),
            "top_slice": prediction.top_slice,
            "slice_weights": [round(float(w), 4) for w in prediction.slice_weights],
            "model": self.describe(),
        }

    def predict(self, model_input: ModelInput | npt.NDArray[np.floating]) -> Prediction:
        """Run the model on one study (a ``ModelInput`` or its ``2 x 26 x S x S`` tensor)."""
        tensor = model_input.tensor if isinstance(model_input, ModelInput) else model_input
        return self.predict_batch(np.asarray(tensor)[None])[0]

    def predict_batch(self, tensors: npt.NDArray[np.floating]) -> list[Prediction]:
        """Run the model on ``B x 2 x 26 x S x S`` inputs."""
        arch = self.card.arch
        expected = (arch.in_channels, arch.slices, arch.size, arch.size)
        if tensors.ndim != 5 or tuple(tensors.shape[1:]) != expected:
            raise ValueError(
                f"this model takes {' x '.join(map(str, expected))} inputs (prepare at size "
                f"{arch.size}), got {tuple(tensors.shape[1:])}"
            )
        x = torch.as_tensor(np.asarray(tensors, dtype=np.float32), device=self.device)
        with torch.inference_mode(), autocast(self.device):
            out = self.model(x)
        probs = torch.sigmoid(out.logit.float()).cpu().numpy()
        weights = out.slice_weights.float().cpu().numpy()
        sat = out.sat_maps.float().cpu().numpy()
        name = f"{arch.kind}:{self.card.weights_sha256[:12]}"
        return [
            Prediction(
                probability=float(probs[i]),
                positive=bool(probs[i] >= self.card.threshold),
                threshold=float(self.card.threshold),
                slice_weights=weights[i],
                sat_maps=sat[i],
                model=name,
            )
            for i in range(len(probs))
        ]
