"""Monitoring on a synthetic stream (issue 18): analyses filed as a worker files them, the
registry's outcomes imported by ``outcomes import``, the figures and drift read back by
``performance --json``.

The studies are template-space inputs (synth.direct, 32 px, the atlas head) run through a
real, if untrained, SCANet: the plumbing is under test, not the model. The model card's drift
reference is made the way ``train`` makes it, from another cohort of the same generator.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from model_samples import untrained_checkpoint
from node_config import node_config
from pydicom.uid import generate_uid

from scanet_node.catalog import Catalog
from scanet_node.catalog.jobs import JobQueue, JobSpec
from scanet_node.cli import main
from scanet_node.imaging.model_input import MODEL_INPUT_CTA_WINDOW_HU, MODEL_INPUT_NCCT_WINDOW_HU
from scanet_node.model import metrics
from scanet_node.model.checkpoint import update_card
from scanet_node.model.predictor import Predictor
from scanet_node.monitoring.descriptors import study_descriptors
from scanet_node.monitoring.reference import cohort_reference
from scanet_node.synth.cohort import plan_study
from scanet_node.synth.direct import template_input

SIZE = 32
WINDOWS = {"ncct_window_hu": MODEL_INPUT_NCCT_WINDOW_HU, "cta_window_hu": MODEL_INPUT_CTA_WINDOW_HU}


def inputs(seed: int, studies: int, contrast_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    plans = [plan_study(seed, i) for i in range(studies)]
    tensors = np.stack(
        [template_input(p, SIZE, fixed_anatomy=True, contrast_scale=contrast_scale) for p in plans]
    )
    return tensors, np.array([p.label for p in plans])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 32 px SCANet whose card holds the reference of a 40-study cohort."""
    path = untrained_checkpoint(
        tmp_path_factory.mktemp("model") / "scanet.pt", SIZE, "monitoring tests"
    )
    tensors, _ = inputs(seed=61, studies=40)
    predictor = Predictor(path, device="cpu", threads=1)
    probabilities = [p.probability for p in predictor.predict_batch(tensors)]
    update_card(path, reference=cohort_reference(tensors, [], probabilities, **WINDOWS))
    return path


def stream(
    tmp_path: Path, checkpoint: Path, contrast_scale: float
) -> tuple[Path, list[float], np.ndarray]:
    """Analyse a 32-study stream into a fresh node's catalog; import its outcomes."""
    config = node_config(
        tmp_path / "config.toml", data_dir=tmp_path / "data", checkpoint=checkpoint
    )
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    tensors, labels = inputs(seed=62, studies=32, contrast_scale=contrast_scale)
    predictor = Predictor(checkpoint, device="cpu", threads=1)
    catalog = Catalog(f"sqlite:///{tmp_path / 'data' / 'catalog.sqlite'}")
    queue, uids, probabilities = JobQueue(catalog), [], []
    for n, (tensor, prediction) in enumerate(
        zip(tensors, predictor.predict_batch(tensors), strict=True)
    ):
        uid = generate_uid()
        job = queue.create_job(JobSpec(uid, f"pk{n}", generate_uid(), generate_uid(), "sig"))
        assert job is not None and queue.claim_job("w", 60) is not None
        assert queue.finish_job(
            job.id,
            "w",
            outcome="analysed",
            reason=None,
            probability=prediction.probability,
            positive=prediction.positive,
            model="SCANet untrained",
            sr_sop_instance_uid=generate_uid(),
            results_dir=str(tmp_path),
            timings={},
            destinations=[],
            descriptors=study_descriptors(
                tensor,
                {},
                ncct_header=None,
                cta_header=None,
                probability=prediction.probability,
                **WINDOWS,
            ),
        )
        uids.append(uid)
        probabilities.append(prediction.probability)
    catalog.close()
    grades = ["2c" if y else "2a" for y in labels]
    registry = tmp_path / "registry.csv"
    registry.write_text(
        "Study Instance UID,mTICI,Procedure date\n"
        + "".join(f"{u},{g},{date.today()}\n" for u, g in zip(uids, grades, strict=True))
    )
    assert main(["outcomes", "import", str(registry), "--config", str(config)]) == 0
    return config, probabilities, labels


def performance(config: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["performance", "--json", "--config", str(config)]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_stream_reports_the_metrics_modules_auc_and_no_drift(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, probabilities, labels = stream(tmp_path, checkpoint, contrast_scale=1.0)
    assert "32 matched (32 stored), 0 unmatched" in capsys.readouterr().out
    report = performance(config, capsys)
    overall = report["performance"]["overall"]
    assert overall["n"] == 32 and overall["positives"] == int(labels.sum())
    assert overall["roc_auc"] == pytest.approx(metrics.roc_auc(np.array(probabilities), labels))
    assert overall["brier"] == pytest.approx(metrics.compute(probabilities, labels).brier)
    assert report["drift_studies"] == 32
    assert {d["name"] for d in report["drift"]} >= {"ncct_p50_hu", "cta_p90_hu", "probability"}
    assert not [w for w in report["warnings"] if w.startswith("drift")], report["warnings"]

    # Importing the same file again changes nothing.
    assert (
        main(["outcomes", "import", str(tmp_path / "registry.csv"), "--config", str(config)]) == 0
    )
    assert "32 matched (32 unchanged)" in capsys.readouterr().out


def test_a_late_contrast_bolus_raises_the_drift_warning(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = stream(tmp_path, checkpoint, contrast_scale=0.6)
    report = performance(config, capsys)
    drifted = {d["name"] for d in report["drift"] if d["state"] == "drifted"}
    assert "cta_p50_hu" in drifted  # the enhanced vessels, at 32 px blurred into the brain
    assert not {n for n in drifted if n.startswith("ncct")}  # the NCCT did not change
    assert any(w.startswith("drift: cta_p50_hu") for w in report["warnings"])
    capsys.readouterr()
    assert main(["performance", "--config", str(config)]) == 0
    assert "WARNING drift: cta_p50_hu" in capsys.readouterr().out


def test_a_registry_file_with_a_bad_row_is_refused_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = node_config(tmp_path / "config.toml", data_dir=tmp_path / "data")
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    registry = tmp_path / "registry.csv"
    registry.write_text(
        "accession_number;mtici;procedure_date\nA1;2c;2026-01-02\nA2;TICI 4;2026-01-02\n"
        ";3;2026-01-02\nA1;2b;2026-01-02\nA5;1;2999-01-01\n"
    )
    capsys.readouterr()
    assert main(["outcomes", "import", str(registry), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "refused, nothing imported" in err
    for line in ("line 3: mTICI grade", "line 4: no identifier", "line 5: duplicate", "line 6:"):
        assert line in err, err
    registry.write_text("accession_number,mtici,procedure_date\nA9,2c,2026-01-02\n")
    assert main(["outcomes", "import", str(registry), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "line 2: unmatched: no study with this accession number" in out
    assert "0 matched (none), 1 unmatched (not stored)" in out
