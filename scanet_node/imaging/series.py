"""The files of one series as a volume in Hounsfield units, on a regular orthogonal grid.

Every transfer syntax the listener accepts is decoded by pydicom with its plugins (pylibjpeg,
GDCM, native RLE and deflate). Classic CT (one image per file) and Enhanced CT (one multi-frame
file, positions and rescaling per frame in the functional groups) give the same result.

Slices are ordered by their position along the slice normal (row direction x column
direction), never by InstanceNumber. The geometry is then made regular, and every change is
recorded in words:

- duplicate positions: one image is kept (a correction);
- gantry tilt, or any in-plane offset between slices: each slice is shifted within its plane
  onto one grid, which grows so that nothing is cut (a correction, with the tilt in degrees);
- uneven spacing: resampled along the normal to the median spacing (a correction);
- one missing slice: filled by linear interpolation (a correction); several adjacent missing
  slices: interpolated across as well, but recorded as a problem for QC to judge;
- images of different orientations, sizes or pixel spacings: the series is refused
  (:class:`ImagingError`).

Voxel convention of :class:`Volume`: ``hu`` is indexed ``[slice, row, col]``; ``affine`` maps
the homogeneous index ``(i=col, j=row, k=slice, 1)`` to DICOM patient coordinates (LPS, mm), as
nibabel builds an affine from DICOM. Its columns are the row direction times the column
spacing, the column direction times the row spacing, the slice normal times the slice spacing
and the centre of the first voxel. ``k`` increases along the normal (feet to head for an axial
head scan), whatever the order the images were sent or numbered in.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from scanet_node.errors import ImagingError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
HUVolume = npt.NDArray[np.float32]

#: Air: the value of padding and of everything below it (outside the reconstruction circle).
AIR_HU: Final = -1024.0
#: Largest difference of direction cosines between the images of one series.
ORIENTATION_TOLERANCE: Final = 1e-3
#: Neighbours closer than this fraction of the typical spacing are one position twice.
DUPLICATE_FRACTION: Final = 0.1
#: A gap within this fraction (or 0.02 mm) of the median gap counts as regular.
SPACING_TOLERANCE: Final = 0.05
#: A gap of at least this many median gaps means that slices are missing.
MISSING_RATIO: Final = 1.5
#: In-plane offsets between slices below this many pixels are ignored.
SHEAR_TOLERANCE_PX: Final = 0.1


@dataclass(frozen=True, eq=False)
class Volume:
    """One series in HU on a regular grid; see the module docstring for the conventions.

    ``hu`` and ``affine`` are read-only. ``spacing`` is (slice, row, col) in mm, the slice
    spacing measured along the normal. ``corrections`` says what was changed to make the grid
    regular; ``problems`` what QC should judge (the volume is usable but not to be trusted
    blindly). ``number_of_instances`` counts source files, ``slice_thickness`` is the nominal
    thickness of the first image (None when absent).
    """

    hu: HUVolume
    affine: FloatArray
    spacing: tuple[float, float, float]
    series_instance_uid: str
    modality: str = ""
    series_description: str = ""
    slice_thickness: float | None = None
    number_of_instances: int = 0
    corrections: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_class_uid: str = ""

    def __post_init__(self) -> None:
        if self.hu.ndim != 3 or self.hu.dtype != np.float32:
            raise ValueError("a volume needs a 3-D float32 array")
        hu = self.hu.view()
        hu.setflags(write=False)
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError("a volume needs a 4x4 affine")
        affine.setflags(write=False)
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        s, r, c = self.hu.shape
        return s, r, c

    def array_to_patient(self, index: npt.ArrayLike) -> FloatArray:
        """Patient LPS mm of continuous array indices ``(..., 3)`` given as (slice, row, col)."""
        ijk = np.asarray(index, dtype=np.float64)[..., ::-1]
        return np.asarray(ijk @ self.affine[:3, :3].T + self.affine[:3, 3], dtype=np.float64)

    def patient_to_array(self, points_lps: npt.ArrayLike) -> FloatArray:
        """Continuous array indices (slice, row, col) ``(..., 3)`` of patient LPS mm points."""
        pts = np.asarray(points_lps, dtype=np.float64) - self.affine[:3, 3]
        ijk = pts @ np.linalg.inv(self.affine[:3, :3]).T
        return np.asarray(ijk[..., ::-1], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class SeriesOnDisk:
    """The files of one series found in a study folder, and the header of its first image.

    ``header`` is read without pixel data from the instance with the lowest InstanceNumber;
    ``number_of_images`` sums NumberOfFrames over the instances.
    """

    series_instance_uid: str
    paths: tuple[Path, ...]
    header: Dataset
    number_of_images: int


@dataclass
class _Frame:
    """One image plane: where it lies and how its stored values become HU."""

    source: int  # index of its dataset
    frame: int | None  # frame number in a multi-frame dataset
    order_key: tuple[int, int]  # (InstanceNumber, frame): which duplicate is kept
    position: FloatArray
    orientation: FloatArray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    thickness: float | None
    slope: float
    intercept: float
    rescaled: bool  # False when the header had no rescale attributes


# --------------------------------------------------------------------------------------------
# Finding and reading files


def series_files(source: Path | Iterable[Path]) -> list[Path]:
    """The files of a series: every regular, non-hidden file of a folder, or the paths given."""
    if isinstance(source, Path):
        if not source.is_dir():
            raise ImagingError(f"{source} is not a folder")
        return sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    return [Path(p) for p in source]


def find_series(study_dir: Path) -> list[SeriesOnDisk]:
    """The series of a study folder (any layout: the spool's, the synthetic cohort's, ...).

    Reads every non-hidden file's header; files that are not DICOM (a manifest, a PNG) are
    skipped. Series are returned by SeriesNumber, then UID.
    """
    if not study_dir.is_dir():
        raise ImagingError(f"{study_dir} is not a folder")
    groups: dict[str, list[tuple[tuple[int, str], Path, Dataset]]] = {}
    for path in sorted(study_dir.rglob("*")):
        relative = path.relative_to(study_dir).parts
        if not path.is_file() or any(part.startswith(".") for part in relative):
            continue
        try:
            header = dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # tolerant when reading: not DICOM, or damaged
            logger.debug("skipped %s: %s", path.name, exc)
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "")
        if not uid:
            logger.warning("skipped %s: no SeriesInstanceUID", path.name)
            continue
        key = (_int(header.get("InstanceNumber")), path.name)
        groups.setdefault(uid, []).append((key, path, header))
    found = []
    for uid, members in groups.items():
        members.sort(key=lambda m: m[0])
        images = sum(max(1, _int(m[2].get("NumberOfFrames"), 1)) for m in members)
        found.append(SeriesOnDisk(uid, tuple(m[1] for m in members), members[0][2], images))
    found.sort(key=lambda s: (_int(s.header.get("SeriesNumber")), s.series_instance_uid))
    return found


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ImagingError(f"{path.name}: not a readable DICOM file ({exc})") from exc


# --------------------------------------------------------------------------------------------
# Frames: geometry and rescaling of each image plane


def _floats(container: Dataset, keyword: str, count: int, where: str) -> FloatArray:
    value = container.get(keyword)
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        numbers = np.zeros(0)
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise ImagingError(f"{where}: {keyword} is missing or not {count} numbers")
    return numbers


def _number(container: Dataset | None, keyword: str) -> float | None:
    if container is None:
        return None
    value = container.get(keyword)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _functional_group(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The first item of a functional group macro for ``frame``: per-frame, else shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        group = per_frame[frame].get(keyword)
        if group:
            item: Dataset = group[0]
            return item
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        group = shared[0].get(keyword)
        if group:
            item = group[0]
            return item
    return None


def _frames_of(ds: Dataset, source: int, name: str, *, pixels: bool = True) -> list[_Frame]:
    if pixels and "PixelData" not in ds:
        sop = ds.get("SOPClassUID")
        kind = getattr(sop, "name", None) or str(sop or "unknown SOP class")
        raise ImagingError(f"{name}: no pixel data ({kind})")
    if _int(ds.get("SamplesPerPixel"), 1) != 1:
        raise ImagingError(f"{name}: not a greyscale image (SamplesPerPixel {ds.SamplesPerPixel})")
    rows, columns = _int(ds.get("Rows")), _int(ds.get("Columns"))
    if rows < 1 or columns < 1:
        raise ImagingError(f"{name}: Rows and Columns are missing")
    count = max(1, _int(ds.get("NumberOfFrames"), 1))
    instance = _int(ds.get("InstanceNumber"))
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if not enhanced:
        if count > 1:
            raise ImagingError(f"{name}: {count} frames but no functional groups to place them")
        slope, intercept = _number(ds, "RescaleSlope"), _number(ds, "RescaleIntercept")
        return [
            _Frame(
                source=source,
                frame=None,
                order_key=(instance, 0),
                position=_floats(ds, "ImagePositionPatient", 3, name),
                orientation=_floats(ds, "ImageOrientationPatient", 6, name),
                pixel_spacing=_spacing(_floats(ds, "PixelSpacing", 2, name)),
                rows=rows,
                columns=columns,
                thickness=_number(ds, "SliceThickness"),
                slope=1.0 if slope is None else slope,
                intercept=0.0 if intercept is None else intercept,
                rescaled=slope is not None or intercept is not None,
            )
        ]
    frames = []
    for f in range(count):
        where = f"{name} frame {f + 1}"
        position = _functional_group(ds, f, "PlanePositionSequence")
        orientation = _functional_group(ds, f, "PlaneOrientationSequence")
        measures = _functional_group(ds, f, "PixelMeasuresSequence")
        transform = _functional_group(ds, f, "PixelValueTransformationSequence")
        if position is None or orientation is None or measures is None:
            raise ImagingError(
                f"{where}: PlanePosition, PlaneOrientation or PixelMeasures functional group "
                "is missing"
            )
        slope = _number(transform, "RescaleSlope")
        intercept = _number(transform, "RescaleIntercept")
        if slope is None and intercept is None:
            slope, intercept = _number(ds, "RescaleSlope"), _number(ds, "RescaleIntercept")
        frames.append(
            _Frame(
                source=source,
                frame=f,
                order_key=(instance, f),
                position=_floats(position, "ImagePositionPatient", 3, where),
                orientation=_floats(orientation, "ImageOrientationPatient", 6, where),
                pixel_spacing=_spacing(_floats(measures, "PixelSpacing", 2, where)),
                rows=rows,
                columns=columns,
                thickness=_number(measures, "SliceThickness"),
                slope=1.0 if slope is None else slope,
                intercept=0.0 if intercept is None else intercept,
                rescaled=slope is not None or intercept is not None,
            )
        )
    return frames


def _spacing(values: FloatArray) -> tuple[float, float]:
    row, col = float(values[0]), float(values[1])
    if row <= 0 or col <= 0:
        raise ImagingError(f"PixelSpacing {row}\\{col} is not positive")
    return row, col


def _check_consistent(frames: Sequence[_Frame]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Refuse a series whose images do not form one stack; return row, column and normal."""
    first = frames[0]
    for frame in frames[1:]:
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise ImagingError(
                f"images of different sizes in one series ({first.rows}x{first.columns} and "
                f"{frame.rows}x{frame.columns}); refusing to stack them"
            )
        if np.max(np.abs(frame.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise ImagingError(
                "inconsistent image orientations in one series "
                f"({_fmt(first.orientation)} and {_fmt(frame.orientation)}); refusing to stack"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-3, atol=1e-4):
            raise ImagingError(
                f"different pixel spacings in one series ({_fmt(first.pixel_spacing)} and "
                f"{_fmt(frame.pixel_spacing)} mm); refusing to stack them"
            )
    row, col = first.orientation[:3], first.orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 0.01
        or abs(np.linalg.norm(col) - 1) > 0.01
        or abs(float(row @ col)) > 0.01
    ):
        raise ImagingError(
            f"ImageOrientationPatient {_fmt(first.orientation)} is not two orthogonal unit vectors"
        )
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    normal = np.asarray(np.cross(row, col), dtype=np.float64)
    return row, col, normal


def _fmt(values: Iterable[float]) -> str:
    return "\\".join(f"{float(v):.4g}" for v in values)


# --------------------------------------------------------------------------------------------
# Pixels


def _padding(ds: Dataset) -> tuple[int, int] | None:
    """The stored-value range PixelPaddingValue (and PixelPaddingRangeLimit) mark as padding."""
    value, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
    if value is None or value == "":
        return None
    signed = _int(ds.get("PixelRepresentation")) == 1
    bits = _int(ds.get("BitsAllocated"), 16)

    def as_stored(v: Any) -> int:
        number = int(v)
        # An ambiguous US/SS value read as unsigned stands for a negative stored value.
        if signed and number >= 2 ** (bits - 1):
            number -= 2**bits
        return number

    low = as_stored(value)
    high = low if limit is None or limit == "" else as_stored(limit)
    return min(low, high), max(low, high)


def _decode(
    frames: Sequence[_Frame],
    datasets: Sequence[Dataset],
    names: Sequence[str],
    factors: tuple[int, int] = (1, 1),
) -> HUVolume:
    """The frames, in the order given, in HU; padding and anything below air become air.

    With ``factors`` (rows, columns) above 1, each image is block-averaged as it is decoded.
    """
    from pydicom.pixels.utils import pixel_array

    from scanet_node.imaging.brain import block_reduce

    first = frames[0]
    fr, fc = factors
    reduce = fr > 1 or fc > 1
    out = np.empty((len(frames), first.rows // fr, first.columns // fc), dtype=np.float32)
    full = np.empty((1, first.rows, first.columns), dtype=np.float32) if reduce else None
    paddings = {i: _padding(ds) for i, ds in enumerate(datasets)}
    remaining = Counter(frame.source for frame in frames)
    for k, frame in enumerate(frames):
        ds = datasets[frame.source]
        try:
            stored = pixel_array(ds, index=frame.frame)
        except Exception as exc:  # the decoders raise many kinds; name the file and syntax
            syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
            kind = getattr(syntax, "name", str(syntax))
            raise ImagingError(
                f"{names[frame.source]}: cannot decode pixel data ({kind}): {exc}"
            ) from exc
        if stored.shape != (first.rows, first.columns):
            raise ImagingError(
                f"{names[frame.source]}: decoded {stored.shape}, expected "
                f"{(first.rows, first.columns)}"
            )
        if full is None:
            _to_hu(stored, frame, paddings[frame.source], out[k])
        else:
            _to_hu(stored, frame, paddings[frame.source], full[0])
            out[k] = block_reduce(full, (1, fr, fc))[0]
        remaining[frame.source] -= 1
        if not remaining[frame.source]:
            del ds.PixelData  # our own copy: frees the encoded bytes as we go
    return out


def _to_hu(
    stored: npt.NDArray[Any],
    frame: _Frame,
    pad: tuple[int, int] | None,
    image: npt.NDArray[np.float32],
) -> None:
    """Stored values into ``image`` in HU; padding and anything below air become air."""
    air = np.float32(AIR_HU)
    # Two passes over the image where the usual slope of 1 allows (not four).
    if frame.slope != 1.0:
        np.multiply(stored, np.float32(frame.slope), out=image, casting="unsafe")
        if frame.intercept != 0.0:
            image += np.float32(frame.intercept)
    else:
        np.add(stored, np.float32(frame.intercept), out=image, casting="unsafe")
    if pad is not None:
        image[(stored >= pad[0]) & (stored <= pad[1])] = air
    np.maximum(image, air, out=image)


@dataclass(frozen=True, eq=False)
class Plane:
    """One acquired image as the scanner placed it: the instance, and the frame of it.

    What an overlay of that image must match, whatever :func:`load_series` corrected (tilt,
    order, spacing, gaps) on the way to its regular grid.
    """

    _frame: _Frame

    @property
    def instance(self) -> int:
        """Index of its dataset among those given to :func:`planes`."""
        return self._frame.source

    @property
    def frame(self) -> int | None:
        """Frame number in a multi-frame instance (0-based), else None."""
        return self._frame.frame

    @property
    def position(self) -> FloatArray:
        """ImagePositionPatient: LPS mm of the first pixel's centre."""
        return self._frame.position

    @property
    def row_direction(self) -> FloatArray:
        """Unit vector along a row (increasing column index)."""
        row = self._frame.orientation[:3]
        return np.asarray(row / np.linalg.norm(row), dtype=np.float64)

    @property
    def column_direction(self) -> FloatArray:
        """Unit vector down a column (increasing row index)."""
        col = self._frame.orientation[3:]
        return np.asarray(col / np.linalg.norm(col), dtype=np.float64)

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(between rows, between columns) mm."""
        return self._frame.pixel_spacing

    @property
    def rows(self) -> int:
        return self._frame.rows

    @property
    def columns(self) -> int:
        return self._frame.columns

    @property
    def normal(self) -> FloatArray:
        """Unit normal of the image plane (row x column direction)."""
        n = np.cross(self.row_direction, self.column_direction)
        return np.asarray(n / np.linalg.norm(n), dtype=np.float64)

    def distance(self, point_lps: npt.ArrayLike) -> float:
        """Signed distance in mm of a patient LPS point from the image plane."""
        offset = np.asarray(point_lps, dtype=np.float64) - self.position
        return float(offset @ self.normal)

    def pixel_positions(self) -> FloatArray:
        """Patient LPS mm of every pixel's centre, ``(rows, columns, 3)``."""
        dr, dc = self.pixel_spacing
        r = np.arange(self.rows, dtype=np.float64)[:, None, None] * dr * self.column_direction
        c = np.arange(self.columns, dtype=np.float64)[None, :, None] * dc * self.row_direction
        return np.asarray(self.position + r + c, dtype=np.float64)

    def hu(self, ds: Dataset) -> npt.NDArray[np.float32]:
        """This image's pixels in HU, from its dataset read with pixel data (as
        :func:`load_series` converts them: rescale, padding and anything below air to air)."""
        from pydicom.pixels.utils import pixel_array

        if "PixelData" not in ds:
            raise ImagingError("the instance was read without its pixel data")
        stored = pixel_array(ds, index=self.frame)
        if stored.shape != (self.rows, self.columns):
            raise ImagingError(f"decoded {stored.shape}, expected {(self.rows, self.columns)}")
        out = np.empty((self.rows, self.columns), dtype=np.float32)
        _to_hu(stored, self._frame, _padding(ds), out)
        return out


def planes(headers: Sequence[Dataset]) -> list[Plane]:
    """Every acquired image plane of a series' instances (headers without pixel data do)."""
    return [
        Plane(frame)
        for i, ds in enumerate(headers)
        for frame in _frames_of(
            ds, i, str(ds.get("SOPInstanceUID", "") or f"instance {i}"), pixels=False
        )
    ]


# --------------------------------------------------------------------------------------------
# Geometry


def _drop_duplicates(
    frames: list[_Frame], d: FloatArray
) -> tuple[list[_Frame], FloatArray, str | None]:
    """Keep one frame per position along the normal (the lowest InstanceNumber)."""
    gaps = np.diff(d)
    positive = gaps[gaps > 0.01]
    typical = float(np.median(positive)) if positive.size else 0.0
    threshold = max(0.01, DUPLICATE_FRACTION * typical)
    keep = [0]
    dropped: list[float] = []
    for i in range(1, len(frames)):
        if d[i] - d[keep[-1]] < threshold:
            dropped.append(float(frames[i].position[2]))
        else:
            keep.append(i)
    if not dropped:
        return frames, d, None
    where = ", ".join(f"z={z:.2f}" for z in dropped[:3]) + (" ..." if len(dropped) > 3 else "")
    note = (
        f"{len(dropped)} duplicate slice position(s) ({where} mm): kept one image per "
        "position, the lowest InstanceNumber"
    )
    return [frames[i] for i in keep], d[keep], note


def _align_in_plane(
    hu: HUVolume,
    positions: FloatArray,
    d: FloatArray,
    row: FloatArray,
    col: FloatArray,
    pixel_spacing: tuple[float, float],
) -> tuple[HUVolume, FloatArray, str | None]:
    """Shift each slice within its plane so that all slices share one orthogonal grid.

    Returns the (possibly larger) volume, the patient position of its first voxel relative to
    the first slice's ImagePositionPatient, and a note when anything moved.
    """
    dr, dc = pixel_spacing
    relative = positions - positions[0]
    shift_r = relative @ col / dr  # slice k's row 0 lies at this row of slice 0's grid
    shift_c = relative @ row / dc
    if max(np.ptp(shift_r), np.ptp(shift_c)) <= SHEAR_TOLERANCE_PX:
        return hu, np.zeros(3), None
    from scipy import ndimage

    # The grid grows by whole pixels so that the first slice keeps its own (no resampling).
    low_r = math.floor(float(shift_r.min()) + 1e-6)
    low_c = math.floor(float(shift_c.min()) + 1e-6)
    rows = math.ceil(hu.shape[1] - 1 + float(shift_r.max()) - low_r - 1e-6) + 1
    cols = math.ceil(hu.shape[2] - 1 + float(shift_c.max()) - low_c - 1e-6) + 1
    out = np.empty((hu.shape[0], rows, cols), dtype=np.float32)
    padded = np.full((rows, cols), AIR_HU, dtype=np.float32)
    for k in range(hu.shape[0]):
        padded[-low_r : -low_r + hu.shape[1], -low_c : -low_c + hu.shape[2]] = hu[k]
        ndimage.shift(
            padded, (shift_r[k], shift_c[k]), output=out[k], order=1, mode="constant", cval=AIR_HU
        )
    origin = low_c * dc * row + low_r * dr * col
    offsets_mm = np.hypot(shift_r * dr, shift_c * dc)
    along = d - d[0]
    # A gantry tilt shears the stack: the offsets grow in proportion to the distance along
    # the normal.
    scale = float(along @ along)
    slope_r = float(along @ (shift_r * dr)) / scale if scale > 0 else 0.0
    slope_c = float(along @ (shift_c * dc)) / scale if scale > 0 else 0.0
    residual = max(
        float(np.max(np.abs(shift_r * dr - slope_r * along))) / dr,
        float(np.max(np.abs(shift_c * dc - slope_c * along))) / dc,
    )
    grid = f"{hu.shape[1]}x{hu.shape[2]} -> {rows}x{cols} pixels"
    if residual <= 0.5:
        tilt = math.degrees(math.atan(math.hypot(slope_r, slope_c)))
        note = (
            f"corrected gantry tilt of {tilt:.1f} deg: slices shifted in plane by up to "
            f"{float(offsets_mm.max()):.1f} mm onto an orthogonal grid ({grid})"
        )
    else:
        note = (
            f"realigned slices with irregular in-plane offsets of up to "
            f"{float(offsets_mm.max()):.1f} mm onto one grid ({grid})"
        )
    return out, origin, note


def _regularize(
    hu: HUVolume, d: FloatArray, z: FloatArray
) -> tuple[HUVolume, float, list[str], list[str]]:
    """Resample along the normal when the spacing is uneven or slices are missing.

    ``d`` is each slice's position along the normal, ``z`` its patient z (for messages).
    Returns the volume, its slice spacing, corrections and problems.
    """
    count = len(d)
    gaps = np.diff(d)
    median = float(np.median(gaps))
    ratio = gaps / median
    missing = np.flatnonzero(ratio >= MISSING_RATIO)
    # Many large gaps are a change of spacing, not lost images.
    if missing.size > max(2, 0.05 * gaps.size):
        missing = np.zeros(0, dtype=np.intp)
    regular = np.delete(gaps, missing)
    tolerance = max(0.02, SPACING_TOLERANCE * median)
    uneven = bool(np.any(np.abs(regular - median) > tolerance))
    if not missing.size and not uneven:
        return hu, float(d[-1] - d[0]) / (count - 1), [], []
    corrections: list[str] = []
    problems: list[str] = []
    if uneven:
        corrections.append(
            f"uneven slice spacing ({float(gaps.min()):.2f} to {float(gaps.max()):.2f} mm): "
            f"resampled to the median spacing {median:.3g} mm"
        )
    for i in missing:
        lost = round(float(ratio[i])) - 1
        between = f"between z={float(z[i]):.2f} and z={float(z[i + 1]):.2f} mm"
        if lost <= 1:
            corrections.append(f"missing slice {between}: filled by interpolation")
        else:
            problems.append(
                f"{lost} slices missing {between} (gap {float(gaps[i]):.1f} mm, spacing "
                f"{median:.3g} mm): interpolated across, not to be trusted"
            )
    slices = round(float(d[-1] - d[0]) / median) + 1
    target = np.linspace(float(d[0]), float(d[-1]), slices)
    below = np.clip(np.searchsorted(d, target, side="right") - 1, 0, count - 2)
    weight = (target - d[below]) / (d[below + 1] - d[below])
    out = np.empty((slices, hu.shape[1], hu.shape[2]), dtype=np.float32)
    for j in range(slices):
        w, lower = float(weight[j]), int(below[j])
        if w < 1e-3:
            out[j] = hu[lower]
        elif w > 1 - 1e-3:
            out[j] = hu[lower + 1]
        else:
            np.multiply(hu[lower], np.float32(1 - w), out=out[j])
            out[j] += np.float32(w) * hu[lower + 1]
    return out, float(d[-1] - d[0]) / (slices - 1), corrections, problems


# --------------------------------------------------------------------------------------------
# The entry point


def _series_uid(datasets: Sequence[Dataset]) -> str:
    """The one Series Instance UID of ``datasets``; ImagingError when there are several."""
    uids = sorted({str(ds.get("SeriesInstanceUID", "") or "") for ds in datasets})
    if len(uids) > 1:
        raise ImagingError(f"the files belong to {len(uids)} series; load one series at a time")
    return uids[0]


def _stack(
    datasets: Sequence[Dataset], names: Sequence[str]
) -> tuple[list[_Frame], FloatArray, tuple[FloatArray, FloatArray, FloatArray], str | None]:
    """Every frame, checked to form one stack, sorted along the normal, duplicates dropped.

    Returns the frames, their positions along the normal, the (row, column, normal)
    directions and the correction that says which duplicates were dropped.
    """
    frames = [f for i, ds in enumerate(datasets) for f in _frames_of(ds, i, names[i])]
    axes = _check_consistent(frames)
    normal = axes[2]
    d_all = np.array([f.position @ normal for f in frames])
    order = sorted(range(len(frames)), key=lambda i: (d_all[i], frames[i].order_key))
    kept, d, duplicates = _drop_duplicates([frames[i] for i in order], d_all[order])
    return kept, d, axes, duplicates


def _decode_blocks(
    frames: Sequence[_Frame],
    datasets: Sequence[Dataset],
    names: Sequence[str],
    row: FloatArray,
    col: FloatArray,
    max_pixel_mm: float | None,
) -> tuple[HUVolume, FloatArray, tuple[float, float]]:
    """The frames in HU, block-averaged to pixels of at most ``max_pixel_mm`` when given.

    Returns the volume, each slice's patient position (of its first block's centre) and the
    pixel spacing after averaging.
    """
    positions = np.array([f.position for f in frames])
    pixel_spacing = frames[0].pixel_spacing
    factors = (1, 1)
    if max_pixel_mm is not None:
        from scanet_node.imaging.brain import block_factors

        factors = block_factors((1.0, *pixel_spacing), max_pixel_mm)[1:]  # type: ignore[assignment]
    hu = _decode(frames, datasets, names, factors)
    if factors != (1, 1):
        dr, dc = pixel_spacing
        fr, fc = factors
        # A block's value lies at its centre: (f - 1) / 2 pixels into it.
        positions = positions + row * dc * (fc - 1) / 2 + col * dr * (fr - 1) / 2
        pixel_spacing = (dr * fr, dc * fc)
    return hu, positions, pixel_spacing


def _along_normal(
    hu: HUVolume,
    d: FloatArray,
    positions: FloatArray,
    frames: Sequence[_Frame],
    header: Dataset,
) -> tuple[HUVolume, float, list[str], list[str]]:
    """The volume with even slice spacing (:func:`_regularize`), its spacing, corrections and
    problems; a single slice keeps the spacing its header gives (or its thickness, or 1 mm).
    """
    if len(frames) > 1:
        return _regularize(hu, d, positions[:, 2])
    return hu, _number(header, "SpacingBetweenSlices") or frames[0].thickness or 1.0, [], []


def _affine(
    row_step: FloatArray, col_step: FloatArray, slice_step: FloatArray, origin: FloatArray
) -> FloatArray:
    """The voxel -> patient (LPS, mm) matrix from the steps along each array axis."""
    affine = np.eye(4)
    affine[:3, 0] = row_step
    affine[:3, 1] = col_step
    affine[:3, 2] = slice_step
    affine[:3, 3] = origin
    return affine


def load_series(source: Path | Iterable[Path], *, max_pixel_mm: float | None = None) -> Volume:
    """Load one series (a folder of its files, or their paths) as a :class:`Volume` in HU.

    With ``max_pixel_mm``, each image is block-averaged as it is decoded, by whole pixels, to
    pixels of at most that size (a 512 x 512 CTA at 0.43 mm to 256 x 256 for 1 mm): what a
    resampling to a coarser grid does first anyway, at a quarter of the memory.

    Raises :class:`ImagingError` when no file is given, a file is not readable DICOM or has no
    pixels that can be decoded, the files belong to more than one series, or the images do not
    form one stack (orientations, sizes or pixel spacings differ).
    """
    started = time.perf_counter()
    paths = series_files(source)
    if not paths:
        raise ImagingError(f"no files in the series ({source})")
    datasets = [_read(p) for p in paths]
    names = [p.name for p in paths]
    uid = _series_uid(datasets)
    frames, d, (row, col, normal), duplicates = _stack(datasets, names)
    corrections = [duplicates] if duplicates else []
    problems: list[str] = []
    if not all(f.rescaled for f in frames):
        problems.append("no RescaleSlope/RescaleIntercept: stored values taken as HU")
    hu, positions, pixel_spacing = _decode_blocks(frames, datasets, names, row, col, max_pixel_mm)
    hu, origin_shift, aligned = _align_in_plane(hu, positions, d, row, col, pixel_spacing)
    if aligned:
        corrections.append(aligned)
    header = datasets[frames[0].source]
    hu, slice_spacing, fixed, found = _along_normal(hu, d, positions, frames, header)
    corrections.extend(fixed)
    problems.extend(found)
    dr, dc = pixel_spacing
    volume = Volume(
        hu=hu,
        affine=_affine(row * dc, col * dr, normal * slice_spacing, positions[0] + origin_shift),
        spacing=(slice_spacing, dr, dc),
        series_instance_uid=uid,
        modality=str(header.get("Modality", "") or ""),
        series_description=str(header.get("SeriesDescription", "") or ""),
        slice_thickness=frames[0].thickness,
        number_of_instances=len(paths),
        corrections=tuple(corrections),
        problems=tuple(problems),
        study_instance_uid=str(header.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "") or ""),
        sop_class_uid=str(header.get("SOPClassUID", "") or ""),
    )
    logger.info(
        "series loaded: %d files, %s voxels, %d corrections, %d problems, %.2f s",
        len(paths),
        "x".join(str(n) for n in volume.shape),
        len(corrections),
        len(problems),
        time.perf_counter() - started,
        extra={"series_uid": volume.series_instance_uid},
    )
    return volume
