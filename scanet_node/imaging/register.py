"""Registration of a study's NCCT and CTA to the CT template in MNI space (antspyx).

Three registrations, all at about 2 mm on HU-windowed images, then one resampling per image:

1. CTA -> NCCT, rigid, Mattes mutual information (contrast changes the arteries only), on
   0..150 HU with the metric restricted to the NCCT's head (skull and cavity, grown by 5 mm) so
   that the neck the CTA also covers does not pull.
2. NCCT -> template, affine (``method="syn"`` adds a SyN stage), Mattes MI on the brain-masked
   NCCT in 0..100 HU against the skull-stripped template in the same window.
3. Both go to the output grid in one resampling each: the CTA through ``[NCCT->template,
   CTA->NCCT]`` (ANTs applies a transform list last-to-first).

Coordinate conventions. Our arrays are ``[k, j, i]`` with a 4x4 affine from the index
``(i, j, k)`` to patient mm in LPS (DICOM), which is also ITK's physical space, so an array and
its affine become an ANTsImage without any flip. The template lives in MNI mm in RAS; in ITK's
physical space an MNI point ``(x, y, z)`` is ``(-x, -y, z)``. ITK transforms map points of the
fixed image to the moving image; :class:`StudyTransform` holds both directions as plain 4x4
matrices (and, for SyN, displacement fields), so that mapping points or volumes later needs no
ANTs, and writes them back out as ANTs transform files when asked.

``ants`` is imported inside the functions (STYLE: heavy imports where used). ANTs' thread count
comes from ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` in the process's environment, read when ITK
first starts (antspyx 0.6.3 has no call that sets it), so it is the process that runs a
registration that chooses it, never this module. antspyx 0.6.3 ignores the ``random_seed``
argument of ``ants.registration``; the seed goes in through ``ants.config``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi  # type: ignore[import-untyped,unused-ignore]

from scanet_node.errors import ImagingError
from scanet_node.imaging.brain import (
    BrainMask,
    block_factors,
    block_reduce,
    extract_brain,
    voxel_sizes,
)
from scanet_node.imaging.template import HU_BACKGROUND, CtTemplate, Grid, load_template
from scanet_node.imaging.thresholds import MIN_SIMILARITY
from scanet_node.timing import Stopwatch, timed

if TYPE_CHECKING:
    import ants  # type: ignore[import-untyped,unused-ignore]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Method = Literal["affine", "syn"]

#: MNI RAS mm <-> ITK physical (LPS) mm as a 4x4 affine; its own inverse.
RAS_TO_LPS_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])

REGISTRATION_MM = 2.0
#: The HU windows the registration metrics see (not the model input's: model_input.py).
REGISTRATION_NCCT_WINDOW_HU = (0.0, 100.0)
REGISTRATION_CTA_WINDOW_HU = (0.0, 150.0)  # arteries clip at 150 with the inner table
HEAD_MARGIN_MM = 5.0
SIMILARITY_MARGIN_MM = 6.0
DEFAULT_SEED = 20240101

#: ants.registration options of the CTA -> NCCT rigid stage (levels at 8, 4, 2 mm; sigmas
#: in voxels of the 2 mm images).
RIGID_OPTIONS: dict[str, Any] = {
    "aff_metric": "mattes",
    "aff_sampling": 32,
    "aff_random_sampling_rate": 0.1,
    "aff_iterations": (200, 100, 50),
    "aff_shrink_factors": (4, 2, 1),
    "aff_smoothing_sigmas": (2, 1, 0),
}
#: ants.registration options of the NCCT -> template affine stage: the same schedule.
AFFINE_OPTIONS: dict[str, Any] = dict(RIGID_OPTIONS)
#: Extra options of the SyN stage (``method="syn"``): Mattes MI, 40, 20 and 0 iterations over
#: its three levels (ANTsPy's defaults, 5 s in all at 2 mm).
SYN_OPTIONS: dict[str, Any] = {
    "syn_metric": "mattes",
    "syn_sampling": 32,
    "reg_iterations": (40, 20, 0),
}


class RegistrationError(ImagingError):
    """Registration failed or was refused; ``reason`` is a stable code for the QC result."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[RegistrationError], tuple[str, str]]:
        return type(self), (self.reason, self.message)


@dataclass(frozen=True, eq=False)
class Displacement:
    """A dense displacement field on a grid in ITK physical space (LPS mm).

    ``vectors[k, j, i]`` is the LPS displacement added to the point at that voxel.
    """

    vectors: npt.NDArray[np.float32]
    affine_lps: FloatArray  # index (i, j, k) -> LPS mm

    def at(self, points_lps: npt.ArrayLike) -> FloatArray:
        """Linearly interpolated displacement ``(n, 3)`` at LPS points ``(n, 3)``."""
        p = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
        inv = _inv(self.affine_lps)
        ijk = p @ inv[:3, :3].T + inv[:3, 3]
        coords = ijk[:, ::-1].T  # (k, j, i) rows for map_coordinates
        return np.stack(
            [
                ndi.map_coordinates(self.vectors[..., c], coords, order=1, mode="nearest")
                for c in range(3)
            ],
            axis=1,
        )


@dataclass(frozen=True, eq=False)
class StudyTransform:
    """Where every point of a study's NCCT and CTA lies in template space, and back.

    Attributes
    ----------
    method
        ``"affine"`` or ``"syn"``.
    ncct_to_mni
        4x4: NCCT patient mm (LPS) -> MNI mm (RAS), the affine part (all of it for
        ``"affine"``).
    cta_to_ncct
        4x4: CTA patient mm (LPS) -> NCCT patient mm (LPS), rigid; ``None`` without a CTA.
    warp, inverse_warp
        For SyN, the deformable stage in template LPS space: a template point ``x`` lies at
        ``A(x + warp(x))`` in the patient, where ``A`` is the template -> NCCT affine (LPS); a
        patient point ``y`` lies at ``z + inverse_warp(z)`` with ``z = A^-1(y)``.
    """

    method: Method
    ncct_to_mni: FloatArray
    cta_to_ncct: FloatArray | None = None
    warp: Displacement | None = None
    inverse_warp: Displacement | None = None

    def patient_to_mni(self, points_lps: npt.ArrayLike, source: str = "ncct") -> FloatArray:
        """MNI mm (RAS) ``(..., 3)`` of patient points (LPS mm) of the NCCT or the CTA."""
        p = np.asarray(points_lps, dtype=np.float64)
        shape = p.shape
        p = p.reshape(-1, 3)
        if source == "cta":
            p = _apply(self._cta_to_ncct(), p)
        elif source != "ncct":
            raise ValueError(f"source must be 'ncct' or 'cta', not {source!r}")
        z = _apply(RAS_TO_LPS_AFFINE @ self.ncct_to_mni, p)  # template LPS, affine part
        if self.inverse_warp is not None:
            z = z + self.inverse_warp.at(z)
        return _apply(RAS_TO_LPS_AFFINE, z).reshape(shape)

    def mni_to_patient(self, points_mni: npt.ArrayLike, target: str = "ncct") -> FloatArray:
        """Patient mm (LPS) in the NCCT's or the CTA's frame of MNI points (RAS) ``(..., 3)``."""
        x = np.asarray(points_mni, dtype=np.float64)
        shape = x.shape
        x = _apply(RAS_TO_LPS_AFFINE, x.reshape(-1, 3))
        if self.warp is not None:
            x = x + self.warp.at(x)
        p = _apply(self.template_to_ncct_lps, x)
        if target == "cta":
            p = _apply(_inv(self._cta_to_ncct()), p)
        elif target != "ncct":
            raise ValueError(f"target must be 'ncct' or 'cta', not {target!r}")
        return p.reshape(shape)

    @property
    def template_to_ncct_lps(self) -> FloatArray:
        """4x4 template LPS mm -> NCCT LPS mm: the ITK (fixed -> moving) affine."""
        return _inv(RAS_TO_LPS_AFFINE @ self.ncct_to_mni)

    def _cta_to_ncct(self) -> FloatArray:
        if self.cta_to_ncct is None:
            raise ValueError("this registration has no CTA")
        return self.cta_to_ncct

    def to_template(
        self,
        volume: npt.NDArray[np.generic],
        affine: npt.ArrayLike,
        grid: Grid,
        *,
        source: str = "ncct",
        interpolator: str = "linear",
        fill: float = HU_BACKGROUND,
        antialias: bool = True,
    ) -> npt.NDArray[np.float32]:
        """Resample a native volume (``[k, j, i]``, index -> LPS) onto ``grid`` in one step.

        With ``antialias`` the volume is first block-averaged to at most the grid's spacing
        (use False for masks, with ``interpolator="nearestNeighbor"`` or "genericLabel").
        """
        ants = _ants()
        a = np.asarray(affine, dtype=np.float64)
        if antialias:
            data, a = _reduced(np.asarray(volume, dtype=np.float32), a, min(grid.spacing))
        else:
            data = np.asarray(volume, dtype=np.float32)
        with _workdir(None) as tmp:
            chain = self.write_transforms(tmp)[f"{source}_to_template"]
            out = ants.apply_transforms(
                fixed=grid_to_ants(grid),
                moving=to_ants(data, a),
                transformlist=chain,
                whichtoinvert=[False] * len(chain),
                interpolator=interpolator,
                defaultvalue=fill,
            )
        return from_ants(out)[0]

    def to_patient_grid(
        self,
        volume: npt.NDArray[np.generic],
        grid: Grid,
        shape: tuple[int, int, int],
        affine: npt.ArrayLike,
        *,
        target: str = "ncct",
        order: int = 1,
        fill: float = 0.0,
    ) -> npt.NDArray[np.float32]:
        """Resample a volume on ``grid`` (an attention map, a mask) onto a native CT grid.

        ``shape`` and ``affine`` describe the native series (``[k, j, i]``, index -> LPS);
        ``order`` 0 is nearest neighbour (masks), 1 linear. Works slice by slice.
        """
        a = np.asarray(affine, dtype=np.float64)
        src = np.asarray(volume, dtype=np.float32)
        jj, ii = np.meshgrid(
            np.arange(shape[1], dtype=np.float64),
            np.arange(shape[2], dtype=np.float64),
            indexing="ij",
        )
        out = np.empty(shape, dtype=np.float32)
        for k in range(shape[0]):
            ijk = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, float(k))], axis=1)
            mni = self.patient_to_mni(ijk @ a[:3, :3].T + a[:3, 3], source=target)
            idx = grid.mni_to_index(mni)
            out[k] = ndi.map_coordinates(src, idx[:, ::-1].T, order=order, cval=fill).reshape(
                shape[1], shape[2]
            )
        return out

    def write_transforms(self, folder: Path) -> dict[str, list[str]]:
        """Write the transforms as ITK/ANTs files; returns ``ants.apply_transforms`` lists.

        Keys: ``ncct_to_template`` and ``cta_to_template`` (moving = the native series, fixed
        = a template-space image), ``template_to_ncct`` and ``template_to_cta`` (the other way;
        inverses are written out, so pass ``whichtoinvert=[False] * len(list)``: left to its
        default, antspyx inverts the ``.mat`` of any ``[.mat, warp]`` pair). Matrices are ITK
        affine transforms (``.mat``), warps 3-component NIfTI displacement fields (LPS mm).
        For points, ANTs uses the opposite lists: ``template_to_ncct`` maps NCCT points to
        template (LPS) points.
        """
        folder.mkdir(parents=True, exist_ok=True)
        tmpl_to_ncct = self.template_to_ncct_lps
        files = {
            "template_to_ncct.mat": tmpl_to_ncct,
            "ncct_to_template.mat": _inv(tmpl_to_ncct),
        }
        if self.cta_to_ncct is not None:
            files["ncct_to_cta.mat"] = _inv(self.cta_to_ncct)
            files["cta_to_ncct.mat"] = self.cta_to_ncct
        for name, matrix in files.items():
            _write_matrix(matrix, str(folder / name))
        fwd_warp: list[str] = []
        inv_warp: list[str] = []
        if self.warp is not None and self.inverse_warp is not None:
            fwd_warp = [_write_displacement(self.warp, folder / "warp.nii")]
            inv_warp = [_write_displacement(self.inverse_warp, folder / "inverse_warp.nii")]
        lists = {
            "ncct_to_template": [*fwd_warp, str(folder / "template_to_ncct.mat")],
            "template_to_ncct": [str(folder / "ncct_to_template.mat"), *inv_warp],
        }
        if self.cta_to_ncct is not None:
            lists["cta_to_template"] = [*lists["ncct_to_template"], str(folder / "ncct_to_cta.mat")]
            lists["template_to_cta"] = [str(folder / "cta_to_ncct.mat"), *lists["template_to_ncct"]]
        return lists


@dataclass(eq=False)
class Registration:
    """A study registered to the CT template.

    Attributes
    ----------
    transform
        The mapping between the study's patient space and template space.
    grid
        The output grid of :attr:`ncct`, :attr:`cta` and :attr:`brain_mask`.
    ncct, cta
        HU on :attr:`grid` (``[k, j, i]``, float32), -1024 outside the field of view.
    brain_mask
        The NCCT's brain mask carried to :attr:`grid` (also the CTA's: they are aligned).
    similarity
        Normalised correlation of the registered NCCT and the template (both 0..100 HU) inside
        the template's brain mask grown by 6 mm, at 2 mm; 1 is a perfect match.
    brain_volume_ml
        The NCCT's brain volume from the brain extraction.
    timings
        Seconds per stage.
    """

    transform: StudyTransform
    grid: Grid
    ncct: npt.NDArray[np.float32]
    cta: npt.NDArray[np.float32] | None
    brain_mask: npt.NDArray[np.bool_]
    similarity: float
    brain_volume_ml: float
    timings: dict[str, float] = field(default_factory=dict)

    def patient_to_mni(self, points_lps: npt.ArrayLike, source: str = "ncct") -> FloatArray:
        """MNI mm (RAS) of patient points (LPS) of the NCCT or the CTA (see StudyTransform)."""
        return self.transform.patient_to_mni(points_lps, source)

    def mni_to_patient(self, points_mni: npt.ArrayLike, target: str = "ncct") -> FloatArray:
        """Patient mm (LPS) of MNI points (RAS), in the NCCT's or the CTA's frame."""
        return self.transform.mni_to_patient(points_mni, target)

    def to_patient_grid(
        self,
        volume: npt.NDArray[np.generic],
        shape: tuple[int, int, int],
        affine: npt.ArrayLike,
        *,
        target: str = "ncct",
        order: int = 1,
        fill: float = 0.0,
    ) -> npt.NDArray[np.float32]:
        """A volume on :attr:`grid` resampled onto a native series' grid (see StudyTransform)."""
        return self.transform.to_patient_grid(
            volume, self.grid, shape, affine, target=target, order=order, fill=fill
        )


def _inv(matrix: npt.ArrayLike) -> FloatArray:
    return np.asarray(np.linalg.inv(np.asarray(matrix, dtype=np.float64)), dtype=np.float64)


def _apply(matrix: FloatArray, points: FloatArray) -> FloatArray:
    return np.asarray(points @ matrix[:3, :3].T + matrix[:3, 3])


# ---------------------------------------------------------------------------------------------
# ANTs conversions


def _ants() -> Any:
    import ants  # type: ignore[import-untyped,unused-ignore]

    return ants


def _check_orthonormal(affine: FloatArray) -> None:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise RegistrationError(
            "non_orthogonal_grid",
            "the volume's axes are not orthogonal (gantry tilt?): resample it to an orthogonal "
            "grid before registration",
        )


def to_ants(array: npt.NDArray[np.generic], affine_lps: npt.ArrayLike) -> ants.ANTsImage:
    """ANTsImage of an array ``[k, j, i]`` whose affine maps ``(i, j, k)`` to LPS mm."""
    ants = _ants()
    a = np.asarray(affine_lps, dtype=np.float64)
    _check_orthonormal(a)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    direction = a[:3, :3] / spacing
    data = np.asarray(array, dtype=np.float32).transpose(2, 1, 0)
    return ants.from_numpy(
        data,
        origin=tuple(float(v) for v in a[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=direction,
    )


def from_ants(image: ants.ANTsImage) -> tuple[npt.NDArray[np.float32], FloatArray]:
    """``(array [k, j, i], affine (i, j, k) -> LPS mm)`` of an ANTsImage."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)
    affine[:3, 3] = image.origin
    data = np.ascontiguousarray(image.numpy().transpose(2, 1, 0), dtype=np.float32)
    return data, affine


def grid_to_ants(grid: Grid, array: npt.NDArray[np.generic] | None = None) -> ants.ANTsImage:
    """ANTsImage on a template grid (MNI RAS affine -> ITK's LPS); zeros unless ``array``."""
    data = np.zeros(grid.shape, np.float32) if array is None else array
    return to_ants(data, RAS_TO_LPS_AFFINE @ grid.affine)


def _itk_affine_to_matrix(transform: Any) -> FloatArray:
    """4x4 of an ITK affine/rigid transform: ``y = A (x - c) + c + t`` (fixed -> moving, LPS)."""
    params = np.asarray(transform.parameters, dtype=np.float64)
    center = np.asarray(transform.fixed_parameters, dtype=np.float64)
    linear = params[:9].reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = params[9:12] + center - linear @ center
    return matrix


def _read_matrix(path: str) -> FloatArray:
    ants = _ants()
    return _itk_affine_to_matrix(ants.read_transform(path))


def _read_displacement(path: str) -> Displacement:
    ants = _ants()
    image = ants.image_read(path)
    vectors = np.asarray(image.numpy(), dtype=np.float32)  # (i, j, k, 3)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)
    affine[:3, 3] = image.origin
    return Displacement(np.ascontiguousarray(vectors.transpose(2, 1, 0, 3)), affine)


# ---------------------------------------------------------------------------------------------
# Preparation of the images the metric sees


def _reduced(
    hu: npt.NDArray[np.floating],
    affine: FloatArray,
    target_mm: float,
    *,
    window: tuple[float, float] | None = None,
    mask: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.float32], FloatArray]:
    """Window, mask and block-average a volume to about ``target_mm``; returns array, affine.

    Works through the volume a few output slices at a time, so a 300-slice CTA never gets a
    full-size temporary copy.
    """
    factors = block_factors(voxel_sizes(affine), target_mm)
    if hu.shape[0] < factors[0]:
        factors = (1, *factors[1:])
    fk = factors[0]
    n_out = hu.shape[0] // fk
    step = max(1, 16 // fk) * fk  # input slices per chunk, a whole number of blocks
    chunks = []
    for k0 in range(0, n_out * fk, step):
        data = np.asarray(hu[k0 : k0 + step], dtype=np.float32)
        if window is not None:
            data = np.clip(data, window[0], window[1])
        if mask is not None:
            fill = window[0] if window is not None else HU_BACKGROUND
            data = np.where(mask[k0 : k0 + step], data, np.float32(fill))
        chunks.append(np.asarray(block_reduce(data, factors), dtype=np.float32))
    return np.concatenate(chunks, axis=0), _reduced_affine(affine, factors)


def _reduced_affine(affine: FloatArray, factors_kji: tuple[int, ...]) -> FloatArray:
    """Affine of a block-averaged grid (block ``n`` is centred on input voxels ``nf..nf+f-1``)."""
    f_ijk = np.array(factors_kji[::-1], dtype=np.float64)
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * f_ijk
    out[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((f_ijk - 1.0) / 2.0)
    return out


def _template_image(template: CtTemplate, window: tuple[float, float]) -> ants.ANTsImage:
    """The template at ``REGISTRATION_MM`` in the metric's window (LPS ANTsImage)."""
    ants = _ants()
    image = grid_to_ants(template.grid, np.clip(template.hu, window[0], window[1]))
    return ants.resample_image(image, (REGISTRATION_MM,) * 3, use_voxels=False, interp_type=0)


def _dilate(mask: npt.NDArray[np.bool_], radius_mm: float, affine: FloatArray) -> Any:
    spacing = voxel_sizes(affine)
    return ndi.distance_transform_edt(~mask, sampling=spacing) <= radius_mm


def _seed_ants(seed: int | None) -> Any:
    ants = _ants()
    ants.config._random_seed = seed
    return ants


# ---------------------------------------------------------------------------------------------
# The registrations


@dataclass(frozen=True, eq=False)
class RigidTarget:
    """The NCCT as the fixed image of the CTA -> NCCT registration, at about 2 mm.

    ``image`` is the NCCT in the CTA's window, ``mask`` its head (skull and cavity grown by
    ``HEAD_MARGIN_MM``), both on ``affine``. Made once per NCCT, so that it can be kept (and
    the full-size NCCT dropped) until the CTA arrives.
    """

    image: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]
    affine: FloatArray


def rigid_target(
    ncct_hu: npt.NDArray[np.floating], ncct_affine: npt.ArrayLike, ncct_head: npt.NDArray[np.bool_]
) -> RigidTarget:
    """The fixed image of :func:`register_cta_to_ncct` (``ncct_head`` on the NCCT grid)."""
    na = np.asarray(ncct_affine, dtype=np.float64)
    image, affine = _reduced(ncct_hu, na, REGISTRATION_MM, window=REGISTRATION_CTA_WINDOW_HU)
    head_small = block_reduce(ncct_head, block_factors(voxel_sizes(na), REGISTRATION_MM), "any")
    head = _dilate(np.asarray(head_small, dtype=bool), HEAD_MARGIN_MM, affine)
    return RigidTarget(image, np.asarray(head, dtype=bool), affine)


def register_cta_to_ncct(
    cta_hu: npt.NDArray[np.floating],
    cta_affine: npt.ArrayLike,
    ncct_hu: npt.NDArray[np.floating] | RigidTarget,
    ncct_affine: npt.ArrayLike | None = None,
    ncct_head: npt.NDArray[np.bool_] | None = None,
    *,
    same_frame: bool = False,
    seed: int | None = DEFAULT_SEED,
    workdir: Path | None = None,
) -> FloatArray:
    """Rigid CTA -> NCCT; returns the 4x4 CTA patient mm -> NCCT patient mm (both LPS).

    The NCCT is given as its HU, affine and head (on the NCCT grid: typically the skull and
    cavity of its brain extraction, which limit the metric), or as its :func:`rigid_target`.
    With ``same_frame`` (the two share a Frame of Reference UID: one session on one scanner)
    the search starts from the identity, where the head lies give or take the patient's
    movement; otherwise from the images' centres of mass, which the CTA's neck pulls down by
    centimetres. ANTs' files go to a temporary folder, or are kept in ``workdir``.
    """
    ants = _seed_ants(seed)
    if isinstance(ncct_hu, RigidTarget):
        target = ncct_hu
    else:
        if ncct_affine is None or ncct_head is None:
            raise ValueError("an NCCT given as HU needs its affine and head mask")
        target = rigid_target(ncct_hu, ncct_affine, ncct_head)
    ca = np.asarray(cta_affine, dtype=np.float64)
    moving_arr, moving_aff = _reduced(
        cta_hu, ca, REGISTRATION_MM, window=REGISTRATION_CTA_WINDOW_HU
    )
    fixed = to_ants(target.image, target.affine)
    moving = to_ants(moving_arr, moving_aff)
    mask = to_ants(target.mask.astype(np.float32), target.affine)
    with _workdir(workdir) as tmp:
        reg = ants.registration(
            fixed=fixed,
            moving=moving,
            type_of_transform="Rigid",
            mask=mask,
            outprefix=str(tmp / "cta_"),
            initial_transform="Identity" if same_frame else None,
            **RIGID_OPTIONS,
        )
        ncct_to_cta = _read_matrix(reg["fwdtransforms"][0])  # fixed (NCCT) -> moving (CTA)
    return _inv(ncct_to_cta)


@dataclass(frozen=True, eq=False)
class TemplateFit:
    """The NCCT -> template registration: the transform and its QC similarity."""

    transform: StudyTransform
    similarity: float


def register_ncct_to_template(
    ncct_hu: npt.NDArray[np.floating],
    ncct_affine: npt.ArrayLike,
    brain: npt.NDArray[np.bool_],
    *,
    template: CtTemplate | None = None,
    method: Method = "affine",
    seed: int | None = DEFAULT_SEED,
    workdir: Path | None = None,
) -> TemplateFit:
    """NCCT -> template, on the brain-masked NCCT in 0..100 HU at 2 mm.

    ``brain`` is the NCCT's brain mask (on its grid). The result's transform has no CTA yet.
    ANTs' files go to a temporary folder, or are kept in ``workdir``.
    """
    ants = _seed_ants(seed)
    tmpl = template if template is not None else load_template()
    na = np.asarray(ncct_affine, dtype=np.float64)
    fixed = _template_image(tmpl, REGISTRATION_NCCT_WINDOW_HU)
    moving = to_ants(
        *_reduced(ncct_hu, na, REGISTRATION_MM, window=REGISTRATION_NCCT_WINDOW_HU, mask=brain)
    )
    if method not in ("affine", "syn"):
        raise ValueError(f"method must be 'affine' or 'syn', not {method!r}")
    with _workdir(workdir) as tmp:
        options: dict[str, Any] = {**AFFINE_OPTIONS, "outprefix": str(tmp / "ncct_")}
        if method == "syn":
            options.update(SYN_OPTIONS)
        reg = ants.registration(
            fixed=fixed,
            moving=moving,
            type_of_transform="SyN" if method == "syn" else "Affine",
            **options,
        )
        files: list[str] = list(reg["fwdtransforms"])
        tmpl_to_ncct = _read_matrix(next(f for f in files if f.endswith(".mat")))
        warp = inverse_warp = None
        if method == "syn":
            warp = _read_displacement(next(f for f in files if f.endswith("Warp.nii.gz")))
            inverse_warp = _read_displacement(
                next(f for f in reg["invtransforms"] if f.endswith("InverseWarp.nii.gz"))
            )
    transform = StudyTransform(
        method=method,
        ncct_to_mni=RAS_TO_LPS_AFFINE @ _inv(tmpl_to_ncct),
        warp=warp,
        inverse_warp=inverse_warp,
    )
    return TemplateFit(transform, _similarity(reg["warpedmovout"], fixed, tmpl))


def similarity_to_template(
    ncct_hu: npt.NDArray[np.floating],
    ncct_affine: npt.ArrayLike,
    brain: npt.NDArray[np.bool_],
    ncct_to_mni: npt.ArrayLike,
    *,
    template: CtTemplate | None = None,
) -> float:
    """The QC similarity (see :class:`Registration`) of an NCCT placed by a given affine."""
    ants = _ants()
    tmpl = template if template is not None else load_template()
    fixed = _template_image(tmpl, REGISTRATION_NCCT_WINDOW_HU)
    na = np.asarray(ncct_affine, dtype=np.float64)
    moving = to_ants(
        *_reduced(ncct_hu, na, REGISTRATION_MM, window=REGISTRATION_NCCT_WINDOW_HU, mask=brain)
    )
    tmpl_to_ncct = _inv(RAS_TO_LPS_AFFINE @ np.asarray(ncct_to_mni, dtype=np.float64))
    with _workdir(None) as tmp:
        path = str(tmp / "placed.mat")
        _write_matrix(tmpl_to_ncct, path)
        warped = ants.apply_transforms(
            fixed=fixed,
            moving=moving,
            transformlist=[path],
            whichtoinvert=[False],
            interpolator="linear",
        )
    return _similarity(warped, fixed, tmpl)


def _similarity(warped: ants.ANTsImage, fixed: ants.ANTsImage, template: CtTemplate) -> float:
    """Normalised correlation inside the template mask grown by a margin, on the 2 mm grid."""
    ants = _ants()
    mask_img = ants.resample_image_to_target(
        grid_to_ants(template.grid, template.brain_mask.astype(np.float32)),
        fixed,
        interp_type="linear",
    )
    mask_arr, mask_aff = from_ants(mask_img)
    region = _dilate(mask_arr >= 0.5, SIMILARITY_MARGIN_MM, mask_aff)
    a = warped.numpy().transpose(2, 1, 0)[region].astype(np.float64)
    b = fixed.numpy().transpose(2, 1, 0)[region].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


class _workdir:
    """A temporary folder for ANTs' transform files (or a given one, kept)."""

    def __init__(self, given: Path | None) -> None:
        self._given = given
        self._made: str | None = None

    def __enter__(self) -> Path:
        if self._given is not None:
            self._given.mkdir(parents=True, exist_ok=True)
            return self._given
        self._made = tempfile.mkdtemp(prefix="scanet-ants-")
        return Path(self._made)

    def __exit__(self, *exc: object) -> None:
        if self._made is not None:
            shutil.rmtree(self._made, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The whole study


@dataclass(eq=False)
class NcctRegistration:
    """The NCCT's half of a study's registration: all that the CTA's half needs of the NCCT.

    Done as soon as the NCCT is complete (it is sent first), and kept, so that when the CTA
    arrives only the CTA's load, its rigid registration and its resampling are left
    (:func:`register_cta`). Its arrays are small: the full-size NCCT is not among them.
    """

    transform: StudyTransform
    grid: Grid
    ncct: npt.NDArray[np.float32]
    brain_mask: npt.NDArray[np.bool_]
    similarity: float
    brain_volume_ml: float
    rigid_target: RigidTarget
    timings: dict[str, float] = field(default_factory=dict)


def register_ncct(
    ncct_hu: npt.NDArray[np.floating],
    ncct_affine: npt.ArrayLike,
    *,
    brain: BrainMask | None = None,
    template: CtTemplate | None = None,
    method: Method = "affine",
    grid: Grid | None = None,
    min_similarity: float | None = MIN_SIMILARITY,
    seed: int | None = DEFAULT_SEED,
) -> NcctRegistration:
    """The NCCT's half of :func:`register`: NCCT -> template, and the NCCT on ``grid``."""
    timings: dict[str, float] = {}
    watch = Stopwatch()
    na = np.asarray(ncct_affine, dtype=np.float64)
    tmpl = template if template is not None else load_template()
    out_grid = grid if grid is not None else tmpl.grid
    if brain is None:
        brain = extract_brain(ncct_hu, na)
        timings["brain_extraction"] = round(watch.total(), 3)
    with timed(timings, "ncct_to_template", ndigits=3):
        fit = register_ncct_to_template(
            ncct_hu, na, brain.brain, template=tmpl, method=method, seed=seed
        )
    logger.info("registration to the template: similarity %.3f", fit.similarity)
    if min_similarity is not None and fit.similarity < min_similarity:
        raise RegistrationError(
            "registration_dissimilar",
            f"similarity to the template {fit.similarity:.3f} is below {min_similarity:.3f}",
        )
    with timed(timings, "resample_ncct", ndigits=3):
        target = rigid_target(ncct_hu, na, brain.cavity | brain.skull)
        ncct_out = fit.transform.to_template(ncct_hu, na, out_grid)
        mask_out = fit.transform.to_template(
            brain.brain.astype(np.float32), na, out_grid, fill=0.0, antialias=False
        )
    return NcctRegistration(
        transform=fit.transform,
        grid=out_grid,
        ncct=ncct_out,
        brain_mask=mask_out >= 0.5,
        similarity=fit.similarity,
        brain_volume_ml=brain.volume_ml,
        rigid_target=target,
        timings=timings,
    )


def register_cta(
    ncct: NcctRegistration,
    cta_hu: npt.NDArray[np.floating],
    cta_affine: npt.ArrayLike,
    *,
    same_frame: bool = False,
    seed: int | None = DEFAULT_SEED,
) -> Registration:
    """The CTA's half of :func:`register`: CTA -> NCCT (rigid; ``same_frame``: see
    :func:`register_cta_to_ncct`), and the CTA on the grid."""
    timings = dict(ncct.timings)
    with timed(timings, "cta_to_ncct", ndigits=3):
        cta_to_ncct = register_cta_to_ncct(
            cta_hu, cta_affine, ncct.rigid_target, same_frame=same_frame, seed=seed
        )
    transform = replace(ncct.transform, cta_to_ncct=cta_to_ncct)
    with timed(timings, "resample_cta", ndigits=3):
        cta_out = transform.to_template(cta_hu, np.asarray(cta_affine), ncct.grid, source="cta")
    return _registration(ncct, transform, cta_out, timings)


def _registration(
    ncct: NcctRegistration,
    transform: StudyTransform,
    cta: npt.NDArray[np.float32] | None,
    timings: dict[str, float],
) -> Registration:
    return Registration(
        transform=transform,
        grid=ncct.grid,
        ncct=ncct.ncct,
        cta=cta,
        brain_mask=ncct.brain_mask,
        similarity=ncct.similarity,
        brain_volume_ml=ncct.brain_volume_ml,
        timings=timings,
    )


def register(
    ncct_hu: npt.NDArray[np.floating],
    ncct_affine: npt.ArrayLike,
    cta_hu: npt.NDArray[np.floating] | None = None,
    cta_affine: npt.ArrayLike | None = None,
    *,
    brain: BrainMask | None = None,
    template: CtTemplate | None = None,
    method: Method = "affine",
    grid: Grid | None = None,
    min_similarity: float | None = MIN_SIMILARITY,
    cta_same_frame: bool = False,
    seed: int | None = DEFAULT_SEED,
) -> Registration:
    """Register a study's NCCT (and CTA) to the CT template and resample both onto ``grid``.

    :func:`register_ncct`, then :func:`register_cta`; the two halves can run apart (the NCCT's
    as soon as it is complete).

    Parameters
    ----------
    ncct_hu, ncct_affine
        The NCCT, ``[k, j, i]`` HU and its index ``(i, j, k)`` -> LPS mm affine.
    cta_hu, cta_affine
        The CTA likewise, or ``None``.
    brain
        The NCCT's brain extraction; computed here (with its volume check) when ``None``.
    template
        The CT template; the shipped one when ``None``.
    method
        ``"affine"`` (12 parameters) or ``"syn"`` (affine, then SyN).
    grid
        Output grid; the template's 1.5 mm grid when ``None``.
    min_similarity
        Refuse (``RegistrationError("registration_dissimilar")``) below this similarity;
        ``None`` accepts any.
    cta_same_frame
        The CTA shares the NCCT's Frame of Reference UID: its rigid search starts from the
        identity (see :func:`register_cta_to_ncct`).
    seed
        ANTs' random seed (metric sampling).

    Raises
    ------
    BrainExtractionError
        From the brain extraction, when ``brain`` is not given.
    RegistrationError
        ``registration_dissimilar`` (see ``min_similarity``), ``non_orthogonal_grid`` for a
        sheared (gantry-tilted) volume that was not resampled first.
    """
    watch = Stopwatch()
    half = register_ncct(
        ncct_hu,
        ncct_affine,
        brain=brain,
        template=template,
        method=method,
        grid=grid,
        min_similarity=min_similarity,
        seed=seed,
    )
    if cta_hu is None:
        registration = _registration(half, half.transform, None, dict(half.timings))
    else:
        if cta_affine is None:
            raise ValueError("a CTA needs its affine")
        registration = register_cta(half, cta_hu, cta_affine, same_frame=cta_same_frame, seed=seed)
    registration.timings["total"] = round(watch.total(), 3)
    return registration


def _write_displacement(field: Displacement, path: Path) -> str:
    ants = _ants()
    a = field.affine_lps
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    image = ants.from_numpy(
        np.ascontiguousarray(field.vectors.transpose(2, 1, 0, 3)),
        origin=tuple(float(v) for v in a[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=a[:3, :3] / spacing,
        has_components=True,
    )
    ants.image_write(image, str(path))
    return str(path)


def _write_matrix(matrix: FloatArray, path: str) -> None:
    """Write a 4x4 (fixed -> moving, LPS) as an ITK affine transform file."""
    ants = _ants()
    transform = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=3,
        matrix=matrix[:3, :3],
        offset=matrix[:3, 3],
    )
    ants.write_transform(transform, path)
