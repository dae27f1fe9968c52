"""Slabs of the model input: NCCT planes averaged, CTA planes projected (maximum)."""

from __future__ import annotations

import numpy as np
import pytest

from scanet_node.imaging.model_input import PLANES_PER_SLAB, SLABS, to_slabs


def test_mean_and_maximum_of_each_run_of_planes() -> None:
    fine = np.zeros((SLABS * PLANES_PER_SLAB, 4, 4), dtype=np.float32)
    fine[7, 1, 2] = 500.0  # a thin artery crossing one 1 mm plane of slab 1
    fine[10:15] = 30.0  # tissue filling slab 2
    mean, mip = to_slabs(fine), to_slabs(fine, "max")
    assert mean.shape == mip.shape == (SLABS, 4, 4)
    assert mean[1, 1, 2] == pytest.approx(100.0)  # diluted to a fifth by averaging
    assert mip[1, 1, 2] == 500.0  # kept by the projection
    assert mean[2, 0, 0] == mip[2, 0, 0] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="'mean' or 'max'"):
        to_slabs(fine, "median")
    with pytest.raises(ValueError, match="expected 130 planes"):
        to_slabs(fine[:-1])
