"""Monitoring's pure parts: the registry file, the performance figures, the drift index."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta

import numpy as np
import pytest

from scanet_node.ingest.parse import patient_key_of
from scanet_node.model import metrics
from scanet_node.monitoring import drift, performance
from scanet_node.monitoring.outcomes import OutcomeFileError, parse_grade, parse_outcomes

TODAY = date(2026, 12, 6)


def test_grades_are_read_case_insensitively() -> None:
    assert [parse_grade(g) for g in ("0", "1", "2A", "2b", " 2C ", "3", "mTICI 2c")] == [
        "0",
        "1",
        "2a",
        "2b",
        "2c",
        "3",
        "2c",
    ]
    assert parse_grade("2d") is None
    assert parse_grade("") is None


def test_a_registry_file_is_read_with_each_way_of_naming_the_study() -> None:
    text = (
        "Study Instance UID;Accession Number;Patient ID;Issuer;CT date;mTICI;Procedure date\n"
        "1.2.3.4;;;;;2c;2026-11-02\n"
        ";A0001;;;;2B;20261103\n"
        ";;P-17;HOSP;2026-11-04;3;2026-11-04\n"
        "\n"
    )
    rows = parse_outcomes(text, today=TODAY)
    assert [(r.line, r.grade, r.positive) for r in rows] == [
        (2, "2c", True),
        (3, "2b", False),
        (4, "3", True),
    ]
    assert rows[0].study_instance_uid == "1.2.3.4"
    assert rows[1].accession_number == "A0001"
    assert rows[1].procedure_date == date(2026, 11, 3)
    assert rows[2].patient_key == patient_key_of("HOSP", "P-17")
    assert "P-17" not in repr(rows[2])
    assert rows[2].ct_date == date(2026, 11, 4)


def test_a_file_with_any_bad_row_is_refused_whole_with_line_numbers() -> None:
    text = (
        "study_instance_uid,accession_number,mtici,procedure_date\n"
        "1.2.3,,2c,2026-11-01\n"
        "1.2.4,,2d,2026-11-01\n"
        ",,3,2026-11-01\n"
        "1.2.3,,2b,2026-11-01\n"
        "1.2.5,,1,2027-01-01\n"
        "1.2.x,,1,2026-11-01\n"
    )
    with pytest.raises(OutcomeFileError) as caught:
        parse_outcomes(text, today=TODAY)
    problems = dict(caught.value.problems)
    assert sorted(problems) == [3, 4, 5, 6, 7]
    assert "'2d' is not one of" in problems[3]
    assert problems[4].startswith("no identifier")
    assert "duplicate procedure" in problems[5] and "line 2" in problems[5]
    assert "in the future" in problems[6]
    assert "not a valid UID" in problems[7]
    assert "line 3:" in str(caught.value)


def test_a_header_without_the_needed_columns_is_refused() -> None:
    with pytest.raises(OutcomeFileError, match="no mtici column"):
        parse_outcomes("study_instance_uid,procedure_date\n1.2,2026-01-01\n", today=TODAY)
    with pytest.raises(OutcomeFileError, match="no study_instance_uid, accession_number"):
        parse_outcomes("mtici,procedure_date\n2c,2026-01-01\n", today=TODAY)


def test_calibration_of_true_probabilities_is_ideal_and_of_extreme_ones_is_not() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 20000)
    y = rng.random(p.size) < p
    citl, slope = performance.calibration(p, y)
    assert abs(citl) < 0.05 and abs(slope - 1) < 0.05
    logit = np.log(p / (1 - p))
    extreme = 1 / (1 + np.exp(-2 * logit))
    _, slope = performance.calibration(extreme, y)
    assert abs(slope - 0.5) < 0.03
    high = 1 / (1 + np.exp(-(logit + 1)))
    citl, _ = performance.calibration(high, y)
    assert abs(citl + 1) < 0.05


def test_calibration_matches_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(5)
    p = rng.uniform(0.02, 0.98, 300)
    y = (rng.random(p.size) < p**1.5).astype(float)
    logit = np.log(p / (1 - p))
    citl, slope = performance.calibration(p, y)
    fit = sm.GLM(y, np.ones_like(y), family=sm.families.Binomial(), offset=logit).fit()
    assert citl == pytest.approx(fit.params[0], abs=1e-6)
    fit = sm.GLM(y, sm.add_constant(logit), family=sm.families.Binomial()).fit()
    assert slope == pytest.approx(fit.params[1], abs=1e-6)


def test_performance_reports_the_metrics_module_figures_overall_and_per_month() -> None:
    rng = np.random.default_rng(7)
    p = rng.uniform(0, 1, 80)
    y = rng.random(80) < p
    observed = [
        performance.Observed(float(pi), bool(yi), "2026-10" if i < 40 else "2026-11")
        for i, (pi, yi) in enumerate(zip(p, y, strict=True))
    ]
    result = performance.performance(observed, threshold=0.4, card={"roc_auc": 0.8}, resamples=200)
    expected = metrics.compute(p, y, 0.4)
    assert result.overall.n == 80
    assert result.overall.roc_auc == pytest.approx(expected.roc_auc)
    assert result.overall.sensitivity == pytest.approx(expected.sensitivity)
    assert result.overall.roc_auc_low < result.overall.roc_auc < result.overall.roc_auc_high
    assert list(result.months) == ["2026-10", "2026-11"]
    assert result.months["2026-10"].roc_auc == pytest.approx(metrics.roc_auc(p[:40], y[:40]))
    plain = result.as_dict()
    assert plain["card"] == {"roc_auc": 0.8}
    assert len(plain["roc"]["fpr"]) == len(plain["roc"]["tpr"]) >= 2


def test_too_few_outcomes_give_counts_not_figures() -> None:
    observed = [performance.Observed(0.5, i % 2 == 0, "2026-11") for i in range(6)]
    result = performance.performance(observed, threshold=0.5, card={})
    assert result.overall.n == 6 and result.overall.prevalence == 0.5
    assert math.isnan(result.overall.roc_auc)
    assert result.as_dict()["overall"]["roc_auc"] is None


def test_the_chance_psi_matches_simulation_without_shift() -> None:
    rng = np.random.default_rng(4)
    reference = drift.reference_from({"x": rng.normal(0, 1, 2000).tolist()})
    values = [drift.psi(reference["x"], rng.normal(0, 1, 60).tolist()) for _ in range(2000)]
    simulated = float(np.quantile(values, 0.99))
    predicted = drift.chance_psi(10, 60, 2000, z=2.326)
    assert predicted == pytest.approx(simulated, rel=0.15)
    assert predicted > drift.PSI_WARN  # 60 studies alone would pass 0.25 by chance


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(11)
    training = {
        "brain_volume_ml": rng.normal(1300, 120, 2000).tolist(),
        "scanner_model": ["A"] * 1500 + ["B"] * 500,
    }
    reference = drift.reference_from(training)
    assert len(reference["brain_volume_ml"]["edges"]) == 9
    assert sum(reference["brain_volume_ml"]["shares"]) == pytest.approx(1)
    same = {
        "brain_volume_ml": rng.normal(1300, 120, 300).tolist(),
        "scanner_model": ["A"] * 225 + ["B"] * 75,
    }
    shifted = {"brain_volume_ml": rng.normal(1450, 120, 300).tolist(), "scanner_model": ["C"] * 300}
    calm = {d.name: d for d in drift.drift_report(reference, same)}
    moved = {d.name: d for d in drift.drift_report(reference, shifted)}
    assert calm["brain_volume_ml"].psi < drift.PSI_MODERATE
    assert calm["scanner_model"].state == "stable"
    assert moved["brain_volume_ml"].psi > drift.PSI_WARN
    assert moved["brain_volume_ml"].state == "drifted"
    assert moved["scanner_model"].state == "drifted"
    few = drift.drift_report(reference, {"brain_volume_ml": [1300.0] * 5})
    assert few[0].state == "too few" and math.isnan(few[0].psi)


def test_intensity_descriptors_are_the_inputs_percentiles_inside_the_brain_in_hu() -> None:
    from scanet_node.monitoring.descriptors import intensity_descriptors

    tensor = np.zeros((2, 2, 4, 4), dtype=np.float32)
    tensor[0, :, 1:3, 1:3] = np.linspace(0.2, 0.4, 8).reshape(2, 2, 2)
    tensor[1, :, 1:3, 1:3] = 0.5
    found = intensity_descriptors(tensor, ncct_window_hu=(0.0, 100.0), cta_window_hu=(0.0, 600.0))
    assert found["ncct_p50_hu"] == pytest.approx(30.0)
    assert found["ncct_p10_hu"] == pytest.approx(100 * np.percentile(np.linspace(0.2, 0.4, 8), 10))
    assert found["cta_p90_hu"] == pytest.approx(300.0)


def test_header_descriptors_tolerate_missing_tags() -> None:
    from pydicom import Dataset

    from scanet_node.monitoring.descriptors import header_descriptors

    ncct = Dataset()
    ncct.SliceThickness = "5"
    ncct.Manufacturer = "ACME"
    ncct.ManufacturerModelName = "Brainscan 64"
    cta = Dataset()
    assert header_descriptors(ncct, cta) == {
        "ncct_slice_thickness_mm": 5.0,
        "cta_slice_thickness_mm": None,
        "scanner_model": "ACME Brainscan 64",
    }
    assert header_descriptors(None, cta) == {"cta_slice_thickness_mm": None, "scanner_model": None}


def _records(rng: np.random.Generator, n: int, *, shift: float, when: datetime) -> list:
    from scanet_node.monitoring.report import Record

    out = []
    for _ in range(n):
        p = float(rng.uniform(0.05, 0.95))
        grade = "2c" if rng.random() < p else "2a"
        out.append(
            Record(
                analysed_at=when,
                month_only=False,
                probability=p,
                grade=grade,
                descriptors={"brain_volume_ml": float(rng.normal(1300 + shift, 100))},
            )
        )
    return out


def test_the_report_warns_of_drift_and_of_a_local_auc_below_the_card() -> None:
    from scanet_node.monitoring.report import build_report

    rng = np.random.default_rng(2)
    now = datetime(2026, 12, 6, 12)
    reference = drift.reference_from(
        {
            "brain_volume_ml": rng.normal(1300, 100, 1000).tolist(),
            "probability": rng.uniform(0.05, 0.95, 1000).tolist(),
        }
    )
    calm = _records(rng, 120, shift=0, when=now - timedelta(days=3))
    report = build_report(
        calm, threshold=0.5, card={"roc_auc": 0.75}, reference=reference, now=now, resamples=200
    )
    assert report.warnings == []
    assert report.with_outcome == 120 and report.drift_studies == 120
    assert {d.name for d in report.drift} == {"brain_volume_ml", "probability"}
    assert not [d for d in report.drift if d.state == "drifted"]

    moved = _records(rng, 120, shift=250, when=now - timedelta(days=3))
    report = build_report(
        moved, threshold=0.5, card={"roc_auc": 0.99}, reference=reference, now=now, resamples=200
    )
    assert [w.split(":")[0] for w in report.warnings] == ["drift", "performance"]
    assert "brain_volume_ml" in report.warnings[0]
    plain = report.as_dict()
    assert plain["performance"]["overall"]["n"] == 120


def test_old_and_purged_records_count_by_their_month() -> None:
    from scanet_node.monitoring.report import Record

    record = Record(datetime(2026, 11, 1), True, 0.5, None, {})
    assert record.month == "2026-11"
    assert record.since(datetime(2026, 11, 20))  # some day of November
    assert not record.since(datetime(2026, 12, 1))
    live = Record(datetime(2026, 11, 5), False, 0.5, None, {})
    assert not live.since(datetime(2026, 11, 20))


def test_the_plots_are_pngs() -> None:
    from scanet_node.monitoring.plots import reliability_png, roc_png

    assert (
        roc_png({"fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1]}, auc=0.7, n=30)[:8] == b"\x89PNG\r\n\x1a\n"
    )
    assert reliability_png({})[:4] == b"\x89PNG"
