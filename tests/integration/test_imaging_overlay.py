"""Attention drawn onto the acquired NCCT images, whatever ``load_series`` corrected.

For every variant whose regular grid differs from the acquired images (gantry tilt: the grid
grows from 128 to 153 rows; reversed order; a missing slice), a mark put in template space
must come out on the acquired image that holds it, at the pixel where the mark lies in the
patient, on that image's own pixels and geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels.utils import pixel_array

from scanet_node.imaging.model_input import ModelInput
from scanet_node.imaging.overlay import draw_attention
from scanet_node.imaging.prepare import prepare
from scanet_node.imaging.series import AIR_HU, planes
from scanet_node.synth.cohort import plan_study, write_study

PLAN = plan_study(3, 0)
SIZE = 64
SLAB = 14


def _prepared(
    folder: Path, variant: str, small: bool = True
) -> tuple[ModelInput, list[Path], dict[str, object]]:
    manifest = write_study(folder, PLAN, small=small, variant=variant)
    study = folder / PLAN.case_id
    entry = next(s for s in manifest["series"] if s["role"] == "ncct")
    paths = sorted((study / entry["folder"]).glob("*.dcm"))
    return prepare(study, size=SIZE), paths, manifest


@pytest.mark.parametrize(
    ("variant", "small"),
    [
        ("standard", True),
        ("gantry-tilt", True),
        ("reversed", True),
        ("missing-slice", True),
        ("gantry-tilt", False),  # 512 x 512, 5 mm slices, 15 degrees: as scanners tilt
    ],
)
def test_the_attention_lands_on_the_acquired_image_where_it_lies(
    tmp_path: Path, variant: str, small: bool
) -> None:
    model_input, paths, _ = _prepared(tmp_path, variant, small)
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    if variant == "gantry-tilt":  # the case that lost studies: the grid is larger
        assert model_input.ncct_shape[1:] != (rows, columns)
    # A 3 x 3 mark in slab SLAB, off the centre but inside the head.
    inside = (model_input.tensor > 0).any(axis=0)[SLAB]
    r0, c0 = SIZE // 2 - 6, SIZE // 2 + 5  # 17 mm anterior: 4.5 mm off-slab at a 15 deg tilt
    assert inside[r0 - 1 : r0 + 2, c0 - 1 : c0 + 2].all()
    attention = np.zeros(model_input.tensor.shape[1:], dtype=np.float32)
    attention[SLAB, r0 - 1 : r0 + 2, c0 - 1 : c0 + 2] = 1.0

    (drawn,) = draw_attention(model_input, attention, headers, paths, [SLAB], 1)

    source = headers[drawn.instance]
    assert drawn.slab == SLAB
    assert drawn.hu.shape == drawn.attention.shape == (int(source.Rows), int(source.Columns))
    # The instance's own pixels, in HU as load_series makes them.
    ds = dcmread(paths[drawn.instance])
    expected = pixel_array(ds) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(drawn.hu, np.maximum(expected, AIR_HU), atol=1e-3)
    # The mark, where it lies in the patient, projected onto the chosen image.
    plane = next(p for p in planes(headers) if p.instance == drawn.instance)
    mark = model_input.grid.index_to_mni(np.array([[c0, r0, SLAB]], dtype=float))
    lps = np.asarray(model_input.registration.mni_to_patient(mark, "ncct"))[0]
    offset = lps - plane.position
    dr, dc = plane.pixel_spacing
    at = np.array([offset @ plane.column_direction / dr, offset @ plane.row_direction / dc])
    # the chosen image is the one nearest the mark (the slab's attention peak)
    assert abs(plane.distance(lps)) == min(abs(p.distance(lps)) for p in planes(headers))
    assert abs(plane.distance(lps)) <= 2.6  # half the 5 mm slice spacing
    weights = drawn.attention
    assert float(weights.max()) > 0.3, "the mark did not reach the image"
    grid_r, grid_c = np.indices(weights.shape)
    centroid = np.array(
        [(grid_r * weights).sum() / weights.sum(), (grid_c * weights).sum() / weights.sum()]
    )
    error_mm = np.hypot(*(centroid - at) * np.array([dr, dc]))
    assert error_mm < 4.0, f"the mark is {error_mm:.1f} mm from where it lies"
    # Nothing is drawn far from it.
    far = np.hypot((grid_r - at[0]) * dr, (grid_c - at[1]) * dc) > 15.0
    assert float(weights[far].max(initial=0.0)) == 0.0


def test_each_image_is_drawn_once_in_slab_order(tmp_path: Path) -> None:
    model_input, paths, _ = _prepared(tmp_path, "gantry-tilt")
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    attention = np.ones(model_input.tensor.shape[1:], dtype=np.float32)
    drawn = draw_attention(model_input, attention, headers, paths, [14, 14, 13, 20, 3], 3)
    assert [d.slab for d in drawn] == [14, 13, 20]
    assert len({d.instance for d in drawn}) == 3
    with pytest.raises(ValueError, match="differ in number"):
        draw_attention(model_input, attention, headers, paths[:-1], [14], 1)
