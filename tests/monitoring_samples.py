"""Analysed studies with imported outcomes, filed as a worker and ``outcomes import`` file
them: for the tests of the monitoring pages."""

from __future__ import annotations

from pydicom.uid import generate_uid

from scanet_node.catalog import Catalog
from scanet_node.catalog.jobs import JobQueue, JobSpec
from scanet_node.catalog.monitoring import MonitoringStore
from scanet_node.catalog.store import utcnow
from scanet_node.monitoring.outcomes import parse_outcomes


def analysed_studies(catalog: Catalog, probabilities: list[float], grades: list[str]) -> list[str]:
    """Studies analysed as a worker files them, with their registry outcomes imported."""
    queue = JobQueue(catalog)
    uids = []
    for n, p in enumerate(probabilities):
        uid = generate_uid()
        job = queue.create_job(JobSpec(uid, f"pk{n}", generate_uid(), generate_uid(), f"s{n}"))
        assert job is not None and queue.claim_job("host-a:4242", 60) is not None
        assert queue.finish_job(
            job.id,
            "host-a:4242",
            outcome="analysed",
            reason=None,
            probability=p,
            positive=p >= 0.5,
            model="SCANet test",
            sr_sop_instance_uid=generate_uid(),
            results_dir="/nonexistent",
            timings={},
            destinations=[],
            descriptors={"registration_similarity": 0.85, "brain_volume_ml": 1300.0 + n},
        )
        uids.append(uid)
    today = utcnow().date()
    rows = "".join(f"{u},{g},{today}\n" for u, g in zip(uids, grades, strict=True))
    store = MonitoringStore(catalog)
    summary = store.import_outcomes(
        parse_outcomes(f"study_instance_uid,mtici,procedure_date\n{rows}", today=today)
    )
    assert summary.matched == len(uids)
    return uids
