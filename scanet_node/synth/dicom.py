"""Writing a synthetic stroke study as the DICOM files a CT scanner would send.

One study holds what a stroke protocol produces and what the node has to choose from: a lateral
localizer, the non-contrast head CT (5 mm), the CT angiogram (thin slices), thick-slab MIPs
derived from the angiogram and an X-Ray Radiation Dose SR. Images are CT Image Storage, one file
per image, int16 pixels with RescaleIntercept -1024 and PixelPaddingValue outside the
reconstruction circle, in Explicit VR Little Endian or, as a variant, RLE or JPEG Lossless.
Every file says it is synthetic (Manufacturer ``SCANET-SYNTH``, ImageComments).

This module writes the CT series; the pixel encodings are in
:mod:`~scanet_node.synth.pixel_codecs`, the dose SR in :mod:`~scanet_node.synth.dose_sr` and
what all objects share (patient, study, equipment, technique) in
:mod:`~scanet_node.synth.dicom_common`.

UIDs are derived from the study UID, the options and a number drawn from the caller's random
generator, so the same inputs write the same files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from scanet_node.synth.dicom_common import (
    Acquisition,
    StudyIdentity,
    as_da,
    as_ds,
    as_tm,
    code,
    common_dataset,
    parse_datetime,
)
from scanet_node.synth.dose_sr import build_dose_report
from scanet_node.synth.pixel_codecs import check_encodable, set_pixel_data
from scanet_node.synth.scanner_geometry import (
    Pose,
    SeriesGeometry,
    cta_geometry,
    localizer_geometry,
    mip_geometry,
    ncct_geometry,
)
from scanet_node.synth.scanner_render import (
    HUArray,
    HUSampler,
    RenderStats,
    SliceRenderer,
    render_localizer,
)

logger = logging.getLogger(__name__)

ROLES: Final = ("localizer", "ncct", "cta", "cta_mip", "dose")

RESCALE_INTERCEPT: Final = -1024
#: Stored value of pixels outside the reconstruction circle (-2048 HU).
PIXEL_PADDING_VALUE: Final = -1024
MIP_SLAB_MM: Final = 10.0

SYNTHETIC_COMMENT: Final = "SYNTHETIC IMAGE made by scanet-node synth; not from a patient"
CONTRAST_AGENT: Final = "Iohexol 350 mgI/ml"

_UID_ROOT: Final = "scanet-synth"


@dataclass(frozen=True)
class WriteOptions:
    """What to write, and the variants that a node must cope with.

    ``reversed_order`` numbers (and writes) the images head to feet; ``gantry_tilt_deg`` tilts
    the NCCT planes (PS3.3 sign); ``missing_ncct_slice`` leaves out the middle NCCT image;
    ``with_cta`` False writes no CTA (and no MIP); ``transfer_syntax`` is Explicit VR Little
    Endian, RLE Lossless or JPEG Lossless SV1 for every image; ``cta_slice_mm`` fixes the CTA
    slice thickness; ``extras`` adds the localizer, the MIPs and the dose report; ``small``
    makes 128x128 images for fast tests.
    """

    small: bool = False
    reversed_order: bool = False
    gantry_tilt_deg: float = 0.0
    missing_ncct_slice: bool = False
    with_cta: bool = True
    transfer_syntax: str = ExplicitVRLittleEndian
    cta_slice_mm: float | None = None
    extras: bool = True


@dataclass(frozen=True)
class SeriesFiles:
    """One written series: its identity, its files (in the order written) and its geometry."""

    role: str
    series_number: int
    series_uid: str
    description: str
    folder: Path
    files: tuple[Path, ...]
    instance_numbers: tuple[int, ...]
    transfer_syntax: str
    geometry: SeriesGeometry | None = None
    missing_instance_numbers: tuple[int, ...] = ()
    head_first: bool = False

    def as_manifest(self, root: Path) -> dict[str, Any]:
        """The series for a JSON manifest, paths relative to ``root``."""
        entry: dict[str, Any] = {
            "role": self.role,
            "series_number": self.series_number,
            "series_instance_uid": self.series_uid,
            "description": self.description,
            "folder": self.folder.relative_to(root).as_posix(),
            "instances": len(self.files),
            "transfer_syntax": self.transfer_syntax,
        }
        if self.geometry is not None:
            entry["instance_order"] = "head-to-feet" if self.head_first else "feet-to-head"
            entry["geometry"] = self.geometry.as_dict()
        if self.missing_instance_numbers:
            entry["missing_instance_numbers"] = list(self.missing_instance_numbers)
        return entry


@dataclass(frozen=True)
class StudyFiles:
    """Everything :func:`write_study` wrote, and how long each stage took (seconds)."""

    study_uid: str
    frame_of_reference_uid: str
    series: tuple[SeriesFiles, ...]
    timings: dict[str, float] = field(default_factory=dict)

    def by_role(self, role: str) -> SeriesFiles:
        """The series of ``role``; KeyError when the study has none."""
        for series in self.series:
            if series.role == role:
                return series
        raise KeyError(role)

    def roles(self) -> list[str]:
        """Roles of the series written, in series order."""
        return [s.role for s in self.series]

    def as_manifest(self, root: Path) -> list[dict[str, Any]]:
        """The series for a JSON manifest, paths relative to ``root``."""
        return [s.as_manifest(root) for s in self.series]


@dataclass
class _MipSlabs:
    """Running maxima of consecutive CTA slabs, filled while the CTA is written."""

    geometry: SeriesGeometry
    per_slab: int
    maxima: npt.NDArray[np.int16]
    source_uids: list[list[str]]  # SOP Instance UIDs of the CTA images in each slab

    @classmethod
    def of(cls, source: SeriesGeometry) -> _MipSlabs:
        geometry, per_slab = mip_geometry(source, MIP_SLAB_MM)
        shape = (geometry.number_of_slices, source.rows, source.columns)
        maxima = np.full(shape, np.iinfo(np.int16).min, dtype=np.int16)
        return cls(geometry, per_slab, maxima, [[] for _ in range(shape[0])])

    def add(self, index: int, hu: HUArray, sop_uid: str) -> None:
        slab = index // self.per_slab
        if slab < self.maxima.shape[0]:
            np.maximum(self.maxima[slab], hu, out=self.maxima[slab])
            self.source_uids[slab].append(sop_uid)


@dataclass
class _Study:
    """State shared by the series of one study while it is written."""

    out_dir: Path
    identity: StudyIdentity
    options: WriteOptions
    start: datetime
    frame_uid: str
    salt: str
    table_height: float
    written: list[SeriesFiles] = field(default_factory=list)
    acquisitions: list[tuple[SeriesFiles, Acquisition]] = field(default_factory=list)
    stats: RenderStats = field(default_factory=RenderStats)
    timings: dict[str, float] = field(default_factory=dict)

    def uid(self, *parts: object) -> str:
        return str(generate_uid(entropy_srcs=[f"{_UID_ROOT}|{self.salt}|{parts!r}"]))

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds


def write_study(
    out_dir: Path,
    phantom: HUSampler,
    pose: Pose,
    identity: StudyIdentity,
    options: WriteOptions,
    rng: np.random.Generator,
) -> StudyFiles:
    """Render and write one study under ``out_dir`` (``<series number>_<role>/IM00001.dcm``).

    Parameters
    ----------
    out_dir
        Study folder; created if missing. Images left in its series folders by an earlier
        write are removed first.
    phantom
        The anatomy, with :meth:`sample` (``scanet_node.synth.phantom.Phantom``).
    pose
        Head pose on the table; the same for every series (one frame of reference).
    identity
        Made-up patient and study attributes.
    options
        Variants and size.
    rng
        Draws the field of view, slice thickness, noise and technique; the same generator state
        writes the same study.
    """
    check_encodable(options.transfer_syntax)
    started = time.perf_counter()
    study = _start_study(out_dir, identity, options, rng)
    head = getattr(phantom, "head_affine", None)  # the patient's head size and shape
    ncct = ncct_geometry(pose, rng, options.small, options.gantry_tilt_deg, head)
    cta = (
        cta_geometry(pose, rng, options.small, options.cta_slice_mm, head)
        if options.with_cta
        else None
    )
    loc_rng, ncct_rng, cta_rng = rng.spawn(3)
    ncct_ma = int(rng.integers(260, 330))
    cta_ma = int(rng.integers(180, 260))

    if options.extras:
        _write_localizer(study, phantom, pose, loc_rng)
    missing = (ncct.number_of_slices // 2,) if options.missing_ncct_slice else ()
    _write_rendered_series(
        study, phantom, pose, ncct, _ncct_acquisition(ncct_ma), ncct_rng, skip=missing
    )
    if cta is not None:
        cta_acq = _cta_acquisition(cta_ma, cta.slice_thickness)
        slabs = _write_rendered_series(
            study, phantom, pose, cta, cta_acq, cta_rng, mip=options.extras
        )
        if slabs is not None:
            _write_mip(study, slabs, cta_acq)
    if options.extras:
        clock = time.perf_counter()
        _write_dose_report(study)
        study.add_time("dose_s", time.perf_counter() - clock)
    return _finish_study(study, started)


def _start_study(
    out_dir: Path, identity: StudyIdentity, options: WriteOptions, rng: np.random.Generator
) -> _Study:
    """The study's shared state: its folder, start time, UID salt and frame of reference."""
    out_dir.mkdir(parents=True, exist_ok=True)
    salt = f"{identity.study_uid}|{int(rng.integers(2**62))}|{sorted(asdict(options).items())}"
    study = _Study(
        out_dir=out_dir,
        identity=identity,
        options=options,
        start=parse_datetime(identity.study_date, identity.study_time),
        frame_uid="",
        salt=salt,
        table_height=round(float(rng.uniform(140.0, 175.0)), 1),
    )
    study.frame_uid = study.uid("frame-of-reference")
    return study


def _ncct_acquisition(tube_current_ma: int) -> Acquisition:
    """The non-contrast head CT: sequential 5 mm, soft kernel, brain window."""
    return Acquisition(
        role="ncct",
        series_number=2,
        description="Head 5.0 H31s",
        kernel="H31s",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        window=(40.0, 80.0, "BRAIN"),
        offset_s=75.0,
        tube_current_ma=tube_current_ma,
        exposure_time_ms=1000,
        revolution_s=1.0,
        ctdivol_mgy=round(tube_current_ma * 0.19, 2),
    )


def _cta_acquisition(tube_current_ma: int, slice_thickness: float) -> Acquisition:
    """The CT angiogram: spiral thin slices in the arterial phase, angio window."""
    thickness = format_number_as_ds(slice_thickness)
    return Acquisition(
        role="cta",
        series_number=3,
        description=f"CTA Head Neck {thickness} Hv36 Arterial",
        kernel="Hv36",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        window=(200.0, 700.0, "ANGIO"),
        offset_s=260.0,
        tube_current_ma=tube_current_ma,
        exposure_time_ms=500,
        revolution_s=0.5,
        ctdivol_mgy=round(tube_current_ma * 0.12, 2),
        spiral_pitch=0.9,
        contrast=True,
        phase="cta",
    )


def _finish_study(study: _Study, started: float) -> StudyFiles:
    """What was written, with the timings, logged once."""
    study.timings["sample_s"] = study.stats.sample_s
    study.timings["noise_s"] = study.stats.noise_s
    study.timings["total_s"] = time.perf_counter() - started
    files = StudyFiles(
        study_uid=study.identity.study_uid,
        frame_of_reference_uid=study.frame_uid,
        series=tuple(study.written),
        timings={k: round(v, 3) for k, v in study.timings.items()},
    )
    logger.info(
        "synthetic study written: %d series, %d files, %.1f s",
        len(files.series),
        sum(len(s.files) for s in files.series),
        study.timings["total_s"],
        extra={"study_uid": study.identity.study_uid},
    )
    return files


# --------------------------------------------------------------------------------------------
# Image series


def _write_localizer(
    study: _Study, phantom: HUSampler, pose: Pose, rng: np.random.Generator
) -> None:
    clock = time.perf_counter()
    geometry = localizer_geometry(pose, study.options.small)
    pixels = render_localizer(phantom, geometry, pose, rng)
    study.add_time("localizer_s", time.perf_counter() - clock)
    acq = Acquisition(
        role="localizer",
        series_number=1,
        description="Topogram 0.6 T20s",
        kernel="T20s",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        window=(2048.0, 4096.0, "TOPOGRAM"),
        offset_s=20.0,
        tube_current_ma=35,
        exposure_time_ms=2900,
        ctdivol_mgy=0.0,
    )
    series_uid = study.uid("series", acq.role)
    folder = _series_folder(study, acq.series_number, acq.role)
    template = _image_template(study, acq, geometry, series_uid)
    # A topogram is no HU image: unsigned 12-bit, no padding.
    template.BitsStored = 12
    template.HighBit = 11
    template.PixelRepresentation = 0
    template.RescaleIntercept = "0"
    del template.PixelPaddingValue
    del template.RescaleType
    del template.SliceLocation
    del template.SpacingBetweenSlices
    sop_uid = study.uid("image", acq.role, 0)
    clock = time.perf_counter()
    path = _write_image(study, template, folder, sop_uid, 1, geometry, 0, acq, pixels, 0.0)
    study.add_time("write_s", time.perf_counter() - clock)
    written = SeriesFiles(
        role=acq.role,
        series_number=acq.series_number,
        series_uid=series_uid,
        description=acq.description,
        folder=folder,
        files=(path,),
        instance_numbers=(1,),
        transfer_syntax=study.options.transfer_syntax,
        geometry=geometry,
    )
    study.written.append(written)
    study.acquisitions.append((written, acq))


def _instance_order(count: int, head_first: bool) -> list[int]:
    """Slice indices (bottom up) in instance number order."""
    return list(range(count - 1, -1, -1)) if head_first else list(range(count))


def _write_rendered_series(
    study: _Study,
    phantom: HUSampler,
    pose: Pose,
    geometry: SeriesGeometry,
    acq: Acquisition,
    rng: np.random.Generator,
    *,
    skip: Sequence[int] = (),
    mip: bool = False,
) -> _MipSlabs | None:
    """Render and write a series; with ``mip``, also return its slab maxima."""
    renderer = SliceRenderer(phantom, geometry, pose, acq.phase)
    rngs = rng.spawn(geometry.number_of_slices)
    series_uid = study.uid("series", acq.role)
    folder = _series_folder(study, acq.series_number, acq.role)
    template = _image_template(study, acq, geometry, series_uid)
    head_first = study.options.reversed_order
    order = _instance_order(geometry.number_of_slices, head_first)
    # Sequential scans take ~1.5 s per table position, a spiral ~6 s for the whole range.
    step_s = 1.5 if acq.spiral_pitch is None else 6.0 / geometry.number_of_slices
    slabs = _MipSlabs.of(geometry) if mip else None
    files: list[Path] = []
    numbers: list[int] = []
    missing: list[int] = []
    write_s = 0.0
    for rank, index in enumerate(order):
        number = rank + 1
        if index in skip:
            missing.append(number)
            continue
        hu = renderer.render(index, rngs[index])
        clock = time.perf_counter()
        sop_uid = study.uid("image", acq.role, index)
        if slabs is not None:
            slabs.add(index, hu, sop_uid)
        files.append(
            _write_image(
                study, template, folder, sop_uid, number, geometry, index, acq, hu, rank * step_s
            )
        )
        numbers.append(number)
        write_s += time.perf_counter() - clock
    study.stats.add(renderer.stats)
    study.add_time("write_s", write_s)
    written = SeriesFiles(
        role=acq.role,
        series_number=acq.series_number,
        series_uid=series_uid,
        description=acq.description,
        folder=folder,
        files=tuple(files),
        instance_numbers=tuple(numbers),
        transfer_syntax=study.options.transfer_syntax,
        geometry=geometry,
        missing_instance_numbers=tuple(missing),
        head_first=head_first,
    )
    study.written.append(written)
    study.acquisitions.append((written, acq))
    return slabs


def _write_mip(study: _Study, slabs: _MipSlabs, source_acq: Acquisition) -> None:
    clock = time.perf_counter()
    geometry, per_slab = slabs.geometry, slabs.per_slab
    acq = replace(
        source_acq,
        role="cta_mip",
        series_number=4,
        description=f"CTA MIP {as_ds(MIP_SLAB_MM)}mm",
        image_type=("DERIVED", "SECONDARY", "AXIAL"),
        offset_s=source_acq.offset_s + 150.0,
    )
    series_uid = study.uid("series", acq.role)
    folder = _series_folder(study, acq.series_number, acq.role)
    template = _image_template(study, acq, geometry, series_uid)
    template.DerivationDescription = (
        f"Maximum intensity projection over {per_slab} consecutive source images"
    )
    template.DerivationCodeSequence = DicomSequence(
        [code("113078", "DCM", "Maximum intensity projection")]
    )
    head_first = study.options.reversed_order
    files: list[Path] = []
    numbers: list[int] = []
    for rank, index in enumerate(_instance_order(geometry.number_of_slices, head_first)):
        refs = []
        for uid in slabs.source_uids[index]:
            ref = Dataset()
            ref.ReferencedSOPClassUID = CTImageStorage
            ref.ReferencedSOPInstanceUID = uid
            refs.append(ref)
        template.SourceImageSequence = DicomSequence(refs)
        sop_uid = study.uid("image", acq.role, index)
        files.append(
            _write_image(
                study,
                template,
                folder,
                sop_uid,
                rank + 1,
                geometry,
                index,
                acq,
                slabs.maxima[index],
                0,
            )
        )
        numbers.append(rank + 1)
    study.add_time("mip_s", time.perf_counter() - clock)
    study.written.append(
        SeriesFiles(
            role=acq.role,
            series_number=acq.series_number,
            series_uid=series_uid,
            description=acq.description,
            folder=folder,
            files=tuple(files),
            instance_numbers=tuple(numbers),
            transfer_syntax=study.options.transfer_syntax,
            geometry=geometry,
            head_first=head_first,
        )
    )


def _series_folder(study: _Study, series_number: int, role: str) -> Path:
    """The series folder, emptied of the images an earlier write may have left there."""
    folder = study.out_dir / f"{series_number}_{role}"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("IM*.dcm"):
        stale.unlink()
    return folder


def _image_template(
    study: _Study, acq: Acquisition, geometry: SeriesGeometry, series_uid: str
) -> Dataset:
    """The attributes every image of a series shares (CT Image IOD, PS3.3 A.3)."""
    series_time = study.start + timedelta(seconds=acq.offset_s)
    ds = common_dataset(study.identity, CTImageStorage)
    ds.ImageType = list(acq.image_type)
    ds.SeriesDate = as_da(series_time)
    ds.SeriesTime = as_tm(series_time)
    ds.Modality = "CT"
    ds.SeriesDescription = acq.description
    ds.ProtocolName = "Stroke Protocol"
    ds.BodyPartExamined = "HEAD"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = acq.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageComments = SYNTHETIC_COMMENT
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if acq.contrast:
        _set_contrast_bolus(ds, series_time)
    _set_ct_acquisition(ds, study, acq, geometry)
    _set_image_plane_and_pixels(ds, acq, geometry)
    return ds


def _set_contrast_bolus(ds: Dataset, series_time: datetime) -> None:
    """Contrast/Bolus module (PS3.3 C.7.6.4): the iodine injected 18 s before the series."""
    bolus_start = series_time - timedelta(seconds=18)
    ds.ContrastBolusAgent = CONTRAST_AGENT
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = "60"
    ds.ContrastBolusStartTime = as_tm(bolus_start)
    ds.ContrastBolusTotalDose = "21"
    ds.ContrastFlowRate = ["5"]
    ds.ContrastFlowDuration = ["12"]
    ds.ContrastBolusIngredient = "IODINE"
    ds.ContrastBolusIngredientConcentration = "350"


def _set_ct_acquisition(
    ds: Dataset, study: _Study, acq: Acquisition, geometry: SeriesGeometry
) -> None:
    """CT Image module (PS3.3 C.8.2.1): acquisition and reconstruction, dose index."""
    ds.SliceThickness = as_ds(geometry.slice_thickness)
    ds.SpacingBetweenSlices = as_ds(geometry.spacing_between_slices)
    ds.KVP = as_ds(acq.kvp)
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = as_ds(geometry.reconstruction_diameter)
    ds.DistanceSourceToDetector = "1085.6"
    ds.DistanceSourceToPatient = "595"
    ds.GantryDetectorTilt = as_ds(geometry.gantry_tilt_deg)
    ds.TableHeight = as_ds(study.table_height)
    ds.RotationDirection = "CW"
    ds.ExposureTime = str(acq.exposure_time_ms)
    ds.XRayTubeCurrent = str(acq.tube_current_ma)
    ds.Exposure = str(acq.exposure_mas)
    ds.GeneratorPower = str(round(acq.kvp * acq.tube_current_ma / 1000))
    ds.FocalSpots = "0.7" if acq.tube_current_ma < 300 else "1.2"
    ds.ConvolutionKernel = acq.kernel
    ds.RevolutionTime = acq.revolution_s
    ds.SingleCollimationWidth = acq.single_collimation_mm
    ds.TotalCollimationWidth = acq.total_collimation_mm
    if acq.spiral_pitch is not None:
        feed = acq.spiral_pitch * acq.total_collimation_mm
        ds.SpiralPitchFactor = acq.spiral_pitch
        ds.TableFeedPerRotation = round(feed, 4)
        ds.TableSpeed = round(feed / acq.revolution_s, 4)
    if acq.ctdivol_mgy > 0:
        ds.CTDIvol = acq.ctdivol_mgy
        ds.CTDIPhantomTypeCodeSequence = DicomSequence(
            [code("113690", "DCM", "IEC Head Dosimetry Phantom")]
        )


def _set_image_plane_and_pixels(ds: Dataset, acq: Acquisition, geometry: SeriesGeometry) -> None:
    """Image Plane and Image Pixel attributes shared by the series, the HU rescale and window."""
    ds.ImageOrientationPatient = [as_ds(v) for v in geometry.image_orientation]
    ds.PixelSpacing = [as_ds(v) for v in geometry.pixel_spacing]
    ds.SliceLocation = "0"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geometry.rows
    ds.Columns = geometry.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelPaddingValue = PIXEL_PADDING_VALUE
    ds.WindowCenter = as_ds(acq.window[0])
    ds.WindowWidth = as_ds(acq.window[1])
    ds.WindowCenterWidthExplanation = acq.window[2]
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"


def _write_image(
    study: _Study,
    ds: Dataset,
    folder: Path,
    sop_uid: str,
    number: int,
    geometry: SeriesGeometry,
    index: int,
    acq: Acquisition,
    pixels: HUArray | npt.NDArray[np.uint16],
    after_s: float,
) -> Path:
    """Fill the per-image attributes of ``ds``, encode ``pixels`` and write the file."""
    acquired = study.start + timedelta(seconds=acq.offset_s + after_s)
    content = acquired + timedelta(seconds=25)
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.InstanceNumber = number
    ds.AcquisitionDate = as_da(acquired)
    ds.AcquisitionTime = as_tm(acquired)
    ds.ContentDate = as_da(content)
    ds.ContentTime = as_tm(content)
    ds.ImagePositionPatient = [as_ds(v) for v in geometry.positions[index]]
    if "SliceLocation" in ds:
        ds.SliceLocation = as_ds(round(float(geometry.center(index)[2]), 4))
    # HU -> stored value (the -2048 HU outside the circle becomes the padding value -1024).
    stored: npt.NDArray[Any] = (
        pixels - np.int16(RESCALE_INTERCEPT) if pixels.dtype == np.int16 else pixels
    )
    set_pixel_data(ds, np.ascontiguousarray(stored), study.options.transfer_syntax)
    path = folder / f"IM{number:05d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------
# Dose report


def _write_dose_report(study: _Study) -> None:
    """Build the dose SR of the acquisitions written so far and write it as its own series."""
    acquisitions = []
    for series, acq in study.acquisitions:
        if series.geometry is None:
            raise ValueError(f"series {series.role} has no geometry")
        acquisitions.append((acq, series.geometry))
    ds = build_dose_report(study.identity, study.start, acquisitions, study.uid)
    folder = _series_folder(study, int(ds.SeriesNumber), "dose")
    path = folder / "IM00001.dcm"
    ds.save_as(path, enforce_file_format=True)
    study.written.append(
        SeriesFiles(
            role="dose",
            series_number=int(ds.SeriesNumber),
            series_uid=str(ds.SeriesInstanceUID),
            description=str(ds.SeriesDescription),
            folder=folder,
            files=(path,),
            instance_numbers=(1,),
            transfer_syntax=ExplicitVRLittleEndian,
        )
    )
