"""The private coding scheme ``99SCANET`` of the SR, and the standard codes it sits beside.

PS3.16 has no concept for a predicted angiographic reperfusion grade (mTICI), for the decision
of an AI model at its threshold, or for the named reasons our QC refuses a study; SNOMED CT and
LOINC (as far as pydicom's code dictionaries reach) have none either. We looked for:

- a finding or observable "recanalization / reperfusion after thrombectomy" or "mTICI grade":
  nothing in DCM, SCT (as shipped with pydicom) or LN;
- "image quality control" as a coded question with a passed / failed answer: DCM has
  (111101, "Image Quality") and (110002, "Quality Control"), but their value sets are quality
  ratings and reference purposes, not the outcome of an automatic acceptance check;
- codes for "no CTA series", "registration failed" and the other refusals: none.

So these concepts are private (PS3.3 8.2: designators starting with "99" are reserved for
private schemes). The scheme is identified in every SR by
:data:`CODING_SCHEME_NAME` and :data:`CODING_SCHEME_RESPONSIBLE_ORGANIZATION` in the
Coding Scheme Identification Sequence (PS3.3 C.12.1.1.2). Code values never change meaning;
new concepts get new values.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

CODING_SCHEME_DESIGNATOR = "99SCANET"
CODING_SCHEME_NAME = "scanet-node private concepts"
CODING_SCHEME_RESPONSIBLE_ORGANIZATION = "scanet-node project"
CODING_SCHEME_VERSION = "1"


def _code(value: str, meaning: str) -> Code:
    return Code(value=value, scheme_designator=CODING_SCHEME_DESIGNATOR, meaning=meaning)


#: Finding type of the measurement group: the prediction as a whole.
RECANALIZATION_PREDICTION = _code("SCN-001", "Recanalization prediction after thrombectomy")
#: Qualitative evaluation: is mTICI >= 2c predicted at the model's threshold (SCT Yes / No).
PREDICTED_MTICI_2C_OR_BETTER = _code("SCN-002", "Predicted recanalization mTICI >= 2c")
#: Qualitative evaluation: the outcome of the automatic image quality control.
IMAGE_QUALITY_CONTROL = _code("SCN-003", "Image quality control")
#: Value of :data:`IMAGE_QUALITY_CONTROL`: every check passed, the study was analysed.
QC_PASSED = _code("SCN-004", "QC passed")
#: Value of :data:`IMAGE_QUALITY_CONTROL`: the study was refused (the reason follows).
NOT_ANALYSABLE = _code("SCN-005", "Not analysable")
#: Qualitative evaluation: why the study was refused; its value is one of :data:`REASONS`.
REASON_NOT_ANALYSABLE = _code("SCN-006", "Reason not analysable")
#: Text item: the statement that the result is for research use only.
RESEARCH_USE_STATEMENT = _code("SCN-007", "Research use statement")
#: Text item: the sentence behind a refusal, for people.
NOT_ANALYSABLE_DETAIL = _code("SCN-008", "Reason not analysable, detail")

#: Finding type of the planar ROI group (TID 1410) that holds the point of highest attention.
HIGHEST_ATTENTION = _code("SCN-009", "Region of highest model attention")
#: Measurement in that group: the 5 mm template slab of the point (1 = most inferior, 26).
ATTENTION_SLAB = _code("SCN-010", "Template slab of highest attention")
#: Measurement in that group: the slab's share of the slice attention (percent).
ATTENTION_SLAB_WEIGHT = _code("SCN-011", "Slice attention weight of the slab")

#: Values of :data:`REASON_NOT_ANALYSABLE`, by the reason codes of ``imaging.qc.REASONS`` and of
#: the pipeline. A reason without an entry is reported as :data:`REASON_OTHER` (the detail
#: text still names it).
REASONS: dict[str, Code] = {
    "no_ncct": _code("SCN-101", "No non-contrast head CT series"),
    "no_cta": _code("SCN-102", "No CT angiography series"),
    "unreadable_series": _code("SCN-103", "A chosen series could not be read"),
    "not_a_head": _code("SCN-104", "The series is not a head CT"),
    "brain_extraction_failed": _code("SCN-105", "No plausible brain found on the NCCT"),
    "incomplete_coverage": _code("SCN-106", "The series does not cover the whole brain"),
    "registration_dissimilar": _code("SCN-107", "Registration to the CT template failed"),
    "cta_missing": _code("SCN-108", "No CTA arrived within the waiting time"),
    "ncct_missing": _code("SCN-109", "No NCCT arrived within the waiting time"),
    "analysis_failed": _code("SCN-110", "The analysis failed"),
}
REASON_OTHER = _code("SCN-199", "Other reason")
