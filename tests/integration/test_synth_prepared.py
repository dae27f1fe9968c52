"""Prepared synthetic cohorts: studies through the node's own prepare, kept as inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scanet_node.cli import main
from scanet_node.model.data import load_cohort
from scanet_node.synth.cohort import plan_study
from scanet_node.synth.direct import clot_slab


def test_prepared_cohort_is_what_prepare_makes_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "prepared"
    argv = ["synth", "--prepared", "--small", "--size", "32", "--seed", "9", "--out", str(out)]
    assert main([*argv, "--studies", "2", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC DATA" in printed and "not prepared: 0" in printed
    inputs = sorted((out / "inputs").iterdir())
    assert [p.name for p in inputs] == ["SYN0009-0000.npz", "SYN0009-0001.npz"]
    assert not [p for p in out.iterdir() if p.name.startswith("scanet-prepared-")]  # no DICOM
    with np.load(inputs[1]) as npz:
        assert npz["tensor"].shape == (2, 26, 32, 32) and npz["tensor"].dtype == np.float16
        assert int(npz["clot_slab"]) == clot_slab(plan_study(9, 1))
        assert float(npz["similarity"]) > 0.7
        assert 0.0 <= float(npz["clot_error_mm"]) < 8.0  # the registration's residual
        assert str(npz["study_instance_uid"]).startswith("1.2.826.0.1.3680043")
        assert 900 < float(npz["brain_volume_ml"]) < 1900
        assert float(npz["ncct_slice_thickness_mm"]) > float(npz["cta_slice_thickness_mm"]) > 0
        assert str(npz["scanner_model"])
    header = (out / "labels.csv").read_text().splitlines()[0]
    assert header.startswith("case_id,") and header.endswith(",clot_slab")
    assert (out / "excluded.csv").read_text().strip() == "case_id,reason"

    cohort = load_cohort(out, 32)
    assert cohort.inputs.shape == (2, 2, 26, 32, 32) and not cohort.excluded
    assert list(cohort.clot_slabs) == [clot_slab(plan_study(9, i)) for i in range(2)]
    recorded = cohort.descriptors[1]
    assert recorded["registration_similarity"] > 0.7
    assert set(recorded) == {
        "registration_similarity",
        "brain_volume_ml",
        "ncct_slice_thickness_mm",
        "cta_slice_thickness_mm",
        "scanner_model",
    }

    # A second run with one more study prepares only the new one.
    before = [p.stat().st_mtime_ns for p in inputs]
    assert main([*argv, "--studies", "3", "--workers", "1"]) == 0
    assert [p.stat().st_mtime_ns for p in inputs] == before
    assert len(list((out / "inputs").iterdir())) == 3
    assert len((out / "labels.csv").read_text().splitlines()) == 4
