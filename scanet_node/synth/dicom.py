"""Writing a synthetic stroke study as the DICOM files a CT scanner would send.

One study holds what a stroke protocol produces and what the node has to choose from: a lateral
localizer, the non-contrast head CT (5 mm), the CT angiogram (thin slices), thick-slab MIPs
derived from the angiogram and an X-Ray Radiation Dose SR. Images are CT Image Storage, one file
per image, int16 pixels with RescaleIntercept -1024 and PixelPaddingValue outside the
reconstruction circle, in Explicit VR Little Endian or, as a variant, RLE or JPEG Lossless.
Every file says it is synthetic (Manufacturer ``SCANET-SYNTH``, ImageComments).

UIDs are derived from the study UID, the options and a number drawn from the caller's random
generator, so the same inputs write the same files.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    XRayRadiationDoseSRStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from scanet_node import __version__
from scanet_node.synth.scanner import (
    HUArray,
    HUSampler,
    Pose,
    RenderStats,
    SeriesGeometry,
    SliceRenderer,
    cta_geometry,
    localizer_geometry,
    mip_geometry,
    ncct_geometry,
    render_localizer,
)

logger = logging.getLogger(__name__)

ROLES: Final = ("localizer", "ncct", "cta", "cta_mip", "dose")
TRANSFER_SYNTAXES: Final = (ExplicitVRLittleEndian, RLELossless, JPEGLosslessSV1)

RESCALE_INTERCEPT: Final = -1024
#: Stored value of pixels outside the reconstruction circle (-2048 HU).
PIXEL_PADDING_VALUE: Final = -1024
MIP_SLAB_MM: Final = 10.0

MANUFACTURER: Final = "SCANET-SYNTH"
MODEL_NAME: Final = "Synthetic CT 64"
DEVICE_SERIAL_NUMBER: Final = "SYN-0001"
STATION_NAME: Final = "SYNTHCT01"
INSTITUTION_NAME: Final = "Synthetic Cohort"
SOFTWARE_VERSIONS: Final = f"scanet-node {__version__} synth"
STUDY_DESCRIPTION: Final = "CT HEAD STROKE PROTOCOL"
SYNTHETIC_COMMENT: Final = "SYNTHETIC IMAGE made by scanet-node synth; not from a patient"
CONTRAST_AGENT: Final = "Iohexol 350 mgI/ml"

_UID_ROOT: Final = "scanet-synth"


@dataclass(frozen=True)
class StudyIdentity:
    """The (made-up) patient and the study, as the caller draws them.

    ``study_date`` is YYYYMMDD and ``study_time`` HHMMSS; the series follow minutes after.
    """

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    accession: str
    study_uid: str
    study_date: str
    study_time: str
    study_id: str = "1"

    def __post_init__(self) -> None:
        checks = {
            "patient_id": len(self.patient_id) <= 64 and "\\" not in self.patient_id,
            "birth_date": re.fullmatch(r"\d{8}", self.birth_date) is not None,
            "sex": self.sex in ("M", "F", "O", ""),
            "age": re.fullmatch(r"\d{3}[DWMY]", self.age) is not None,
            "accession": len(self.accession) <= 16,
            "study_uid": len(self.study_uid) <= 64
            and re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))+", self.study_uid) is not None,
            "study_date": re.fullmatch(r"\d{8}", self.study_date) is not None,
            "study_time": re.fullmatch(r"\d{6}(\.\d{1,6})?", self.study_time) is not None,
            "study_id": len(self.study_id) <= 16,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid study identity: {', '.join(bad)}")


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


@dataclass(frozen=True)
class _Acquisition:
    """Technique of one series as the scanner would report it."""

    role: str
    series_number: int
    description: str
    kernel: str
    image_type: tuple[str, ...]
    window: tuple[float, float, str]
    offset_s: float  # series start after the study time
    kvp: float = 120.0
    tube_current_ma: int = 0
    exposure_time_ms: int = 0
    revolution_s: float = 1.0
    ctdivol_mgy: float = 0.0
    single_collimation_mm: float = 0.6
    total_collimation_mm: float = 19.2
    spiral_pitch: float | None = None
    contrast: bool = False
    phase: str = "ncct"

    @property
    def exposure_mas(self) -> int:
        return round(self.tube_current_ma * self.exposure_time_ms / 1000)


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
    acquisitions: list[tuple[SeriesFiles, _Acquisition]] = field(default_factory=list)
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
    if options.transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {options.transfer_syntax}")
    if options.transfer_syntax == JPEGLosslessSV1 and importlib.util.find_spec("gdcm") is None:
        raise ValueError("JPEG Lossless needs python-gdcm to encode; it is not installed")
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    salt = f"{identity.study_uid}|{int(rng.integers(2**62))}|{sorted(asdict(options).items())}"
    study = _Study(
        out_dir=out_dir,
        identity=identity,
        options=options,
        start=_parse_datetime(identity.study_date, identity.study_time),
        frame_uid="",
        salt=salt,
        table_height=round(float(rng.uniform(140.0, 175.0)), 1),
    )
    study.frame_uid = study.uid("frame-of-reference")

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
    ncct_acq = _Acquisition(
        role="ncct",
        series_number=2,
        description="Head 5.0 H31s",
        kernel="H31s",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        window=(40.0, 80.0, "BRAIN"),
        offset_s=75.0,
        tube_current_ma=ncct_ma,
        exposure_time_ms=1000,
        revolution_s=1.0,
        ctdivol_mgy=round(ncct_ma * 0.19, 2),
    )
    missing = (ncct.number_of_slices // 2,) if options.missing_ncct_slice else ()
    _write_rendered_series(study, phantom, pose, ncct, ncct_acq, ncct_rng, skip=missing)

    if cta is not None:
        thickness = format_number_as_ds(cta.slice_thickness)
        cta_acq = _Acquisition(
            role="cta",
            series_number=3,
            description=f"CTA Head Neck {thickness} Hv36 Arterial",
            kernel="Hv36",
            image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
            window=(200.0, 700.0, "ANGIO"),
            offset_s=260.0,
            tube_current_ma=cta_ma,
            exposure_time_ms=500,
            revolution_s=0.5,
            ctdivol_mgy=round(cta_ma * 0.12, 2),
            spiral_pitch=0.9,
            contrast=True,
            phase="cta",
        )
        slabs = _write_rendered_series(
            study, phantom, pose, cta, cta_acq, cta_rng, mip=options.extras
        )
        if slabs is not None:
            _write_mip(study, slabs, cta_acq)
    if options.extras:
        clock = time.perf_counter()
        _write_dose_report(study)
        study.add_time("dose_s", time.perf_counter() - clock)

    study.timings["sample_s"] = study.stats.sample_s
    study.timings["noise_s"] = study.stats.noise_s
    study.timings["total_s"] = time.perf_counter() - started
    files = StudyFiles(
        study_uid=identity.study_uid,
        frame_of_reference_uid=study.frame_uid,
        series=tuple(study.written),
        timings={k: round(v, 3) for k, v in study.timings.items()},
    )
    logger.info(
        "synthetic study written: %d series, %d files, %.1f s",
        len(files.series),
        sum(len(s.files) for s in files.series),
        study.timings["total_s"],
        extra={"study_uid": identity.study_uid},
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
    acq = _Acquisition(
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
    acq: _Acquisition,
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


def _write_mip(study: _Study, slabs: _MipSlabs, source_acq: _Acquisition) -> None:
    clock = time.perf_counter()
    geometry, per_slab = slabs.geometry, slabs.per_slab
    acq = replace(
        source_acq,
        role="cta_mip",
        series_number=4,
        description=f"CTA MIP {_ds(MIP_SLAB_MM)}mm",
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
        [_code("113078", "DCM", "Maximum intensity projection")]
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
    study: _Study, acq: _Acquisition, geometry: SeriesGeometry, series_uid: str
) -> Dataset:
    """The attributes every image of a series shares (CT Image IOD, PS3.3 A.3)."""
    series_time = study.start + timedelta(seconds=acq.offset_s)
    ds = _common_dataset(study, CTImageStorage)
    ds.ImageType = list(acq.image_type)
    ds.SeriesDate = _da(series_time)
    ds.SeriesTime = _tm(series_time)
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
        bolus_start = series_time - timedelta(seconds=18)
        ds.ContrastBolusAgent = CONTRAST_AGENT
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = "60"
        ds.ContrastBolusStartTime = _tm(bolus_start)
        ds.ContrastBolusTotalDose = "21"
        ds.ContrastFlowRate = ["5"]
        ds.ContrastFlowDuration = ["12"]
        ds.ContrastBolusIngredient = "IODINE"
        ds.ContrastBolusIngredientConcentration = "350"
    # CT acquisition and reconstruction
    ds.SliceThickness = _ds(geometry.slice_thickness)
    ds.SpacingBetweenSlices = _ds(geometry.spacing_between_slices)
    ds.KVP = _ds(acq.kvp)
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = _ds(geometry.reconstruction_diameter)
    ds.DistanceSourceToDetector = "1085.6"
    ds.DistanceSourceToPatient = "595"
    ds.GantryDetectorTilt = _ds(geometry.gantry_tilt_deg)
    ds.TableHeight = _ds(study.table_height)
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
            [_code("113690", "DCM", "IEC Head Dosimetry Phantom")]
        )
    # Image plane and pixels
    ds.ImageOrientationPatient = [_ds(v) for v in geometry.image_orientation]
    ds.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing]
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
    ds.WindowCenter = _ds(acq.window[0])
    ds.WindowWidth = _ds(acq.window[1])
    ds.WindowCenterWidthExplanation = acq.window[2]
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def _write_image(
    study: _Study,
    ds: Dataset,
    folder: Path,
    sop_uid: str,
    number: int,
    geometry: SeriesGeometry,
    index: int,
    acq: _Acquisition,
    pixels: HUArray | npt.NDArray[np.uint16],
    after_s: float,
) -> Path:
    """Fill the per-image attributes of ``ds``, encode ``pixels`` and write the file."""
    acquired = study.start + timedelta(seconds=acq.offset_s + after_s)
    content = acquired + timedelta(seconds=25)
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.InstanceNumber = number
    ds.AcquisitionDate = _da(acquired)
    ds.AcquisitionTime = _tm(acquired)
    ds.ContentDate = _da(content)
    ds.ContentTime = _tm(content)
    ds.ImagePositionPatient = [_ds(v) for v in geometry.positions[index]]
    if "SliceLocation" in ds:
        ds.SliceLocation = _ds(round(float(geometry.center(index)[2]), 4))
    # HU -> stored value (the -2048 HU outside the circle becomes the padding value -1024).
    stored: npt.NDArray[Any] = (
        pixels - np.int16(RESCALE_INTERCEPT) if pixels.dtype == np.int16 else pixels
    )
    _set_pixel_data(ds, np.ascontiguousarray(stored), study.options.transfer_syntax)
    path = folder / f"IM{number:05d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _set_pixel_data(ds: Dataset, stored: npt.NDArray[Any], transfer_syntax: str) -> None:
    """Put ``stored`` into ``ds`` in ``transfer_syntax``."""
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        ds["PixelData"].is_undefined_length = False
    elif transfer_syntax == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(RLELossless, stored, generate_instance_uid=False)
    elif transfer_syntax == JPEGLosslessSV1:
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([_jpeg_lossless(stored, ds)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")


def _jpeg_lossless(stored: npt.NDArray[Any], ds: Dataset) -> bytes:
    """One frame as JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 SV1).

    pydicom has no encoder for it; GDCM's ImageChangeTransferSyntax has (python-gdcm, imported
    by name so that type checking does not depend on it being installed).
    """
    gdcm: Any = importlib.import_module("gdcm")

    # gdcm.ImageWriter owns the gdcm.Image; keep it alive while the image is used.
    writer = gdcm.ImageWriter()
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((int(ds.Columns), int(ds.Rows), 1))
    image.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2)
    )
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    image.SetPixelFormat(
        gdcm.PixelFormat(
            1,
            int(ds.BitsAllocated),
            int(ds.BitsStored),
            int(ds.HighBit),
            int(ds.PixelRepresentation),
        )
    )
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetByteStringValue(
        stored.astype("<i2" if stored.dtype.kind == "i" else "<u2").tobytes()
    )
    image.SetDataElement(element)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(image)
    if not change.Change():
        raise RuntimeError("GDCM could not encode JPEG Lossless")
    fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
    if fragments is None or fragments.GetNumberOfFragments() < 1:
        raise RuntimeError("GDCM returned no JPEG Lossless fragments")
    return b"".join(
        fragments.GetFragment(i).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")
        for i in range(fragments.GetNumberOfFragments())
    )


# --------------------------------------------------------------------------------------------
# Dose report


def _write_dose_report(study: _Study) -> None:
    ds = _build_dose_report(study)
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


def _build_dose_report(study: _Study) -> Dataset:
    """X-Ray Radiation Dose SR of the image series written so far.

    Implements TID 10011 "CT Radiation Dose" (PS3.16) with one TID 10013 "CT Irradiation Event
    Data" per acquisition (localizer, NCCT, CTA), each with its CT Acquisition Parameters and,
    but for the localizer, its CT Dose (CTDIvol, DLP); the IOD is PS3.3 A.35.8.
    """
    ds = _common_dataset(study, XRayRadiationDoseSRStorage)
    report_time = study.start + timedelta(seconds=600)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = study.uid("series", "dose")
    ds.SeriesNumber = 501
    ds.SeriesDescription = "Dose Report"
    ds.SeriesDate = _da(report_time)
    ds.SeriesTime = _tm(report_time)
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.SOPInstanceUID = study.uid("image", "dose", 0)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.InstanceNumber = 1
    ds.ContentDate = _da(report_time)
    ds.ContentTime = _tm(report_time)
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = DicomSequence()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence(
        [_code("113701", "DCM", "X-Ray Radiation Dose Report")]
    )
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "10011"
    ds.ContentTemplateSequence = DicomSequence([template])

    events: list[Dataset] = []
    total_dlp = 0.0
    first = last = None
    for series, acq in study.acquisitions:
        geometry = series.geometry
        if geometry is None:
            raise ValueError(f"series {series.role} has no geometry")
        start = study.start + timedelta(seconds=acq.offset_s)
        if series.role == "localizer":
            length = geometry.rows * geometry.pixel_spacing[0]
            seconds = acq.exposure_time_ms / 1000
        elif acq.spiral_pitch is None:
            length = geometry.number_of_slices * geometry.spacing_between_slices
            seconds = acq.exposure_time_ms / 1000 * geometry.number_of_slices
        else:
            length = geometry.number_of_slices * geometry.spacing_between_slices
            rotations = length / (acq.spiral_pitch * acq.total_collimation_mm)
            seconds = rotations * acq.revolution_s
        first = start if first is None else min(first, start)
        end = start + timedelta(seconds=seconds)
        last = end if last is None else max(last, end)
        acq_type = {
            "localizer": _code("113805", "DCM", "Constant Angle Acquisition"),
            "ncct": _code("113804", "DCM", "Sequenced Acquisition"),
            "cta": _code("116152004", "SCT", "Spiral Acquisition"),
        }[series.role]
        source = _container(
            "113831",
            "CT X-Ray Source Parameters",
            [
                _text("113832", "Identification of the X-Ray Source", "A"),
                _num("113733", "KVP", acq.kvp, "kV", "kV"),
                _num("113833", "Maximum X-Ray Tube Current", acq.tube_current_ma, "mA", "mA"),
                _num("113734", "X-Ray Tube Current", acq.tube_current_ma, "mA", "mA"),
                _num("113834", "Exposure Time per Rotation", acq.revolution_s, "s", "s"),
            ],
        )
        parameters = _container(
            "113822",
            "CT Acquisition Parameters",
            [
                _num("113824", "Exposure Time", round(seconds, 3), "s", "s"),
                _num("113825", "Scanning Length", round(length, 2), "mm", "mm"),
                _num(
                    "113826",
                    "Nominal Single Collimation Width",
                    acq.single_collimation_mm,
                    "mm",
                    "mm",
                ),
                _num(
                    "113827",
                    "Nominal Total Collimation Width",
                    acq.total_collimation_mm,
                    "mm",
                    "mm",
                ),
                _num("113823", "Number of X-Ray Sources", 1, "{X-Ray sources}", "X-Ray sources"),
                source,
            ],
        )
        children = [
            _text("125203", "Acquisition Protocol", acq.description),
            _code_item("123014", "Target Region", _code("69536005", "SCT", "Head")),
            _code_item("113820", "CT Acquisition Type", acq_type),
            _uidref("113769", "Irradiation Event UID", study.uid("irradiation", series.role)),
            parameters,
        ]
        if series.role != "localizer":
            ctdivol = acq.ctdivol_mgy
            dlp = round(ctdivol * length / 10.0, 2)
            total_dlp += dlp
            children.append(
                _container(
                    "113829",
                    "CT Dose",
                    [
                        _num("113830", "Mean CTDIvol", ctdivol, "mGy", "mGy"),
                        _code_item(
                            "113835",
                            "CTDIw Phantom Type",
                            _code("113690", "DCM", "IEC Head Dosimetry Phantom"),
                        ),
                        _num("113838", "DLP", dlp, "mGy.cm", "mGy.cm"),
                    ],
                )
            )
        events.append(_container("113819", "CT Acquisition", children))

    scope = _code_item(
        "113705", "Scope of Accumulation", _code("113014", "DCM", "Study"), "HAS OBS CONTEXT"
    )
    scope.ContentSequence = DicomSequence(
        [_uidref("110180", "Study Instance UID", study.identity.study_uid, "HAS PROPERTIES")]
    )
    content = [
        _code_item(
            "121058",
            "Procedure reported",
            _code("77477000", "SCT", "Computed Tomography X-Ray"),
            "HAS CONCEPT MOD",
        ),
        _code_item("121005", "Observer Type", _code("121007", "DCM", "Device"), "HAS OBS CONTEXT"),
        _uidref("121012", "Device Observer UID", study.uid("device"), "HAS OBS CONTEXT"),
        _text("121013", "Device Observer Name", STATION_NAME, "HAS OBS CONTEXT"),
        _text("121014", "Device Observer Manufacturer", MANUFACTURER, "HAS OBS CONTEXT"),
        _text("121015", "Device Observer Model Name", MODEL_NAME, "HAS OBS CONTEXT"),
        _text("121016", "Device Observer Serial Number", DEVICE_SERIAL_NUMBER, "HAS OBS CONTEXT"),
        _datetime("113809", "Start of X-Ray Irradiation", first or study.start, "HAS OBS CONTEXT"),
        _datetime("113810", "End of X-Ray Irradiation", last or study.start, "HAS OBS CONTEXT"),
        scope,
        _container(
            "113811",
            "CT Accumulated Dose Data",
            [
                _num(
                    "113812",
                    "Total Number of Irradiation Events",
                    len(events),
                    "{events}",
                    "events",
                ),
                _num(
                    "113813",
                    "CT Dose Length Product Total",
                    round(total_dlp, 2),
                    "mGy.cm",
                    "mGy.cm",
                ),
            ],
        ),
        *events,
        _code_item(
            "113854",
            "Source of Dose Information",
            _code("113856", "DCM", "Automated Data Collection"),
        ),
    ]
    ds.ContentSequence = DicomSequence(content)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _content_item(
    relationship: str, value_type: str, value: str, meaning: str, scheme: str = "DCM"
) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = DicomSequence([_code(value, scheme, meaning)])
    return item


def _container(value: str, meaning: str, children: Iterable[Dataset]) -> Dataset:
    item = _content_item("CONTAINS", "CONTAINER", value, meaning)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = DicomSequence(list(children))
    return item


def _num(
    value: str, meaning: str, number: float, unit: str, unit_meaning: str, rel: str = "CONTAINS"
) -> Dataset:
    item = _content_item(rel, "NUM", value, meaning)
    measured = Dataset()
    measured.NumericValue = _ds(float(number))
    measured.MeasurementUnitsCodeSequence = DicomSequence([_code(unit, "UCUM", unit_meaning)])
    item.MeasuredValueSequence = DicomSequence([measured])
    return item


def _text(value: str, meaning: str, text: str, rel: str = "CONTAINS") -> Dataset:
    item = _content_item(rel, "TEXT", value, meaning)
    item.TextValue = text
    return item


def _code_item(value: str, meaning: str, code: Dataset, rel: str = "CONTAINS") -> Dataset:
    item = _content_item(rel, "CODE", value, meaning)
    item.ConceptCodeSequence = DicomSequence([code])
    return item


def _uidref(value: str, meaning: str, uid: str, rel: str = "CONTAINS") -> Dataset:
    item = _content_item(rel, "UIDREF", value, meaning)
    item.UID = uid
    return item


def _datetime(value: str, meaning: str, when: datetime, rel: str = "CONTAINS") -> Dataset:
    item = _content_item(rel, "DATETIME", value, meaning)
    item.DateTime = when.strftime("%Y%m%d%H%M%S")
    return item


# --------------------------------------------------------------------------------------------
# Shared attributes and value formats


def _common_dataset(study: _Study, sop_class_uid: str) -> Dataset:
    """Patient, General Study, General Equipment and SOP Common attributes."""
    identity = study.identity
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationVersionName = "SCANET_SYNTH"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = identity.study_date
    ds.InstanceCreationTime = identity.study_time
    ds.SOPClassUID = sop_class_uid
    ds.StudyDate = identity.study_date
    ds.StudyTime = identity.study_time
    ds.AccessionNumber = identity.accession
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION_NAME
    ds.ReferringPhysicianName = ""
    ds.StationName = STATION_NAME
    ds.StudyDescription = STUDY_DESCRIPTION
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = DEVICE_SERIAL_NUMBER
    ds.SoftwareVersions = SOFTWARE_VERSIONS
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.sex
    ds.PatientAge = identity.age
    ds.StudyInstanceUID = identity.study_uid
    ds.StudyID = identity.study_id
    return ds


def _parse_datetime(date: str, time_of_day: str) -> datetime:
    """A DICOM DA and TM (fraction optional) as one datetime."""
    whole, _, fraction = time_of_day.partition(".")
    whole = whole.ljust(6, "0")
    parsed = datetime.strptime(date + whole, "%Y%m%d%H%M%S")
    if fraction:
        parsed += timedelta(microseconds=int(fraction.ljust(6, "0")[:6]))
    return parsed


def _da(when: datetime) -> str:
    return when.strftime("%Y%m%d")


def _tm(when: datetime) -> str:
    return when.strftime("%H%M%S.%f")


def _ds(value: float) -> str:
    """A number as a valid DS string (at most 16 characters; whole numbers without ".0")."""
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return str(format_number_as_ds(number))
