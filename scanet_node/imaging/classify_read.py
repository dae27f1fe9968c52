"""Classification of series on disk: the facts read from a header, the image check measured
on the pixels, and the two entry points that read files.

:func:`choose_series` reads a study folder and :func:`classify_files` one settled series; both
turn what they read into :class:`~scanet_node.imaging.classify.SeriesFacts` and leave the
decision to the pure rules of :mod:`scanet_node.imaging.classify`. The pixels are loaded only
when the tags alone cannot decide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydicom.dataset import Dataset

from scanet_node.catalog.models import Role
from scanet_node.errors import ImagingError
from scanet_node.imaging.classify import (
    VESSEL_HU,
    ClassificationRules,
    ImageEvidence,
    Selection,
    SeriesFacts,
    SeriesRole,
    classify_series,
    select_series,
    series_label,
)
from scanet_node.imaging.series import SeriesOnDisk, Volume, find_series, load_series

logger = logging.getLogger(__name__)

# Image check: the grid it is measured on and what counts as skull and head.
SKULL_HU: Final = 300.0
IMAGE_GRID_MM: Final = 2.0
#: In-plane bone components smaller than this are vessels or calcifications, not skull.
SKULL_MIN_AREA_MM2: Final = 300.0
#: A slice whose skull encloses at least this much is a slice through the cranium.
RING_MIN_AREA_MM2: Final = 2000.0
#: The interior is eroded by this much, away from the partial volume of the inner table.
INNER_TABLE_MM: Final = 3.0
#: A head: a skull ring over this length, of this width, enclosing this volume.
HEAD_MIN_COVERAGE_MM: Final = 40.0
HEAD_WIDTH_MM: Final = (100.0, 260.0)
HEAD_MIN_INTRACRANIAL_ML: Final = 300.0

# --------------------------------------------------------------------------------------------
# Facts from a header


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    value = ds.get(keyword)
    if value:
        item: Dataset = value[0]
        return item
    return None


def _group_value(ds: Dataset, macro: str, keyword: str) -> Any:
    """A value from an Enhanced image's shared, else first per-frame, functional group."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        first = _first_item(ds, groups)
        item = None if first is None else _first_item(first, macro)
        if item is not None and item.get(keyword) not in (None, ""):
            return item.get(keyword)
    return None


def _plane(orientation: Any) -> str | None:
    try:
        values = np.array([float(v) for v in orientation], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if values.shape != (6,):
        return None
    normal = np.cross(values[:3], values[3:])
    length = float(np.linalg.norm(normal))
    if length < 0.5:
        return None
    normal = np.abs(normal) / length
    axis = int(np.argmax(normal))
    if normal[axis] < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def facts_from_header(
    ds: Dataset, number_of_instances: int, number_of_images: int | None = None
) -> SeriesFacts:
    """The facts of a series from the header of one of its instances (classic or enhanced)."""
    contrast: str | None = _text(ds.get("ContrastBolusAgent")) or None
    if contrast is None:
        agent = _first_item(ds, "ContrastBolusAgentSequence")
        if agent is not None:
            contrast = _text(agent.get("CodeMeaning")) or "present (ContrastBolusAgentSequence)"
    thickness = _float(ds.get("SliceThickness"))
    if thickness is None:
        thickness = _float(_group_value(ds, "PixelMeasuresSequence", "SliceThickness"))
    kernel = _text(ds.get("ConvolutionKernel")) or _text(
        _group_value(ds, "CTReconstructionSequence", "ConvolutionKernel")
    )
    orientation = ds.get("ImageOrientationPatient") or _group_value(
        ds, "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    image_type = tuple(str(v).strip().upper() for v in (ds.get("ImageType") or ()))
    series_number = _float(ds.get("SeriesNumber"))
    rows, columns = _float(ds.get("Rows")), _float(ds.get("Columns"))
    return SeriesFacts(
        modality=_text(ds.get("Modality")).upper(),
        sop_class_uid=_text(ds.get("SOPClassUID")),
        series_description=_text(ds.get("SeriesDescription")),
        protocol_name=_text(ds.get("ProtocolName")),
        image_type=image_type,
        contrast_agent=contrast,
        slice_thickness=thickness,
        number_of_instances=number_of_instances,
        number_of_images=number_of_images,
        rows=None if rows is None else int(rows),
        columns=None if columns is None else int(columns),
        body_part=_text(ds.get("BodyPartExamined")),
        convolution_kernel=kernel,
        plane=_plane(orientation),
        series_number=None if series_number is None else int(series_number),
    )


# --------------------------------------------------------------------------------------------
# The image check


def image_evidence(volume: Volume) -> ImageEvidence:
    """Measure, on a ~2 mm grid, whether a volume is a head and how much of it is vessel.

    The skull is every in-plane bone component (> 300 HU) of at least 300 mm^2; its interior,
    filled slice by slice and eroded 3 mm away from the inner table, is the intracranial space,
    counted in the slices where it encloses at least 20 cm^2. The vessel fraction is the share
    of that space at 150-500 HU: contrast-filled arteries, veins and sinuses on a CTA, almost
    nothing (calcifications) on an NCCT. Voxels are picked by striding, not averaged, so thin
    vessels keep their HU.
    """
    from scipy import ndimage

    steps = [max(1, round(IMAGE_GRID_MM / s)) for s in volume.spacing]
    hu = volume.hu[:: steps[0], :: steps[1], :: steps[2]]
    spacing = [s * k for s, k in zip(volume.spacing, steps, strict=True)]
    pixel_mm2 = spacing[1] * spacing[2]
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 2)
    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)

    bone = hu > SKULL_HU
    labels, _ = ndimage.label(bone, structure=in_plane)
    sizes = np.bincount(labels.ravel())
    large = sizes * pixel_mm2 >= SKULL_MIN_AREA_MM2
    large[0] = False
    skull = large[labels]
    filled = ndimage.binary_fill_holes(skull, structure=cross)
    interior = filled & ~skull
    erosion = max(1, round(INNER_TABLE_MM / min(spacing[1], spacing[2])))
    interior = ndimage.binary_erosion(interior, structure=cross, iterations=erosion)
    ring = interior.sum(axis=(1, 2)) * pixel_mm2 >= RING_MIN_AREA_MM2

    intracranial = interior[ring]
    count = int(intracranial.sum())
    inside = hu[ring][intracranial]
    vessels = int(np.count_nonzero((inside >= VESSEL_HU[0]) & (inside < VESSEL_HU[1])))
    widths = []
    for k in np.flatnonzero(ring):
        rows = np.flatnonzero(filled[k].any(axis=1))
        cols = np.flatnonzero(filled[k].any(axis=0))
        widths.append(
            max((rows[-1] - rows[0] + 1) * spacing[1], (cols[-1] - cols[0] + 1) * spacing[2])
        )
    intracranial_ml = count * pixel_mm2 * spacing[0] / 1000.0
    coverage = float(ring.sum()) * spacing[0]
    width = float(np.median(widths)) if widths else 0.0
    is_head = (
        coverage >= HEAD_MIN_COVERAGE_MM
        and HEAD_WIDTH_MM[0] <= width <= HEAD_WIDTH_MM[1]
        and intracranial_ml >= HEAD_MIN_INTRACRANIAL_ML
    )
    return ImageEvidence(
        vessel_fraction=vessels / count if count else 0.0,
        intracranial_ml=round(intracranial_ml, 1),
        skull_coverage_mm=round(coverage, 1),
        head_width_mm=round(width, 1),
        is_head=is_head,
    )


def _with_image_check(
    facts: SeriesFacts,
    paths: Sequence[Path],
    rules: ClassificationRules,
    load: Callable[[Sequence[Path]], Volume],
) -> SeriesFacts:
    """``facts`` with the image check added when the tags alone cannot decide.

    Raises
    ------
    ImagingError
        When the series cannot be loaded for the check.
    """
    if not classify_series(facts, rules).needs_image_check:
        return facts
    return replace(facts, image=image_evidence(load(paths)))


def choose_series(
    study_dir: Path,
    rules: ClassificationRules | None = None,
    *,
    load: Callable[[Sequence[Path]], Volume] = load_series,
    found: Sequence[SeriesOnDisk] | None = None,
) -> Selection:
    """Find the series of a study folder, classify them and choose the NCCT and CTA.

    Series whose tags are silent or contradict are loaded (``load``) for an image check; a
    series that cannot be loaded is left out, and the reasons say so. ``found``: the folder's
    :func:`find_series`, when the caller has it already (it reads every file's header).
    """
    rules = rules or ClassificationRules()
    candidates: list[tuple[str, SeriesFacts]] = []
    notes: list[str] = []
    found = find_series(study_dir) if found is None else found
    for series in found:
        facts = facts_from_header(series.header, len(series.paths), series.number_of_images)
        try:
            facts = _with_image_check(facts, series.paths, rules, load)
        except ImagingError as exc:
            notes.append(f"{series_label(series.series_instance_uid, facts)}: left out, {exc}")
            continue
        candidates.append((series.series_instance_uid, facts))
    selection = select_series(candidates, rules)
    logger.info(
        "series chosen: NCCT %s, CTA %s",
        selection.ncct_uid or "none",
        selection.cta_uid or "none",
        extra={"study_uid": str(found[0].header.get("StudyInstanceUID", "")) if found else ""},
    )
    return replace(selection, reasons=(*notes, *selection.reasons))


def classify_files(paths: Sequence[Path], rules: ClassificationRules | None = None) -> SeriesRole:
    """The role of one series from its files: the header of one, the pixels only when needed.

    What the trigger calls when a series settles. The image check (loading the series) runs
    only when the tags are silent or contradict each other.
    """
    from pydicom import dcmread

    if not paths:
        return SeriesRole(Role.OTHER, "the series has no instances", 0.0)
    rules = rules or ClassificationRules()
    try:
        header = dcmread(paths[0], stop_before_pixels=True)
    except Exception as exc:  # tolerant when reading
        return SeriesRole(Role.OTHER, f"header unreadable: {exc}", 0.0)
    frames = header.get("NumberOfFrames")
    images = None if frames is None else int(frames) * len(paths)
    facts = facts_from_header(header, len(paths), images)
    try:
        facts = _with_image_check(facts, paths, rules, load_series)
    except ImagingError as exc:
        reason = classify_series(facts, rules).reason
        return SeriesRole(Role.OTHER, f"{reason}; image check impossible: {exc}", 0.0)
    return classify_series(facts, rules)
