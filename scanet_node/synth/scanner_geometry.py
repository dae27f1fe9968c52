"""Scanner geometry of the synthetic studies: head pose and series grids.

Template space is MNI152 mm, RAS (+x the subject's right, +y anterior, +z superior). DICOM patient
space is LPS mm (+x the patient's left, +y posterior, +z head). ``F = diag(-1, -1, 1)`` maps one
onto the other, and a head pose is the rigid motion of the head in the scanner,
``p_LPS = R @ (F @ m) + t``: a rotation about the MNI origin, then a shift.

A series is a stack of image planes placed the way a scanner places them (axial, or tilted with
the gantry, centred on the head, covering it from the skull base or the upper neck to the vertex).
The images on these planes are rendered by :mod:`scanet_node.synth.scanner_render`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: RAS (MNI) to LPS (DICOM patient) axes.
RAS_TO_LPS: Final = np.diag([-1.0, -1.0, 1.0])

# The head of the MNI152 2009a pseudo-CT (anatomy.py) as the scanner operator sees it: an
# ellipsoid around its scalp (x +-87, y -122..89, vertex z 97), the lowest points of the brain
# (foramen magnum, cerebellum, temporal poles, gyrus rectus) a few mm below which a head CT
# starts, and the upper neck (C2) where a head-and-neck CTA of the intracranial vessels starts.
HEAD_CENTER_MNI: Final = (0.0, -17.0, 0.0)
HEAD_SEMI_AXES_MM: Final = (87.0, 105.5, 98.0)
SKULL_BASE_MNI: Final = (
    (0.0, -45.0, -74.0),
    (32.0, -65.0, -66.0),
    (-32.0, -65.0, -66.0),
    (28.0, -85.0, -56.0),
    (-28.0, -85.0, -56.0),
    (37.0, -5.0, -54.0),
    (-37.0, -5.0, -54.0),
    (37.0, 25.0, -47.0),
    (-37.0, 25.0, -47.0),
    (0.0, 55.0, -32.0),
)
UPPER_NECK_MNI: Final = (
    (0.0, -20.0, -90.0),
    (20.0, -20.0, -90.0),
    (-20.0, -20.0, -90.0),
    (0.0, 0.0, -90.0),
    (0.0, -40.0, -90.0),
)

NCCT_SLICE_MM: Final = 5.0
# Fields of view wide enough that the circle never cuts the scalp above the skull base (the head
# reaches 111 mm from its centre axis at the worst pose); the neck may be cut, as on real CTAs.
NCCT_FOV_MM: Final = (228.0, 250.0)  # 0.445-0.488 mm pixels at 512
CTA_FOV_MM: Final = (228.0, 256.0)  # 0.445-0.5 mm pixels at 512
CENTRING_MM: Final = 2.0  # the operator centres the head within this, in x and y
CTA_SLICE_CHOICES_MM: Final = (0.5, 0.625, 0.75, 1.0, 1.25)
SMALL_CTA_SLICE_MM: Final = 2.5
FULL_MATRIX: Final = 512
SMALL_MATRIX: Final = 128
LOCALIZER_FOV_MM: Final = 256.0
LOCALIZER_CENTER_MNI: Final = (0.0, -17.0, -10.0)  # head and upper neck in a 256 mm square


# --------------------------------------------------------------------------------------------
# Head pose


def _rotation_from_vector(rotvec: Sequence[float] | FloatArray) -> FloatArray:
    """Rotation matrix of a rotation vector (axis times angle in radians), Rodrigues' formula."""
    v = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    rotation = np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * (cross @ cross)
    return np.asarray(rotation, dtype=np.float64)


def _rotation_from_euler(pitch_deg: float, roll_deg: float, yaw_deg: float) -> FloatArray:
    """``Rz(yaw) @ Ry(roll) @ Rx(pitch)``, about the LPS axes x (left), y (posterior), z (head)."""
    a, b, c = (math.radians(v) for v in (pitch_deg, roll_deg, yaw_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def _uniform_in_ball(rng: np.random.Generator, scales: FloatArray) -> FloatArray:
    """A point drawn uniformly in the ellipsoid of semi-axes ``scales`` (rejection sampling)."""
    while True:
        unit = rng.uniform(-1.0, 1.0, 3)
        if float(unit @ unit) <= 1.0:
            return np.asarray(unit * scales, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Pose:
    """Rigid pose of the head in the scanner: ``p_LPS = rotation @ (F @ m_MNI) + translation``.

    The rotation acts about the MNI origin, in LPS axes; the translation is in mm. Both are
    stored as read-only float64 arrays.
    """

    rotation: FloatArray
    translation: FloatArray

    def __post_init__(self) -> None:
        rotation = np.array(self.rotation, dtype=np.float64)
        translation = np.array(self.translation, dtype=np.float64).reshape(-1)
        if rotation.shape != (3, 3) or translation.shape != (3,):
            raise ValueError("a pose needs a 3x3 rotation and a 3-vector translation")
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6):
            raise ValueError("the rotation of a pose must be orthonormal")
        if np.linalg.det(rotation) <= 0:
            raise ValueError("the rotation of a pose must not mirror")
        rotation.setflags(write=False)
        translation.setflags(write=False)
        object.__setattr__(self, "rotation", rotation)
        object.__setattr__(self, "translation", translation)

    @classmethod
    def identity(cls) -> Pose:
        """The head exactly in template position (MNI origin at the LPS origin)."""
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_euler(
        cls,
        pitch_deg: float,
        roll_deg: float,
        yaw_deg: float,
        translation: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> Pose:
        """A pose from angles about the LPS axes, applied pitch (x), then roll (y), then yaw (z).

        Pitch nods the head (flexion/extension), roll tilts it toward a shoulder, yaw turns it.
        """
        return cls(_rotation_from_euler(pitch_deg, roll_deg, yaw_deg), np.asarray(translation))

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        max_angle_deg: float = 15.0,
        max_shift_mm: float = 20.0,
    ) -> Pose:
        """A plausible head position on the table.

        The rotation vector is drawn uniformly in an ellipsoid whose pitch semi-axis is
        ``max_angle_deg`` and whose roll and yaw semi-axes are 60% of it (heads in a head
        holder nod more than they turn), so the total rotation never exceeds ``max_angle_deg``.
        The shift is drawn uniformly in a ball of radius ``max_shift_mm``.
        """
        if max_angle_deg < 0 or max_shift_mm < 0:
            raise ValueError("pose bounds must not be negative")
        scales = np.radians(max_angle_deg) * np.array([1.0, 0.6, 0.6])
        rotvec = _uniform_in_ball(rng, scales)
        shift = _uniform_in_ball(rng, np.full(3, float(max_shift_mm)))
        return cls(_rotation_from_vector(rotvec), shift)

    @property
    def mni_to_patient(self) -> FloatArray:
        """4x4 homogeneous matrix from MNI mm (RAS) to patient mm (LPS)."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.rotation @ RAS_TO_LPS
        matrix[:3, 3] = self.translation
        return matrix

    @property
    def patient_to_mni(self) -> FloatArray:
        """4x4 homogeneous matrix from patient mm (LPS) to MNI mm (RAS)."""
        linear = RAS_TO_LPS @ self.rotation.T
        matrix = np.eye(4)
        matrix[:3, :3] = linear
        matrix[:3, 3] = -linear @ self.translation
        return matrix

    def to_patient(self, points_mni: npt.ArrayLike) -> FloatArray:
        """Patient (LPS) mm of MNI points ``(..., 3)``."""
        m = self.mni_to_patient
        pts = np.asarray(points_mni, dtype=np.float64)
        return np.asarray(pts @ m[:3, :3].T + m[:3, 3], dtype=np.float64)

    def to_mni(self, points_lps: npt.ArrayLike) -> FloatArray:
        """MNI mm of patient (LPS) points ``(..., 3)``."""
        m = self.patient_to_mni
        pts = np.asarray(points_lps, dtype=np.float64)
        return np.asarray(pts @ m[:3, :3].T + m[:3, 3], dtype=np.float64)

    @property
    def angle_deg(self) -> float:
        """Total rotation angle in degrees."""
        cos = (float(np.trace(self.rotation)) - 1.0) / 2.0
        return math.degrees(math.acos(min(1.0, max(-1.0, cos))))

    def euler_deg(self) -> tuple[float, float, float]:
        """(pitch, roll, yaw) in degrees, the inverse of :meth:`from_euler`."""
        r = self.rotation
        roll = math.asin(max(-1.0, min(1.0, -float(r[2, 0]))))
        pitch = math.atan2(float(r[2, 1]), float(r[2, 2]))
        yaw = math.atan2(float(r[1, 0]), float(r[0, 0]))
        return math.degrees(pitch), math.degrees(roll), math.degrees(yaw)

    def as_dict(self) -> dict[str, Any]:
        """The pose for a JSON manifest."""
        pitch, roll, yaw = self.euler_deg()
        return {
            "convention": "p_LPS = R @ (diag(-1,-1,1) @ m_MNI) + t; R = Rz(yaw) Ry(roll) Rx(pitch)",
            "rotation": np.round(self.rotation, 8).tolist(),
            "translation_mm": np.round(self.translation, 4).tolist(),
            "pitch_deg": round(pitch, 4),
            "roll_deg": round(roll, 4),
            "yaw_deg": round(yaw, 4),
            "angle_deg": round(self.angle_deg, 4),
            "mni_to_patient": np.round(self.mni_to_patient, 8).tolist(),
        }


# --------------------------------------------------------------------------------------------
# Series geometry


@dataclass(frozen=True)
class SeriesGeometry:
    """Where the images of one series lie, in DICOM terms.

    ``positions`` are the ImagePositionPatient (centre of the first pixel) of each slice, bottom
    up, evenly spaced; ``pixel_spacing`` is DICOM's (between rows, between columns). With a
    gantry tilt the planes are tilted but the positions step along z (table motion), so the
    volume is sheared. ``noise_hu`` is the standard deviation of the noise the renderer adds.
    """

    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    slice_thickness: float
    spacing_between_slices: float
    image_orientation: tuple[float, float, float, float, float, float]
    positions: tuple[tuple[float, float, float], ...]
    gantry_tilt_deg: float = 0.0
    noise_hu: float = 0.0

    def __post_init__(self) -> None:
        if self.rows < 1 or self.columns < 1 or not self.positions:
            raise ValueError("a series needs at least one slice of at least one pixel")
        if len(self.image_orientation) != 6 or any(len(p) != 3 for p in self.positions):
            raise ValueError("image orientation needs 6 values and each position 3")
        if min(self.pixel_spacing) <= 0 or self.slice_thickness <= 0:
            raise ValueError("pixel spacing and slice thickness must be positive")

    @property
    def number_of_slices(self) -> int:
        """How many slices the series has."""
        return len(self.positions)

    @property
    def row_direction(self) -> FloatArray:
        """Patient direction along a row (increasing column index)."""
        return np.asarray(self.image_orientation[:3], dtype=np.float64)

    @property
    def column_direction(self) -> FloatArray:
        """Patient direction along a column (increasing row index)."""
        return np.asarray(self.image_orientation[3:], dtype=np.float64)

    @property
    def normal(self) -> FloatArray:
        """Unit normal of the image planes (row x column direction)."""
        n = np.cross(self.row_direction, self.column_direction)
        return np.asarray(n / np.linalg.norm(n), dtype=np.float64)

    @property
    def reconstruction_diameter(self) -> float:
        """Diameter of the reconstruction circle, mm (the width of the image)."""
        return float(min(self.rows * self.pixel_spacing[0], self.columns * self.pixel_spacing[1]))

    @property
    def slice_step(self) -> FloatArray:
        """Patient mm from one slice position to the next."""
        if self.number_of_slices > 1:
            first, second = (np.asarray(p, dtype=np.float64) for p in self.positions[:2])
            return np.asarray(second - first, dtype=np.float64)
        return np.asarray(self.normal * self.spacing_between_slices, dtype=np.float64)

    def center(self, index: int) -> FloatArray:
        """Patient mm of the centre of slice ``index``."""
        dr, dc = self.pixel_spacing
        return np.asarray(
            np.asarray(self.positions[index], dtype=np.float64)
            + (self.columns - 1) / 2 * dc * self.row_direction
            + (self.rows - 1) / 2 * dr * self.column_direction,
            dtype=np.float64,
        )

    def index_to_patient(self, index: npt.ArrayLike) -> FloatArray:
        """Patient mm of continuous (slice, row, column) indices ``(..., 3)``."""
        ijk = np.asarray(index, dtype=np.float64)
        return np.asarray(ijk @ self._index_matrix().T + self.positions[0], dtype=np.float64)

    def patient_to_index(self, points_lps: npt.ArrayLike) -> FloatArray:
        """Continuous (slice, row, column) indices ``(..., 3)`` of patient mm points."""
        pts = np.asarray(points_lps, dtype=np.float64) - np.asarray(self.positions[0])
        return np.asarray(pts @ np.linalg.inv(self._index_matrix()).T, dtype=np.float64)

    def _index_matrix(self) -> FloatArray:
        dr, dc = self.pixel_spacing
        return np.column_stack(
            [self.slice_step, self.column_direction * dr, self.row_direction * dc]
        )

    def as_dict(self) -> dict[str, Any]:
        """The geometry for a JSON manifest (positions as first, last and step)."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "pixel_spacing_mm": list(self.pixel_spacing),
            "slice_thickness_mm": self.slice_thickness,
            "spacing_between_slices_mm": self.spacing_between_slices,
            "image_orientation": [round(v, 8) for v in self.image_orientation],
            "number_of_slices": self.number_of_slices,
            "first_position": list(self.positions[0]),
            "last_position": list(self.positions[-1]),
            "slice_step_mm": np.round(self.slice_step, 4).tolist(),
            "gantry_tilt_deg": self.gantry_tilt_deg,
            "reconstruction_diameter_mm": round(self.reconstruction_diameter, 4),
            "noise_hu": round(self.noise_hu, 3),
        }


def _position(point: npt.ArrayLike) -> tuple[float, float, float]:
    """An ImagePositionPatient, rounded to 0.1 micrometre so that it is written as computed."""
    x, y, z = (round(float(v), 4) for v in np.asarray(point, dtype=np.float64))
    return (x, y, z)


def _orientation(gantry_tilt_deg: float) -> tuple[float, float, float, float, float, float]:
    """ImageOrientationPatient of an axial scan with the gantry tilted by ``gantry_tilt_deg``.

    PS3.3 C.8.15.3.3 (CT Acquisition) calls the tilt negative when the top of the gantry leans
    away from where the table enters. Head first supine, the table enters from the feet, so a
    negative tilt lifts the anterior edge of the image plane toward the head: the column
    direction (posterior) then descends, ``(0, cos a, sin a)`` with ``a < 0``.
    """
    a = math.radians(gantry_tilt_deg)
    return (1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a))


def _axial_series(
    pose: Pose,
    rng: np.random.Generator,
    *,
    matrix: int,
    fov_mm: float,
    thickness: float,
    spacing: float,
    bottom_mni: Sequence[Sequence[float]],
    gantry_tilt_deg: float,
    noise_hu: float,
    head_affine: FloatArray | None = None,
) -> SeriesGeometry:
    """Evenly spaced planes centred on the head covering ``bottom_mni`` up to the vertex.

    Every plane's centre lies on the line through the head centre parallel to z (table
    motion); a landmark is covered when the slab of a plane contains it. ``head_affine`` maps
    atlas MNI mm into the patient's own head (its size and shape), identity if None.
    """
    head = np.eye(4) if head_affine is None else np.asarray(head_affine, dtype=np.float64)
    orientation = _orientation(gantry_tilt_deg)
    column_dir = np.asarray(orientation[3:])
    row_dir = np.asarray(orientation[:3])
    center = pose.to_patient(_apply_affine(head, HEAD_CENTER_MNI))
    jitter = rng.uniform(-CENTRING_MM, CENTRING_MM, 2)
    cx, cy = (round(float(v), 1) for v in center[:2] + jitter)
    # A point's height where the plane through it meets the centre line: h(p) = v . p + const.
    tan = math.tan(math.radians(gantry_tilt_deg))
    v = np.array([0.0, -tan, 1.0])
    linear = pose.mni_to_patient[:3, :3] @ head[:3, :3]
    head_top = float(v @ center) + float(
        np.linalg.norm(np.asarray(HEAD_SEMI_AXES_MM) * (linear.T @ v))
    )
    bottom = pose.to_patient(_apply_affine(head, bottom_mni))
    z_top = head_top + tan * cy
    z_bottom = float(np.min(bottom @ v)) + tan * cy
    count = max(1, math.ceil((z_top - z_bottom - thickness) / spacing - 1e-9) + 1)
    extra = (count - 1) * spacing - (z_top - z_bottom - thickness)
    z_first = z_bottom + thickness / 2 - extra / 2
    pixel = fov_mm / matrix
    corner = -(matrix - 1) / 2 * pixel * (row_dir + column_dir)
    positions = tuple(
        _position(corner + np.array([cx, cy, z_first + k * spacing])) for k in range(count)
    )
    return SeriesGeometry(
        rows=matrix,
        columns=matrix,
        pixel_spacing=(pixel, pixel),
        slice_thickness=thickness,
        spacing_between_slices=spacing,
        image_orientation=orientation,
        positions=positions,
        gantry_tilt_deg=gantry_tilt_deg,
        noise_hu=noise_hu,
    )


def _apply_affine(matrix: FloatArray, points: npt.ArrayLike) -> FloatArray:
    pts = np.asarray(points, dtype=np.float64)
    return np.asarray(pts @ matrix[:3, :3].T + matrix[:3, 3], dtype=np.float64)


def _fov(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A display field of view in whole mm, as an operator picks it."""
    return float(round(rng.uniform(*bounds)))


def ncct_geometry(
    pose: Pose,
    rng: np.random.Generator,
    small: bool = False,
    gantry_tilt_deg: float = 0.0,
    head_affine: FloatArray | None = None,
) -> SeriesGeometry:
    """The non-contrast head CT: 5 mm slices from below the skull base to the vertex.

    512x512 at 0.445-0.49 mm (the field of view is drawn per study), or 128x128 over the same
    field when ``small``; about 32-36 slices. ``gantry_tilt_deg`` tilts the planes (PS3.3 sign,
    see :func:`_orientation`) as a sequential head scan may be.
    """
    if abs(gantry_tilt_deg) > 30:
        raise ValueError("gantry tilt must be within +-30 degrees")
    fov = _fov(rng, NCCT_FOV_MM)
    noise = float(rng.uniform(4.0, 6.0))
    return _axial_series(
        pose,
        rng,
        matrix=SMALL_MATRIX if small else FULL_MATRIX,
        fov_mm=fov,
        thickness=NCCT_SLICE_MM,
        spacing=NCCT_SLICE_MM,
        bottom_mni=SKULL_BASE_MNI,
        gantry_tilt_deg=gantry_tilt_deg,
        noise_hu=noise,
        head_affine=head_affine,
    )


def cta_geometry(
    pose: Pose,
    rng: np.random.Generator,
    small: bool = False,
    slice_mm: float | None = None,
    head_affine: FloatArray | None = None,
) -> SeriesGeometry:
    """The CT angiogram: thin slices from the upper neck to the vertex.

    512x512 at 0.445-0.50 mm; the slice thickness is ``slice_mm`` or drawn from
    :data:`CTA_SLICE_CHOICES_MM` (2.5 mm when ``small``). A drawn thickness of 1 mm or more is
    reconstructed overlapping (spacing 0.8 x thickness) half of the time. At 0.625 mm that is
    about 280-310 slices. Noise is 10-13 HU at 0.625 mm, scaled with 1/sqrt(thickness).
    """
    fov = _fov(rng, CTA_FOV_MM)
    if slice_mm is not None:
        if not 0.1 <= slice_mm <= 10.0:
            raise ValueError("CTA slice thickness must be between 0.1 and 10 mm")
        thickness = float(slice_mm)
        spacing = thickness
    elif small:
        thickness = spacing = SMALL_CTA_SLICE_MM
    else:
        thickness = float(rng.choice(CTA_SLICE_CHOICES_MM))
        overlap = thickness >= 1.0 and bool(rng.random() < 0.5)
        spacing = round(0.8 * thickness, 4) if overlap else thickness
    noise = float(rng.uniform(10.0, 13.0)) * math.sqrt(0.625 / thickness)
    return _axial_series(
        pose,
        rng,
        matrix=SMALL_MATRIX if small else FULL_MATRIX,
        fov_mm=fov,
        thickness=thickness,
        spacing=spacing,
        bottom_mni=UPPER_NECK_MNI,
        gantry_tilt_deg=0.0,
        noise_hu=noise,
        head_affine=head_affine,
    )


def localizer_geometry(pose: Pose, small: bool = False) -> SeriesGeometry:
    """The lateral localizer (topogram): one sagittal projection of head and neck.

    Rows run anterior to posterior, columns head to feet, as a lateral topogram is shown;
    512x512 at 0.5 mm (128x128 at 2 mm when ``small``), centred on the head.
    """
    matrix = SMALL_MATRIX if small else FULL_MATRIX
    pixel = LOCALIZER_FOV_MM / matrix
    orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    center = pose.to_patient(LOCALIZER_CENTER_MNI)
    corner = center - (matrix - 1) / 2 * pixel * (
        np.asarray(orientation[:3]) + np.asarray(orientation[3:])
    )
    return SeriesGeometry(
        rows=matrix,
        columns=matrix,
        pixel_spacing=(pixel, pixel),
        slice_thickness=0.6,
        spacing_between_slices=0.6,
        image_orientation=orientation,
        positions=(_position(corner),),
        noise_hu=0.0,
    )


def mip_geometry(source: SeriesGeometry, slab_mm: float = 10.0) -> tuple[SeriesGeometry, int]:
    """Geometry of maximum intensity projections over consecutive ``slab_mm`` slabs.

    Returns the geometry and the number of source slices per slab. Slabs do not overlap; the
    remainder at the top (less than one slab) is left out, as a console's range would.
    """
    per_slab = max(1, round(slab_mm / source.spacing_between_slices))
    count = source.number_of_slices // per_slab
    if count < 1:
        raise ValueError("the source series is thinner than one slab")
    pos = np.asarray(source.positions, dtype=np.float64)
    centres = pos[: count * per_slab].reshape(count, per_slab, 3).mean(axis=1)
    return (
        SeriesGeometry(
            rows=source.rows,
            columns=source.columns,
            pixel_spacing=source.pixel_spacing,
            slice_thickness=round(per_slab * source.spacing_between_slices, 4),
            spacing_between_slices=round(per_slab * source.spacing_between_slices, 4),
            image_orientation=source.image_orientation,
            positions=tuple(_position(c) for c in centres),
            gantry_tilt_deg=source.gantry_tilt_deg,
            noise_hu=source.noise_hu,
        ),
        per_slab,
    )
