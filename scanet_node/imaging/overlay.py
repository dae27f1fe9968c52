"""Attention drawn onto the acquired NCCT images, in each image's own geometry.

The model sees the study in template space; ``load_series`` regularised the NCCT on the way
there (gantry tilt sheared back, slices reordered, uneven spacing or a gap resampled), so the
regular grid's slice ``k`` is not, in general, any acquired image. An overlay names one
acquired instance, so it is drawn on that instance: its own pixels in HU, and the attention
sampled at the patient position of each of its pixels (template -> regular NCCT grid through
the inverse registration, then trilinear at the pixel centres).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset

from scanet_node.imaging.model_input import ModelInput
from scanet_node.imaging.series import Plane, planes


@dataclass(frozen=True, eq=False)
class DrawnOverlay:
    """One acquired NCCT image with the attention on it, both ``(Rows, Columns)`` of it."""

    instance: int  # index of the instance among the headers given
    hu: npt.NDArray[np.float32]
    attention: npt.NDArray[np.float32]  # 0..1
    slab: int  # the template slab (0..25, inferior to superior) it was chosen for


def sample_on_plane(
    volume: npt.NDArray[np.floating], affine: npt.NDArray[np.float64], plane: Plane
) -> npt.NDArray[np.float32]:
    """``volume`` (``[k, j, i]`` with ``affine`` index -> LPS mm) at the centre of each of the
    plane's pixels, trilinear; 0 outside the volume."""
    from scipy.ndimage import map_coordinates

    points = plane.pixel_positions().reshape(-1, 3)
    ijk = np.linalg.solve(affine[:3, :3], (points - affine[:3, 3]).T)  # 3 x N, (i, j, k)
    values = map_coordinates(
        np.asarray(volume, dtype=np.float32), ijk[::-1], order=1, mode="constant", cval=0.0
    )
    return np.asarray(values.reshape(plane.rows, plane.columns), dtype=np.float32)


def slab_focus_patient(
    model_input: ModelInput, attention: npt.NDArray[np.floating], slab: int
) -> npt.NDArray[np.float64]:
    """NCCT patient LPS mm of where ``attention`` peaks in a template slab (its centre when the
    slab has none): the point an overlay of that slab should go through."""
    size = model_input.tensor.shape[-1]
    plane = np.asarray(attention[slab], dtype=np.float64)
    if float(plane.max()) > 0:
        row, col = np.unravel_index(int(np.argmax(plane)), plane.shape)
    else:
        row, col = (size - 1) / 2, (size - 1) / 2
    centre = model_input.grid.index_to_mni(np.array([[float(col), float(row), slab]]))
    lps: npt.NDArray[np.float64] = np.asarray(
        model_input.registration.mni_to_patient(centre, "ncct"), dtype=np.float64
    )
    return np.array(lps[0], dtype=np.float64)


def draw_attention(
    model_input: ModelInput,
    attention: npt.NDArray[np.floating],
    headers: Sequence[Dataset],
    paths: Sequence[Path],
    slabs: Sequence[int],
    count: int,
) -> list[DrawnOverlay]:
    """The acquired NCCT images through the first ``count`` distinct ``slabs``, in that order.

    ``attention`` is a ``(26, S, S)`` template-space map in 0..1; ``headers`` (pixel data not
    needed) and ``paths`` are the NCCT's instances, in the same order. For each slab, the image
    whose plane lies nearest the slab's attention peak is taken (once: an oblique or tilted
    image crosses a template slab at a slant, so the one through the slab's centre can miss
    what the model looked at); its pixels are read from its file.
    """
    if len(headers) != len(paths):
        raise ValueError("headers and paths differ in number")
    acquired = planes(headers)
    on_grid = model_input.slab_to_ncct(attention)
    chosen: list[DrawnOverlay] = []
    seen: set[tuple[int, int | None]] = set()
    for slab in slabs:
        focus = slab_focus_patient(model_input, attention, int(slab))
        plane = min(acquired, key=lambda p: abs(p.distance(focus)))
        if (plane.instance, plane.frame) in seen:
            continue
        seen.add((plane.instance, plane.frame))
        hu = plane.hu(dcmread(paths[plane.instance]))
        drawn = sample_on_plane(on_grid, model_input.ncct_affine, plane)
        chosen.append(
            DrawnOverlay(
                instance=plane.instance,
                hu=hu,
                attention=np.clip(drawn, 0.0, 1.0).astype(np.float32),
                slab=int(slab),
            )
        )
        if len(chosen) == count:
            break
    return chosen


def attention_overlays(
    model_input: ModelInput,
    attention: npt.NDArray[np.floating],
    slice_weights: npt.NDArray[np.floating],
    headers: Sequence[Dataset],
    paths: Sequence[Path],
    count: int,
) -> list[DrawnOverlay]:
    """The acquired NCCT images through the ``count`` most weighted slabs, with the attention.

    ``attention`` is the prediction's attention volume on the model input's grid and
    ``slice_weights`` its 26 slab weights. The attention is kept where the model saw the head
    (the input is zero outside the mask) and scaled to a peak of 1, then drawn on each image
    in its own geometry (:func:`draw_attention`).
    """
    inside = (model_input.tensor > 0).any(axis=0)
    volume = attention * inside
    peak = float(volume.max())
    return draw_attention(
        model_input,
        volume / peak if peak > 0 else volume,
        headers,
        paths,
        [int(s) for s in np.argsort(-slice_weights)],
        count,
    )
