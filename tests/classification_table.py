"""Series classification against the generator's truth: the test's and the benchmark's table.

Each study of a synthetic cohort (every variant in turn) is classified series by series as the
node does when a series settles (``classify_files``), once as written and once with its
descriptive tags removed (what a site that sends bare headers gives us: no Series, Protocol or
Study Description, no contrast or body-part tags, no comments). The truth is the manifest's
role of each series: the NCCT, the CTA, or one the node must not use (localizer, MIP, dose
report).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from scanet_node.imaging.classify_read import classify_files
from scanet_node.synth.cohort import VARIANTS, plan_study, write_study

#: Tags a site may leave out or fill with anything: what "without descriptive tags" removes.
DESCRIPTIVE_TAGS = (
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
    "ContrastBolusAgent",
    "ContrastBolusAgentSequence",
    "ContrastBolusRoute",
    "ContrastBolusVolume",
    "ContrastBolusStartTime",
    "ContrastBolusIngredient",
    "ContrastBolusIngredientConcentration",
    "BodyPartExamined",
    "ImageComments",
    "AcquisitionContrast",
)
TRUTHS = ("ncct", "cta", "localizer", "cta_mip", "dose")
ROLES = ("ncct", "cta", "other")


def truth_of(manifest_role: str) -> str:
    """The manifest's role as a row of the table."""
    return manifest_role if manifest_role in TRUTHS else "other"


@dataclass
class Table:
    """Counts of (truth, role) by condition ("tags", "bare"), and the misses, named."""

    counts: dict[str, Counter[tuple[str, str]]] = field(
        default_factory=lambda: {"tags": Counter(), "bare": Counter()}
    )
    wrong: list[str] = field(default_factory=list)
    studies: int = 0

    def add(self, condition: str, case: str, truth: str, role: str, reason: str) -> None:
        self.counts[condition][truth, role] += 1
        expected = truth if truth in ("ncct", "cta") else "other"
        if role != expected:
            self.wrong.append(f"{condition} {case} {truth} -> {role}: {reason}")

    def markdown(self, condition: str) -> str:
        """The confusion table of one condition: truth by rows, the node's role by columns."""
        counts = self.counts[condition]
        lines = ["| truth \\ classified as | NCCT | CTA | not used |", "|---|---|---|---|"]
        for truth in TRUTHS:
            row = [counts[truth, role] for role in ROLES]
            if sum(row):
                lines.append(f"| {truth} | " + " | ".join(str(n) for n in row) + " |")
        return "\n".join(lines)


def _strip(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        ds = dcmread(path)
        for keyword in DESCRIPTIVE_TAGS:
            if keyword in ds:
                delattr(ds, keyword)
        target = folder / path.name
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out


def classify_cohort(
    folder: Path,
    studies: int,
    *,
    seed: int = 2026,
    small: bool = True,
    table: Table | None = None,
    first: int = 0,
) -> Table:
    """Write studies ``first`` .. ``first + studies - 1`` of ``seed`` (variants in turn) and
    classify every series both ways, adding to ``table``."""
    table = table or Table()
    variants = list(VARIANTS)
    for n in range(first, first + studies):
        variant = variants[n % len(variants)]
        manifest = write_study(folder, plan_study(seed, n), small=small, variant=variant)
        study = folder / manifest["case_id"]
        case = f"{manifest['case_id']} ({variant})"
        for entry in manifest["series"]:
            files = sorted((study / entry["folder"]).glob("*.dcm"))
            truth = truth_of(entry["role"])
            role = classify_files(files)
            table.add("tags", case, truth, role.role, role.reason)
            bare = classify_files(_strip(files, folder / "bare" / entry["folder"]))
            table.add("bare", case, truth, bare.role, bare.reason)
        shutil.rmtree(study)
        shutil.rmtree(folder / "bare", ignore_errors=True)
        table.studies += 1
    return table
