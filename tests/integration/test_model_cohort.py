"""A DICOM cohort is prepared once: registration runs once per study, then the cache serves."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import scanet_node.imaging.prepare as prepare_module
from scanet_node.imaging.model_input import INPUT_VERSION
from scanet_node.model.data import load_cohort
from scanet_node.synth.cohort import plan_study, write_study

SIZE = 64


def test_dicom_cases_are_prepared_once_and_bad_ones_left_out_with_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = write_study(tmp_path, plan_study(43, 0), small=True)
    bad = write_study(tmp_path, plan_study(43, 1), small=True, variant="no-cta")
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "label"])
        writer.writerows([[good["case_id"], 1], [bad["case_id"], 0]])

    cohort = load_cohort(tmp_path, SIZE)
    assert cohort.case_ids == [good["case_id"]]
    assert cohort.inputs.shape == (1, 2, 26, SIZE, SIZE)
    assert "not analysable (no_cta)" in cohort.excluded[bad["case_id"]]
    cached = tmp_path / ".cache" / f"{good['case_id']}-{SIZE}-v{INPUT_VERSION}.npz"
    assert cached.is_file()

    def no_registration(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare ran again for a cached study")

    monkeypatch.setattr(prepare_module, "prepare", no_registration)
    (tmp_path / "labels.csv").write_text(f"case_id,label\n{good['case_id']},1\n")
    again = load_cohort(tmp_path, SIZE)
    assert (again.inputs == cohort.inputs).all()
