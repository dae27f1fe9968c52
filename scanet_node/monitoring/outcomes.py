"""Reading the stroke registry's export of thrombectomy outcomes (``outcomes import``).

One row per procedure: the study, named by its Study Instance UID, its accession number, or
the patient's ID with the CT's date; the final mTICI grade; the procedure's date. The file is
read whole and refused whole when any row is malformed, so that a half-imported registry never
shows as a partial performance figure. The patient's ID is hashed with its issuer as it is
read (the catalog's ``patient_key``) and is never kept in clear.

The columns are found by their header, case and spacing ignored; commas or semicolons (a
spreadsheet's export in many locales) separate them.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ..errors import ScanetError

#: The final mTICI grades, in order. mTICI >= 2c is the model's positive class.
GRADES = ("0", "1", "2a", "2b", "2c", "3")
POSITIVE_GRADES = frozenset({"2c", "3"})

#: Accepted header names of each column, after lower-casing and dropping spaces, "_" and "-".
COLUMNS: dict[str, tuple[str, ...]] = {
    "study_instance_uid": ("studyinstanceuid", "studyuid"),
    "accession_number": ("accessionnumber", "accession"),
    "patient_id": ("patientid",),
    "issuer_of_patient_id": ("issuerofpatientid", "issuer"),
    "ct_date": ("ctdate", "studydate"),
    "mtici": ("mtici", "finalmtici", "mticigrade", "tici"),
    "procedure_date": ("proceduredate",),
}
_REQUIRED = ("mtici", "procedure_date")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class OutcomeFileError(ScanetError):
    """The file was refused whole; ``problems`` lists ``(line, reason)`` for each bad row."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  line {line}: {reason}" for line, reason in problems)
        super().__init__(f"outcome file refused, nothing imported:\n{lines}")


@dataclass(frozen=True)
class OutcomeRow:
    """One procedure's outcome, as read; exactly one way of naming the study is used."""

    line: int
    study_instance_uid: str | None
    accession_number: str | None
    patient_key: str | None
    ct_date: date | None
    grade: str
    procedure_date: date

    @property
    def positive(self) -> bool:
        """Recanalization reached mTICI >= 2c."""
        return self.grade in POSITIVE_GRADES

    @property
    def procedure_key(self) -> str:
        """Names the procedure: the study as the row named it, and the procedure's date.

        A second row with this key in one file is a duplicate; a later import with the same
        key and another grade replaces the earlier grade.
        """
        if self.study_instance_uid:
            study = f"uid:{self.study_instance_uid}"
        elif self.accession_number:
            study = f"acc:{self.accession_number}"
        else:
            study = f"pat:{self.patient_key}:{self.ct_date}"
        return f"{study}@{self.procedure_date.isoformat()}"


def parse_grade(text: str) -> str | None:
    """The grade in its canonical spelling (``"2c"``), or ``None`` if it is not an mTICI grade."""
    value = text.strip().lower().removeprefix("mtici").removeprefix("tici").strip()
    return value if value in GRADES else None


def parse_date(text: str) -> date | None:
    """An ISO (``2026-03-14``) or DICOM (``20260314``) date, or ``None``."""
    value = text.strip()
    try:
        if re.fullmatch(r"\d{8}", value):
            return date(int(value[:4]), int(value[4:6]), int(value[6:]))
        return date.fromisoformat(value)
    except ValueError:
        return None


def _column_map(header: Iterable[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for index, name in enumerate(header):
        norm = re.sub(r"[\s_\-]", "", name.strip().lower())
        for column, aliases in COLUMNS.items():
            if norm in aliases and column not in found:
                found[column] = index
    return found


def _row(line: int, cells: list[str], columns: dict[str, int], today: date) -> OutcomeRow | str:
    def cell(name: str) -> str:
        index = columns.get(name)
        return cells[index].strip() if index is not None and index < len(cells) else ""

    grade = parse_grade(cell("mtici"))
    if grade is None:
        shown = cell("mtici") or "empty"
        return f"mTICI grade {shown!r} is not one of {', '.join(GRADES)}"
    procedure_date = parse_date(cell("procedure_date"))
    if procedure_date is None:
        return f"procedure date {cell('procedure_date') or 'empty'!r} is not a date (YYYY-MM-DD)"
    if procedure_date > today:
        return f"procedure date {procedure_date.isoformat()} is in the future"
    uid, accession = cell("study_instance_uid"), cell("accession_number")
    patient_id, ct_text = cell("patient_id"), cell("ct_date")
    if uid and (len(uid) > 64 or not _UID.match(uid)):
        return f"Study Instance UID {uid!r} is not a valid UID"
    ct_date = parse_date(ct_text) if ct_text else None
    if ct_text and ct_date is None:
        return f"CT date {ct_text!r} is not a date (YYYY-MM-DD)"
    if ct_date is not None and ct_date > today:
        return f"CT date {ct_date.isoformat()} is in the future"
    if not uid and not accession and not (patient_id and ct_date):
        return (
            "no identifier: give the Study Instance UID, the accession number, "
            "or the patient ID with the CT date"
        )
    from scanet_node.ingest.parse import patient_key_of  # pydicom: only for such rows

    key = patient_key_of(cell("issuer_of_patient_id"), patient_id) if patient_id else None
    return OutcomeRow(
        line=line,
        study_instance_uid=uid or None,
        accession_number=accession or None,
        patient_key=key,
        ct_date=ct_date,
        grade=grade,
        procedure_date=procedure_date,
    )


def parse_outcomes(text: str, *, today: date) -> list[OutcomeRow]:
    """Every row of a registry export, or :class:`OutcomeFileError` listing every bad row.

    Line numbers count the header as line 1, as a spreadsheet shows them. Blank lines are
    skipped.
    """
    sample = text[:4096]
    delimiter = ";" if sample.count(";") > sample.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise OutcomeFileError([(1, "the file is empty")]) from None
    columns = _column_map(header)
    missing = [name for name in _REQUIRED if name not in columns]
    if missing:
        raise OutcomeFileError([(1, f"no {' or '.join(missing)} column in the header")])
    if not {"study_instance_uid", "accession_number", "patient_id"} & columns.keys():
        raise OutcomeFileError(
            [(1, "no study_instance_uid, accession_number or patient_id column in the header")]
        )
    rows: list[OutcomeRow] = []
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        parsed = _row(line, cells, columns, today)
        if isinstance(parsed, str):
            problems.append((line, parsed))
            continue
        earlier = first_line.setdefault(parsed.procedure_key, line)
        if earlier != line:
            problems.append(
                (line, f"duplicate procedure: the same study and date as line {earlier}")
            )
            continue
        rows.append(parsed)
    if problems:
        raise OutcomeFileError(problems)
    return rows


def read_outcomes(path: Path, *, today: date) -> list[OutcomeRow]:
    """:func:`parse_outcomes` of a file (UTF-8, with or without a byte order mark)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OutcomeFileError([(0, f"not UTF-8 text: {exc}")]) from None
    return parse_outcomes(text, today=today)
