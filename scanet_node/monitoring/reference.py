"""The training cohort's reference for drift monitoring, saved in the model card by ``train``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .descriptors import intensity_descriptors
from .drift import DESCRIPTORS, reference_from


def cohort_reference(
    inputs: npt.NDArray[np.floating[Any]],
    recorded: Sequence[Mapping[str, Any]],
    probabilities: Sequence[float],
    *,
    ncct_window_hu: tuple[float, float],
    cta_window_hu: tuple[float, float],
) -> dict[str, Any]:
    """The reference distributions of a cohort's descriptors (:func:`drift.reference_from`).

    ``inputs`` are the cohort's model inputs, ``recorded`` what their preparation recorded
    (may be empty, for template-space cohorts: those descriptors then get no reference and are
    not compared), ``probabilities`` the model's predictions on them.
    """
    columns: dict[str, list[Any]] = {name: [] for name in DESCRIPTORS}
    for index, tensor in enumerate(inputs):
        found: dict[str, Any] = dict(recorded[index]) if index < len(recorded) else {}
        found |= intensity_descriptors(
            tensor, ncct_window_hu=ncct_window_hu, cta_window_hu=cta_window_hu
        )
        found["probability"] = float(probabilities[index])
        for name in DESCRIPTORS:
            columns[name].append(found.get(name))
    return reference_from(columns)
