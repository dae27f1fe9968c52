"""Which series of a study is the non-contrast CT (NCCT), which the CT angiogram (CTA), and why.

The decisions are pure functions of plain data: :class:`SeriesFacts` (header facts of a series,
plus image statistics when an image check ran) and :class:`ClassificationRules` (patterns and
limits the configuration can extend) go in, a :class:`SeriesRole` or a :class:`Selection` with
its reasons in words comes out. Nothing here reads a file: the facts come from
:mod:`scanet_node.imaging.classify_read` (a header, the pixels when the tags cannot decide).

How a series gets its role (:func:`classify_series`):

1. Excluded, role ``other``: not a CT image SOP class (dose SR, secondary capture), modality not
   CT, a localizer or projection (MIP, VR...) in ImageType, an exclusion pattern in the
   description (localizer, MIP, MPR, dose, perfusion maps...), too few images, a body part that
   is not the head.
2. Tag evidence. Strong: a ContrastBolusAgent (CTA) or one that says none (NCCT); a CTA pattern
   (cta, angio, arterial, circle of Willis...) or an explicit non-contrast pattern (w/o, non
   contrast, nativ, sine...) in the series description. Weak: a head pattern (head, brain...) in
   the description, or CTA/NCCT patterns in the protocol name (often shared by every series of
   an exam) when the description is silent.
3. Strong evidence for one side only decides. Tags that contradict, or that are silent or only
   weak, ask for an image check (:func:`~scanet_node.imaging.classify_read.image_evidence`: the
   fraction of intracranial voxels at 150-500 HU, contrast-filled vessels), which then decides.
   When the image check disagrees with clear tags, the tags win and the reason says so, with a
   lower score.
4. A role is refused when the slice thickness exceeds its maximum (NCCT 5.5 mm, CTA 2.5 mm).

When several series share a role (:func:`select_series`) the best wins: original over derived,
axial over other planes, soft over sharp (bone) kernels, confident over uncertain, thinner, more
images, then the lower series number.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

from scanet_node.catalog.models import Role
from scanet_node.config import ImagingSettings
from scanet_node.imaging.thresholds import (
    CTA_MAX_SLICE_THICKNESS_MM,
    CTA_MIN_VESSEL_FRACTION,
    MIN_IMAGES,
    NCCT_MAX_SLICE_THICKNESS_MM,
    NCCT_MAX_VESSEL_FRACTION,
)

CT_IMAGE_SOP_CLASSES: Final = frozenset(
    {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
)
#: ImageType values of images that are no axial stack of the anatomy.
PROJECTION_IMAGE_TYPES: Final = frozenset(
    {
        "LOCALIZER",
        "MIP",
        "MINIP",
        "MIN_IP",
        "MAX_IP",
        "PROJECTION IMAGE",
        "VOLUME_RENDER",
        "VR",
        "SSD",
        "CPR",
        "CURVED",
    }
)

# Patterns are Python regular expressions, searched case-insensitively in the series
# description (and protocol name) with underscores read as spaces.
DEFAULT_CTA_PATTERNS: Final = (
    r"\bcta\b",
    r"angio",
    r"\barteri",
    r"\bcow\b",
    r"circle of willis",
    r"\bwillis\b",
    r"\bhead\s*(and|&|\+|/|-)?\s*neck\b",
    r"\bcarotid",
    r"\bc\+",
    r"\bw/\s*c(ontrast)?\b",
    r"\bwith\s+contrast\b",
    r"\bpost[\s-]*contrast\b",
    r"\bcontrast[\s-]*enhanced\b",
)
DEFAULT_NCCT_PATTERNS: Final = (
    r"\bw/?o\b",
    r"\bwithout\s+contrast\b",
    r"\bnon[\s-]*(contrast|enhanced|con)\b",
    r"\bunenhanced\b",
    r"\bnc\b",
    r"\bncct\b",
    r"\bnect\b",
    r"\bsine\b",
    r"\bnativ",
    r"\bplain\b",
    r"\bpre[\s-]*contrast\b",
)
DEFAULT_HEAD_PATTERNS: Final = (
    r"\bhead\b",
    r"\bbrain\b",
    r"\bcran",
    r"\bskull\b",
    r"\bcerebr",
    r"\bcct\b",
    r"sch(ä|ae)del",
)
DEFAULT_EXCLUDE_PATTERNS: Final = (
    r"localiz",
    r"topogram",
    r"\bscout",
    r"surview",
    r"scanogram",
    r"\bmip\b",
    r"\bmin\s*ip\b",
    r"\bmpr\b",
    r"\bvrt?\b",
    r"\b3d\b",
    r"volume render",
    r"\bdose\b",
    r"\breport\b",
    r"perfusion",
    r"\bctp\b",
    r"\b(cbf|cbv|mtt|tmax|ttp)\b",
    r"\bsummary\b",
    r"screen\s*(shot|capture)",
    r"\bkey\s*images?\b",
)
#: ContrastBolusAgent values that say no contrast was given.
DEFAULT_NO_AGENT_PATTERNS: Final = (
    r"^\s*(none|no|nil|n/?a|not applicable|-+|0|native|nativ)\s*$",
    r"\bno contrast\b",
)
#: Convolution kernels (and descriptions) of bone or lung reconstructions, ranked last.
DEFAULT_SHARP_KERNEL_PATTERNS: Final = (
    r"bone",
    r"lung",
    r"sharp",
    r"^[a-z]{1,2}[6-9]\d",  # Siemens H60s, B70f, Hr64, Br64...
)
DEFAULT_HEAD_BODY_PARTS: Final = (r"head|brain|skull|neck|cerebr|willis|carotid|cran|angio",)

#: The image check's vessel window.
VESSEL_HU: Final = (150.0, 500.0)
#: Below this intracranial volume the vessel fraction says nothing.
MIN_INTRACRANIAL_ML: Final = 100.0


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@dataclass(frozen=True)
class ClassificationRules:
    """Patterns and limits of the classification; the configuration can extend the defaults.

    The CTA maximum slice thickness is 2.5 mm: the model sees 26 slices over the brain (about 5
    mm each), so a 2.5 mm CTA loses nothing for it (the small synthetic studies have one),
    while thicker series are, in practice, MIP slabs or thick reformats; among qualifying
    series the thinnest wins anyway. The NCCT maximum, 5.5 mm, admits the usual 5 mm head
    series with some rounding. The vessel fractions were set on the synthetic cohort of patients
    who differ (NCCT 0.01-0.15 %: thin bone of the skull base inside the skull's ring; CTA
    0.9-1.6 % with the cortical arteries, and arteries only: a patient's CTA also fills veins
    and sinuses and scores higher), with a margin of about two on each side.
    """

    cta_patterns: tuple[str, ...] = DEFAULT_CTA_PATTERNS
    ncct_patterns: tuple[str, ...] = DEFAULT_NCCT_PATTERNS
    head_patterns: tuple[str, ...] = DEFAULT_HEAD_PATTERNS
    exclude_patterns: tuple[str, ...] = DEFAULT_EXCLUDE_PATTERNS
    no_agent_patterns: tuple[str, ...] = DEFAULT_NO_AGENT_PATTERNS
    sharp_kernel_patterns: tuple[str, ...] = DEFAULT_SHARP_KERNEL_PATTERNS
    head_body_parts: tuple[str, ...] = DEFAULT_HEAD_BODY_PARTS
    ncct_max_slice_thickness_mm: float = NCCT_MAX_SLICE_THICKNESS_MM
    cta_max_slice_thickness_mm: float = CTA_MAX_SLICE_THICKNESS_MM
    min_images: int = MIN_IMAGES
    cta_min_vessel_fraction: float = CTA_MIN_VESSEL_FRACTION
    ncct_max_vessel_fraction: float = NCCT_MAX_VESSEL_FRACTION

    def __post_init__(self) -> None:
        for name in (
            "cta_patterns",
            "ncct_patterns",
            "head_patterns",
            "exclude_patterns",
            "no_agent_patterns",
            "sharp_kernel_patterns",
            "head_body_parts",
        ):
            patterns = tuple(getattr(self, name))
            object.__setattr__(self, name, patterns)
            for pattern in patterns:
                try:
                    _compiled(pattern)
                except re.error as exc:
                    raise ValueError(f"{name}: {pattern!r} is not a valid pattern ({exc})") from exc
        if self.ncct_max_slice_thickness_mm <= 0 or self.cta_max_slice_thickness_mm <= 0:
            raise ValueError("maximum slice thicknesses must be positive")
        if self.min_images < 1:
            raise ValueError("min_images must be at least 1")
        if not 0 <= self.ncct_max_vessel_fraction < self.cta_min_vessel_fraction <= 1:
            raise ValueError("need 0 <= ncct_max_vessel_fraction < cta_min_vessel_fraction <= 1")

    def extended(
        self,
        *,
        cta: Iterable[str] = (),
        ncct: Iterable[str] = (),
        head: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ) -> ClassificationRules:
        """These rules with extra patterns added after the defaults (from the configuration)."""
        return replace(
            self,
            cta_patterns=self.cta_patterns + tuple(cta),
            ncct_patterns=self.ncct_patterns + tuple(ncct),
            head_patterns=self.head_patterns + tuple(head),
            exclude_patterns=self.exclude_patterns + tuple(exclude),
        )


def rules_from_settings(settings: ImagingSettings) -> ClassificationRules:
    """The classification rules of ``[imaging]``: the defaults, extended and adjusted."""
    rules = ClassificationRules().extended(
        cta=settings.extra_cta_patterns,
        ncct=settings.extra_ncct_patterns,
        head=settings.extra_head_patterns,
        exclude=settings.extra_exclude_patterns,
    )
    return replace(
        rules,
        ncct_max_slice_thickness_mm=settings.ncct_max_slice_thickness_mm,
        cta_max_slice_thickness_mm=settings.cta_max_slice_thickness_mm,
        min_images=settings.min_images,
        cta_min_vessel_fraction=settings.cta_min_vessel_fraction,
        ncct_max_vessel_fraction=settings.ncct_max_vessel_fraction,
    )


@dataclass(frozen=True)
class ImageEvidence:
    """What the pixels of a series say (see :func:`.classify_read.image_evidence`).

    ``vessel_fraction`` is the fraction of intracranial voxels at 150-500 HU, measured in the
    slices whose skull ring closes; ``skull_coverage_mm`` the length of the series over which it
    closes; ``head_width_mm`` the median outer width of the skull in those slices.
    """

    vessel_fraction: float
    intracranial_ml: float
    skull_coverage_mm: float
    head_width_mm: float
    is_head: bool

    @property
    def summary(self) -> str:
        """The numbers in words."""
        head = "a head" if self.is_head else "not a head"
        return (
            f"{head}: skull ring over {self.skull_coverage_mm:.0f} mm, width "
            f"{self.head_width_mm:.0f} mm, intracranial {self.intracranial_ml:.0f} mL, "
            f"{100 * self.vessel_fraction:.3f} % of it at {VESSEL_HU[0]:.0f}-{VESSEL_HU[1]:.0f} HU"
        )


@dataclass(frozen=True)
class SeriesFacts:
    """Header facts of one series, and the image check's result once it ran.

    ``number_of_images`` counts frames (an Enhanced CT series has one instance of many frames);
    None means one image per instance. ``plane`` is 'axial', 'coronal', 'sagittal' or
    'oblique' from ImageOrientationPatient, None when unknown.
    """

    modality: str = ""
    sop_class_uid: str = ""
    series_description: str = ""
    protocol_name: str = ""
    image_type: tuple[str, ...] = ()
    contrast_agent: str | None = None
    slice_thickness: float | None = None
    number_of_instances: int = 0
    number_of_images: int | None = None
    rows: int | None = None
    columns: int | None = None
    body_part: str = ""
    convolution_kernel: str = ""
    plane: str | None = None
    series_number: int | None = None
    image: ImageEvidence | None = None

    @property
    def images(self) -> int:
        """Images in the series (frames, or instances)."""
        return self.number_of_instances if self.number_of_images is None else self.number_of_images


@dataclass(frozen=True)
class SeriesRole:
    """The role of one series, why, and how sure (0 for other, up to 1).

    ``needs_image_check`` is True while the tags were silent or contradicted each other and no
    image check has run; the role is then provisional.
    """

    role: Role
    reason: str
    score: float
    needs_image_check: bool = False


@dataclass(frozen=True)
class Selection:
    """The NCCT and CTA chosen for a study (None when none qualified), and why, in words."""

    ncct_uid: str | None
    cta_uid: str | None
    reasons: tuple[str, ...]
    roles: dict[str, SeriesRole] = field(default_factory=dict, compare=False)


# --------------------------------------------------------------------------------------------
# One series


def _normalized(text: str) -> str:
    return " ".join(text.replace("_", " ").split())


def _match(patterns: Sequence[str], text: str) -> str | None:
    """The text matched by the first pattern found in ``text``, or None."""
    if not text:
        return None
    normal = _normalized(text)
    for pattern in patterns:
        found = _compiled(pattern).search(normal)
        if found:
            return found.group(0).strip() or pattern
    return None


def _exclusion(facts: SeriesFacts, rules: ClassificationRules) -> str | None:
    """Why a series can be neither NCCT nor CTA, or None."""
    if facts.sop_class_uid and facts.sop_class_uid not in CT_IMAGE_SOP_CLASSES:
        return f"SOP class {UID(facts.sop_class_uid).name} is not a CT image"
    if facts.modality != "CT":
        return f"modality {facts.modality or 'missing'} is not CT"
    projection = [v for v in facts.image_type if v in PROJECTION_IMAGE_TYPES]
    if projection:
        kind = "localizer" if "LOCALIZER" in projection else "projection"
        image_type = "\\".join(facts.image_type)
        return f"{kind} (ImageType {image_type})"
    for field_name, text in (
        ("description", facts.series_description),
        ("protocol name", facts.protocol_name if not facts.series_description else ""),
    ):
        hit = _match(rules.exclude_patterns, text)
        if hit:
            return f"{field_name} {text!r} matches the exclusion {hit!r}"
    if facts.images < rules.min_images:
        return f"{facts.images} image(s), fewer than the {rules.min_images} a head series needs"
    if facts.body_part and not _match(rules.head_body_parts, facts.body_part):
        return f"BodyPartExamined {facts.body_part!r} is not the head"
    image = facts.image
    if image is not None and not image.is_head and image.intracranial_ml < MIN_INTRACRANIAL_ML:
        return f"image check: {image.summary}"
    return None


@dataclass(frozen=True)
class _Evidence:
    strong_cta: tuple[str, ...]
    strong_ncct: tuple[str, ...]
    weak_cta: tuple[str, ...]
    weak_ncct: tuple[str, ...]


def _tag_evidence(facts: SeriesFacts, rules: ClassificationRules) -> _Evidence:
    strong_cta: list[str] = []
    strong_ncct: list[str] = []
    weak_cta: list[str] = []
    weak_ncct: list[str] = []
    agent = (facts.contrast_agent or "").strip()
    if agent:
        if _match(rules.no_agent_patterns, agent):
            strong_ncct.append(f"ContrastBolusAgent says none ({agent!r})")
        else:
            strong_cta.append(f"ContrastBolusAgent {agent!r}")
    description = facts.series_description
    cta_hit = _match(rules.cta_patterns, description)
    ncct_hit = _match(rules.ncct_patterns, description)
    if cta_hit:
        strong_cta.append(f"description {description!r} matches {cta_hit!r}")
    if ncct_hit:
        strong_ncct.append(f"description {description!r} matches {ncct_hit!r}")
    if not cta_hit and not ncct_hit:
        head_hit = _match(rules.head_patterns, description)
        if head_hit:
            weak_ncct.append(f"description {description!r} matches {head_hit!r}")
        protocol = facts.protocol_name
        if _match(rules.cta_patterns, protocol):
            weak_cta.append(
                f"protocol name {protocol!r} matches {_match(rules.cta_patterns, protocol)!r}"
            )
        elif _match(rules.ncct_patterns, protocol):
            weak_ncct.append(
                f"protocol name {protocol!r} matches {_match(rules.ncct_patterns, protocol)!r}"
            )
    if not agent and (weak_ncct or strong_ncct):
        weak_ncct.append("no ContrastBolusAgent")
    return _Evidence(tuple(strong_cta), tuple(strong_ncct), tuple(weak_cta), tuple(weak_ncct))


def _image_says(image: ImageEvidence, rules: ClassificationRules) -> Role | None:
    if image.intracranial_ml < MIN_INTRACRANIAL_ML:
        return None
    if image.vessel_fraction >= rules.cta_min_vessel_fraction:
        return Role.CTA
    if image.vessel_fraction <= rules.ncct_max_vessel_fraction:
        return Role.NCCT
    return None


def _thickness_refusal(role: Role, facts: SeriesFacts, rules: ClassificationRules) -> str | None:
    limit = (
        rules.cta_max_slice_thickness_mm if role == Role.CTA else rules.ncct_max_slice_thickness_mm
    )
    if facts.slice_thickness is not None and facts.slice_thickness > limit + 1e-6:
        return (
            f"slice thickness {facts.slice_thickness:g} mm exceeds the {limit:g} mm an "
            f"{role.upper()} may have"
        )
    return None


def classify_series(facts: SeriesFacts, rules: ClassificationRules | None = None) -> SeriesRole:
    """The role of one series from its facts (module docstring: the rules, in order)."""
    rules = rules or ClassificationRules()
    excluded = _exclusion(facts, rules)
    if excluded:
        return SeriesRole(Role.OTHER, excluded, 0.0)
    ev = _tag_evidence(facts, rules)
    image = facts.image
    image_role = None if image is None else _image_says(image, rules)
    image_text = "" if image is None else f"image check: {image.summary}"

    role: Role | None
    if ev.strong_cta and not ev.strong_ncct:
        role, why, score = Role.CTA, list(ev.strong_cta), 1.0 if len(ev.strong_cta) > 1 else 0.9
    elif ev.strong_ncct and not ev.strong_cta:
        role, why = Role.NCCT, list(ev.strong_ncct + ev.weak_ncct)
        score = 1.0 if len(ev.strong_ncct) > 1 else 0.9
    else:
        role, why, score = None, [], 0.0
    if role is not None:
        if image is not None:
            if image_role == role:
                why.append(f"{image_text}, agrees")
                score = 1.0
            elif image_role is not None:
                why.append(f"{image_text}, disagrees: the tags win")
                score = 0.5
            else:
                why.append(f"{image_text}, inconclusive")
        return _finish(role, why, score, facts, rules)

    contradiction = bool(ev.strong_cta and ev.strong_ncct)
    if contradiction:
        tags = f"tags contradict ({'; '.join(ev.strong_cta)} against {'; '.join(ev.strong_ncct)})"
    elif ev.weak_cta or ev.weak_ncct:
        tags = f"tags are weak ({'; '.join(ev.weak_cta + ev.weak_ncct)})"
    else:
        tags = "tags are silent"
    if image_role is not None:
        return _finish(image_role, [tags, f"{image_text}: decides"], 0.7, facts, rules)
    weak: Role | None = None
    if not contradiction:
        if ev.weak_cta and not ev.weak_ncct:
            weak = Role.CTA
        elif ev.weak_ncct and not ev.weak_cta:
            weak = Role.NCCT
    if image is not None:
        why = [tags, f"{image_text}, inconclusive"]
        if weak is None:
            return SeriesRole(Role.OTHER, "; ".join(why), 0.0)
        return _finish(weak, why, 0.3, facts, rules)
    if weak is None:
        return SeriesRole(Role.OTHER, f"{tags}: image check needed", 0.0, needs_image_check=True)
    return _finish(weak, [tags, "provisional until an image check"], 0.4, facts, rules, True)


def _finish(
    role: Role,
    why: list[str],
    score: float,
    facts: SeriesFacts,
    rules: ClassificationRules,
    needs_image_check: bool = False,
) -> SeriesRole:
    refused = _thickness_refusal(role, facts, rules)
    if refused:
        return SeriesRole(
            Role.OTHER, f"{role.upper()} evidence ({'; '.join(why)}) but {refused}", 0.0
        )
    return SeriesRole(role, f"{role.upper()}: {'; '.join(why)}", score, needs_image_check)


# --------------------------------------------------------------------------------------------
# The study


def series_label(uid: str, facts: SeriesFacts) -> str:
    """How the reasons name a series: its number, description and UID."""
    number = "?" if facts.series_number is None else str(facts.series_number)
    return f"series {number} {facts.series_description!r} ({uid})"


def _rank(facts: SeriesFacts, role: SeriesRole, rules: ClassificationRules) -> tuple[Any, ...]:
    """Sort key, best first: every element compares smaller for the better series."""
    derived = bool(facts.image_type) and (
        facts.image_type[0] == "DERIVED"
        or (len(facts.image_type) > 1 and facts.image_type[1] == "SECONDARY")
        or "REFORMATTED" in facts.image_type
    )
    sharp = bool(
        _match(rules.sharp_kernel_patterns, facts.convolution_kernel)
        or _match(rules.sharp_kernel_patterns, facts.series_description)
    )
    thickness = round(facts.slice_thickness, 2) if facts.slice_thickness is not None else 99.0
    return (
        derived,
        facts.plane not in (None, "axial"),
        sharp,
        role.score < 0.8,
        thickness,
        -facts.images,
        -role.score,
        facts.series_number if facts.series_number is not None else 1 << 30,
    )


_RANK_WORDS = (
    "original over derived",
    "axial over {plane}",
    "soft over sharp kernel",
    "confident over uncertain",
    "thinner ({a:g} mm over {b:g} mm)",
    "more images ({a} over {b})",
    "higher score",
    "lower series number",
)


def _why_better(best: tuple[Any, ...], other: tuple[Any, ...], other_facts: SeriesFacts) -> str:
    for i, (a, b) in enumerate(zip(best, other, strict=True)):
        if a != b:
            if i == 4:
                return _RANK_WORDS[i].format(a=a, b=b)
            if i == 5:
                return _RANK_WORDS[i].format(a=-a, b=-b)
            return _RANK_WORDS[i].format(plane=other_facts.plane)
    return "same rank; first by series number"


def select_series(
    candidates: Sequence[tuple[str, SeriesFacts]], rules: ClassificationRules | None = None
) -> Selection:
    """Classify every series of a study and choose its NCCT and CTA, with reasons in words."""
    rules = rules or ClassificationRules()
    roles: dict[str, SeriesRole] = {}
    reasons: list[str] = []
    for uid, facts in candidates:
        role = classify_series(facts, rules)
        roles[uid] = role
        reasons.append(f"{series_label(uid, facts)}: {role.reason}")
    facts_of = dict(candidates)
    chosen: dict[str, str | None] = {}
    for wanted in (Role.NCCT, Role.CTA):
        ranked = sorted(
            (
                (uid, _rank(facts_of[uid], roles[uid], rules))
                for uid in roles
                if roles[uid].role == wanted
            ),
            key=lambda item: item[1],
        )
        name = wanted.upper()
        if not ranked:
            chosen[wanted] = None
            waiting = sum(r.needs_image_check and r.role == Role.OTHER for r in roles.values())
            note = f" ({waiting} series await an image check)" if waiting else ""
            reasons.append(f"no {name}: no series qualified{note}")
            continue
        best_uid, best_key = ranked[0]
        chosen[wanted] = best_uid
        line = f"{name}: chose {series_label(best_uid, facts_of[best_uid])}"
        if roles[best_uid].needs_image_check:
            line += " (on tags alone; no image check ran)"
        others = [
            f"{series_label(uid, facts_of[uid])} ({_why_better(best_key, key, facts_of[uid])})"
            for uid, key in ranked[1:]
        ]
        if others:
            line += " over " + ", ".join(others)
        reasons.append(line)
    return Selection(chosen[Role.NCCT], chosen[Role.CTA], tuple(reasons), roles)
