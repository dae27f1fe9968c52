"""Secondary Capture images of the result: attention overlays on NCCT slices, and a summary.

RGB, 8 bit, Explicit VR Little Endian, filed in ``study.target``'s study (PS3.3 A.8.1,
Secondary Capture Image IOD), so any viewer shows them next to the CT. Rendering is matplotlib's
Agg canvas, without pyplot, so it is thread-safe and needs no display.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from scanet_node.catalog.models import JobOutcome
from scanet_node.config import RESULTS_SERIES_NUMBER
from scanet_node.png import save_png
from scanet_node.results import _common
from scanet_node.results.types import (
    AnalysisResult,
    OverlaySlice,
    ResultsError,
    StudyRefs,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: Brain window of the NCCT under the overlay (PS3.3 C.11.2.1.2 terms: centre, width).
WINDOW_CENTER = 40.0
WINDOW_WIDTH = 80.0
#: Attention below this is not drawn; above it, opacity grows with attention up to MAX_ALPHA.
MIN_ATTENTION = 0.1
MAX_ALPHA = 0.75
COLORMAP = "inferno"

_OVERLAY_SIZE = (512, 768)  # rows, columns: 512 x 512 image, 256 wide side panel
_SUMMARY_SIZE = (640, 960)
_DPI = 100
_BACKGROUND = "black"


def composite(
    hu: npt.NDArray[np.floating[Any]], attention: npt.NDArray[np.floating[Any]]
) -> npt.NDArray[np.uint8]:
    """The slice in the brain window with the attention blended on top, RGB ``uint8``.

    Where attention is below :data:`MIN_ATTENTION` the pixel stays grey (R = G = B).
    """
    from matplotlib import colormaps

    low = WINDOW_CENTER - WINDOW_WIDTH / 2
    grey = np.clip((hu.astype(np.float64) - low) / WINDOW_WIDTH, 0.0, 1.0)[..., None]
    att = np.clip(attention.astype(np.float64), 0.0, 1.0)
    colour: npt.NDArray[np.float64] = np.asarray(colormaps[COLORMAP](att))[..., :3]
    alpha = np.where(att >= MIN_ATTENTION, MAX_ALPHA * att, 0.0)[..., None]
    rgb = (1.0 - alpha) * grey + alpha * colour
    return np.round(rgb * 255.0).astype(np.uint8)


def build_overlays(
    study: StudyRefs, result: AnalysisResult, *, series_number: int = RESULTS_SERIES_NUMBER + 1
) -> list[Dataset]:
    """One Secondary Capture per ``result.overlays`` item: the attention on its NCCT slice.

    The image is 768 x 512: the slice (brain window W 80 L 40, attention in inferno, opacity
    proportional to attention) scaled into the left 512 x 512, a side panel with a colour bar,
    the slab and its weight, the probability and, for a synthetic-trained model, the research
    use note. Each instance references its NCCT slice in the Source Image Sequence.

    Raises
    ------
    ResultsError
        When an input cannot make valid images; the message names it.
    """
    _common.validate(study, result)
    seed = study.uid_seed
    series_uid = _common.uid(seed, "sc-overlay", "series")
    out = []
    for k, overlay in enumerate(result.overlays, start=1):
        rgb = _render_overlay(overlay, result)
        lines = [
            f"SCANet attention overlay: slab {overlay.slab + 1}/{_common.SLABS}, "
            f"slice weight {100 * overlay.slice_weight:.1f} %",
            _probability_line(result),
            _common.research_statement(result),
        ]
        sc = _sc_image(
            study,
            result,
            rgb,
            series_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=_common.uid(seed, "sc-overlay", str(k), overlay.source.SOPInstanceUID),
            instance_number=k,
            what="attention",
            orientation=_patient_orientation(overlay.source),
            comments="; ".join(lines),
            derivation=(
                "NCCT slice in a brain window (W 80 L 40) with the SCANet attention map "
                "(spatial attention times the slab's cross-attention weight) blended in colour"
            ),
        )
        source = Dataset()
        source.ReferencedSOPClassUID = overlay.source.SOPClassUID
        source.ReferencedSOPInstanceUID = overlay.source.SOPInstanceUID
        source.PurposeOfReferenceCodeSequence = [_purpose_of_reference()]
        sc.SourceImageSequence = [source]
        out.append(sc)
    return out


def build_summary(
    study: StudyRefs, result: AnalysisResult, *, series_number: int = RESULTS_SERIES_NUMBER + 2
) -> Dataset:
    """One Secondary Capture that summarises the result (960 x 640).

    Analysed: the probability of mTICI >= 2c (large), the class at the threshold, a bar chart
    of the 26 slab weights (inferior to superior, the three largest highlighted). Not
    analysable: "NOT ANALYSABLE" and the reason. Both: the model, version and weights digest,
    and the research use note.

    Raises
    ------
    ResultsError
        When an input cannot make a valid image; the message names it.
    """
    _common.validate(study, result)
    rgb = _render_summary(result)
    if result.status == JobOutcome.ANALYSED:
        comments = [_probability_line(result)]
    else:
        comments = [f"NOT ANALYSABLE ({result.reason}): {result.detail}"]
    comments.append(_common.research_statement(result))
    return _sc_image(
        study,
        result,
        rgb,
        series_uid=_common.uid(study.uid_seed, "sc-summary", "series"),
        series_number=series_number,
        sop_instance_uid=_common.uid(study.uid_seed, "sc-summary", "instance"),
        instance_number=1,
        what="summary",
        orientation=None,
        comments="; ".join(comments),
        derivation="Summary of the SCANet analysis of the study's NCCT and CTA",
    )


def write_png(ds: Dataset, path: Path) -> Path:
    """Save a Secondary Capture's pixels (RGB or grey, 8 bit) as a PNG; return ``path``."""
    pixels = ds.pixel_array
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ResultsError(f"{ds.SOPInstanceUID}: not an 8-bit single-frame image")
    return save_png(pixels, path)


def _probability_line(result: AnalysisResult) -> str:
    assert result.probability is not None
    threshold = _common.percent(result.algorithm.threshold)
    return (
        f"P(mTICI >= 2c) = {_common.percent(result.probability):.1f} %, predicted "
        f"{_common.class_text(result)} at threshold {threshold:.1f} %"
    )


def _model_line(result: AnalysisResult) -> str:
    algo = result.algorithm
    return (
        f"{algo.name} {algo.version}, weights sha256 {algo.checkpoint_sha256[:12]}, "
        f"input {algo.input_size}"
    )


def _patient_orientation(source: Dataset) -> tuple[str, str]:
    """The PS3.3 C.7.6.1.1.1 letters of the row and column directions (dominant axis)."""
    iop = [float(v) for v in source.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    return _direction_letter(iop[:3]), _direction_letter(iop[3:])


def _direction_letter(vector: list[float]) -> str:
    axis = int(np.argmax(np.abs(vector)))
    positive = vector[axis] >= 0
    return ("L", "P", "H")[axis] if positive else ("R", "A", "F")[axis]


_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


def warm_up() -> None:
    """Import the rendering and DICOM-building libraries and draw a little text once, so that
    a worker's first study does not pay for it (about 0.7 s: imports and the font cache)."""
    import highdicom  # noqa: F401

    fig = _figure((32, 32))
    fig.text(0.5, 0.5, "SCANet", color="white", fontsize=8, ha="center")
    _pixels(fig, (32, 32))


def _figure(size: tuple[int, int]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = size
    fig = Figure(figsize=(cols / _DPI, rows / _DPI), dpi=_DPI, facecolor=_BACKGROUND)
    FigureCanvasAgg(fig)
    return fig


def _pixels(fig: Figure, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    rgb = np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)
    if rgb.shape[:2] != size:
        raise ResultsError(f"rendered {rgb.shape[:2]}, expected {size}")
    return rgb


def _render_overlay(overlay: OverlaySlice, result: AnalysisResult) -> npt.NDArray[np.uint8]:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rows, cols = _OVERLAY_SIZE
    fig = _figure(_OVERLAY_SIZE)
    image_width = rows / cols
    ax = fig.add_axes((0.0, 0.0, image_width, 1.0))
    ax.set_facecolor(_BACKGROUND)
    ax.set_axis_off()
    spacing = overlay.source.get("PixelSpacing") or [1.0, 1.0]
    aspect = float(spacing[0]) / float(spacing[1])
    ax.imshow(composite(overlay.hu, overlay.attention), aspect=aspect, interpolation="bilinear")
    row_dir, col_dir = _patient_orientation(overlay.source)
    marks = {
        (0.02, 0.5, "left", "center"): _OPPOSITE[row_dir],
        (0.98, 0.5, "right", "center"): row_dir,
        (0.5, 0.98, "center", "top"): _OPPOSITE[col_dir],
        (0.5, 0.02, "center", "bottom"): col_dir,
    }
    for (x, y, ha, va), letter in marks.items():
        ax.text(x, y, letter, color="white", fontsize=14, ha=ha, va=va, transform=ax.transAxes)

    left = image_width + 0.02
    cax = fig.add_axes((left, 0.20, 0.035, 0.36))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormaps[COLORMAP]), cax=cax)
    bar.set_ticks([0.0, 0.5, 1.0])
    bar.ax.tick_params(colors="white", labelsize=9)
    bar.outline.set_edgecolor("white")
    fig.text(left, 0.58, "attention\n(relative)", color="white", fontsize=10, va="bottom")
    assert result.probability is not None
    panel = [
        ("SCANet", 16, "bold"),
        (f"slab {overlay.slab + 1}/{_common.SLABS}", 12, "normal"),
        ("(inferior to superior)", 9, "normal"),
        (f"slice weight {100 * overlay.slice_weight:.1f} %", 12, "normal"),
        ("", 6, "normal"),
        (f"P(mTICI \u2265 2c) = {_common.percent(result.probability):.1f} %", 12, "bold"),
        ("predicted " + _common.class_text(result).replace(">=", "\u2265"), 11, "normal"),
    ]
    y = 0.97
    for text, size, weight in panel:
        fig.text(left, y, text, color="white", fontsize=size, fontweight=weight, va="top")
        y -= (size + 6) / rows
    note = _common.research_statement(result)
    fig.text(
        left,
        0.03,
        textwrap.fill(note, 28),
        color="#ff5050",
        fontsize=10,
        fontweight="bold",
        va="bottom",
    )
    return _pixels(fig, _OVERLAY_SIZE)


def _render_summary(result: AnalysisResult) -> npt.NDArray[np.uint8]:
    fig = _figure(_SUMMARY_SIZE)
    fig.text(
        0.03,
        0.95,
        "SCANet: predicted recanalization after thrombectomy (mTICI \u2265 2c)",
        color="white",
        fontsize=16,
        fontweight="bold",
        va="top",
    )
    if result.status == JobOutcome.ANALYSED:
        assert result.probability is not None
        fig.text(0.03, 0.80, "P(mTICI \u2265 2c)", color="white", fontsize=16, va="top")
        fig.text(
            0.03,
            0.72,
            f"{_common.percent(result.probability):.1f} %",
            color="white",
            fontsize=56,
            fontweight="bold",
            va="top",
        )
        verdict = _common.class_text(result).replace(">=", "\u2265")
        fig.text(
            0.03,
            0.50,
            f"predicted: {verdict}",
            color="#7fdc7f" if result.positive else "#ffb347",
            fontsize=20,
            fontweight="bold",
            va="top",
        )
        fig.text(
            0.03,
            0.43,
            f"at threshold {_common.percent(result.algorithm.threshold):.1f} %",
            color="white",
            fontsize=13,
            va="top",
        )
        _slab_chart(fig, result.slice_weights)
    else:
        fig.text(
            0.03, 0.78, "NOT ANALYSABLE", color="#ff5050", fontsize=54, fontweight="bold", va="top"
        )
        fig.text(0.03, 0.58, f"reason: {result.reason}", color="white", fontsize=16, va="top")
        fig.text(
            0.03,
            0.51,
            textwrap.fill(result.detail or "", 80),
            color="white",
            fontsize=14,
            va="top",
        )
    fig.text(0.03, 0.12, _model_line(result), color="#c0c0c0", fontsize=11, va="bottom")
    fig.text(
        0.03,
        0.04,
        _common.research_statement(result),
        color="#ff5050",
        fontsize=15,
        fontweight="bold",
        va="bottom",
    )
    return _pixels(fig, _SUMMARY_SIZE)


def _slab_chart(fig: Figure, weights: list[float]) -> None:
    values = 100.0 * np.asarray(weights, dtype=np.float64)
    top = set(np.argsort(values)[::-1][:3].tolist())
    ax = fig.add_axes((0.50, 0.27, 0.46, 0.52))
    ax.set_facecolor(_BACKGROUND)
    slabs = np.arange(1, values.size + 1)
    colours = ["#ffb000" if i in top else "#5b7fbf" for i in range(values.size)]
    ax.bar(slabs, values, color=colours)
    ax.set_xlim(0.3, values.size + 0.7)
    ax.set_xticks([1, 5, 10, 15, 20, 26])
    ax.set_xlabel("slab (inferior \u2192 superior)", color="white", fontsize=11)
    ax.set_ylabel("slab weight (%)", color="white", fontsize=11)
    ax.set_title("where the model looked (3 largest highlighted)", color="white", fontsize=12)
    ax.tick_params(colors="white")
    for spine in ax.spines.values():
        spine.set_color("white")


def _purpose_of_reference() -> Dataset:
    item = Dataset()
    item.CodeValue = "121322"
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = "Source image for image processing operation"
    return item


def _sc_image(
    study: StudyRefs,
    result: AnalysisResult,
    rgb: npt.NDArray[np.uint8],
    *,
    series_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    what: str,
    orientation: tuple[str, str] | None,
    comments: str,
    derivation: str,
) -> Dataset:
    """An RGB Secondary Capture in the target's study, patient and study copied from it."""
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian

    target = _common.header(study.target)
    try:
        sc = hd.sc.SCImage(
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            study_instance_uid=target.StudyInstanceUID,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=_common.MANUFACTURER,
            # The summary is not an image of the patient; its orientation is written empty.
            patient_orientation=orientation or ("L", "P"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=_common.series_description(result, what),
            manufacturer_model_name=_common.MODEL_NAME,
            software_versions=_common.SOFTWARE_VERSION,
            specific_character_set=target.get("SpecificCharacterSet"),
        )
    except (ValueError, TypeError) as exc:
        raise ResultsError(f"the {what} image cannot be built: {exc}") from exc
    sc.copy_patient_and_study_information(target)
    if orientation is None:
        sc["PatientOrientation"].value = None  # Type 2C: present, empty
    # An unpaired part: Laterality (General Series, Type 2C) is then not required.
    sc.BodyPartExamined = "HEAD"
    sc.BurnedInAnnotation = "NO"
    sc.ImageComments = _common.ascii_text(comments)
    sc.DerivationDescription = _common.ascii_text(derivation)[:1024]
    logger.debug(
        "built %s SC %s", what, sc.SOPInstanceUID, extra={"study_uid": sc.StudyInstanceUID}
    )
    return sc
