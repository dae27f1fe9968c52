"""Series classification against the generator's truth, on a cohort small enough for CI.

Every variant once (7 studies, 128 px), each series as written and without its descriptive
tags: no NCCT or CTA is missed and no localizer, MIP or dose report is used. The full table
(210 studies, README) is tests/benchmarks/classification.py.
"""

from __future__ import annotations

from pathlib import Path

from classification_table import classify_cohort

from scanet_node.synth.cohort import VARIANTS


def test_every_ncct_and_cta_is_recognised_and_nothing_else_is_used(tmp_path: Path) -> None:
    table = classify_cohort(tmp_path, len(VARIANTS), seed=2026)
    assert table.wrong == []
    for condition in ("tags", "bare"):
        counts = table.counts[condition]
        assert counts["ncct", "ncct"] == len(VARIANTS)
        assert counts["cta", "cta"] == len(VARIANTS) - 1  # the no-CTA variant has none
        assert counts["localizer", "other"] >= 1 and counts["cta_mip", "other"] >= 1
