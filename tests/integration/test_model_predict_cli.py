"""`scanet-node predict`: a DICOM study, prepared at the checkpoint's size, through the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_samples import untrained_checkpoint

from scanet_node.cli import main
from scanet_node.synth.cohort import plan_study, write_study

SIZE = 64


def test_predict_prepares_at_the_card_size_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = untrained_checkpoint(tmp_path / "m.pt", SIZE, "for this test")
    manifest = write_study(tmp_path, plan_study(41, 0), small=True)
    study = tmp_path / manifest["case_id"]
    assert main(["predict", str(study), "--checkpoint", str(checkpoint), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["study_instance_uid"] == manifest["study_instance_uid"]
    assert 0.0 <= result["probability_mtici_2c_3"] <= 1.0
    assert result["recanalization_expected"] == (result["probability_mtici_2c_3"] >= 0.5)
    assert len(result["slice_weights"]) == 26
    assert result["model"]["input_size"] == SIZE and result["model"]["synthetic"] is True
    assert "SYNTHETIC" in captured.err


def test_predict_names_why_a_study_cannot_be_analysed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = untrained_checkpoint(tmp_path / "m.pt", SIZE, "for this test")
    manifest = write_study(tmp_path, plan_study(41, 1), small=True, variant="no-cta")
    argv = ["predict", str(tmp_path / manifest["case_id"]), "--checkpoint", str(checkpoint)]
    assert main(argv) == 3
    assert "not analysable (no_cta)" in capsys.readouterr().err
