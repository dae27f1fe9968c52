"""The main job, end to end: DCMTK ``storescu`` -> ``scanet-node serve`` -> Orthanc.

A real ``serve`` process (listener, scheduler, worker process) receives a synthetic study from
DCMTK's storescu and sends its SR and Secondary Capture images to a real Orthanc, checked
through Orthanc's REST API, DCMTK's ``dsrdump`` and dicom3tools' ``dciodvfy``. The weights are
untrained (the card says so): these tests prove the plumbing, not the model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pydicom
import pytest
from conftest import wait_for
from model_samples import untrained_checkpoint
from node_config import node_config
from orthanc import OrthancServer, run_orthanc
from peers import dcmtk, require_tool, storescu

from scanet_node.catalog import Catalog
from scanet_node.catalog.jobs import JobQueue
from scanet_node.synth.cohort import plan_study, write_study

pytestmark = pytest.mark.dcmtk

SIZE = 64
CLI = [sys.executable, "-m", "scanet_node"]
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "untrained-64.pt"
    return untrained_checkpoint(path, SIZE, "for the end-to-end tests")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path) as server:
        yield server


class Node:
    """``scanet-node serve`` with a config file, as an administrator runs it."""

    def __init__(self, folder: Path, checkpoint: Path, orthanc: OrthancServer, **extra: Any):
        self.data_dir = folder / "data"
        config = node_config(
            folder / "config.toml",
            data_dir=self.data_dir,
            checkpoint=checkpoint,
            destination=("orthanc", orthanc.ae_title, orthanc.dicom_port),
            pipeline=extra.get("pipeline"),
            admin={"port": 0},
        )
        self.config = config
        self.log = (folder / "serve.log").open("w")
        self.proc = subprocess.Popen(
            [*CLI, "--config", str(config), "serve"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+)", first)
        assert match, f"serve did not start: {first!r}\n{self.log_text()}"
        self.port = int(match.group(1))

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def queue(self) -> JobQueue:
        return JobQueue(Catalog(f"sqlite:///{self.data_dir / 'catalog.sqlite'}", create=False))

    def worker_pids(self) -> list[int]:
        children = psutil.Process(self.proc.pid).children(recursive=True)
        return [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        self.log.close()


@pytest.fixture
def node_in(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(checkpoint: Path, orthanc: OrthancServer, **extra: Any) -> Node:
        node = Node(tmp_path, checkpoint, orthanc, **extra)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def study_files(
    folder: Path, seed: int, variant: str = "standard", index: int = 0
) -> tuple[dict[str, Any], list[Path]]:
    manifest = write_study(folder, plan_study(seed, index), small=True, variant=variant)
    files = sorted((folder / manifest["case_id"]).rglob("*.dcm"))
    return manifest, files


def orthanc_results(orthanc: OrthancServer, study_uid: str) -> dict[str, dict[str, Any]]:
    """Our SR and SC instances in Orthanc for one study, by SOP Instance UID."""
    found = {}
    for uid, orthanc_id in orthanc.instance_ids().items():
        tags = orthanc.rest(f"/instances/{orthanc_id}/simplified-tags")
        if tags.get("StudyInstanceUID") == study_uid and tags.get("SOPClassUID") in (
            SR_CLASS,
            SC_CLASS,
        ):
            found[uid] = tags
    return found


def sr_uids(results: dict[str, dict[str, Any]]) -> list[str]:
    """The SOP Instance UIDs of the SRs among :func:`orthanc_results`."""
    return [uid for uid, tags in results.items() if tags["SOPClassUID"] == SR_CLASS]


def fetch(orthanc: OrthancServer, uid: str, folder: Path) -> Path:
    path = folder / f"{uid}.dcm"
    path.write_bytes(orthanc.get_instance_file(orthanc.instance_ids()[uid]))
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    tool = require_tool("dciodvfy", "apt-get install dicom3tools")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def sr_text(path: Path) -> str:
    out = subprocess.run(
        [dcmtk("dsrdump"), "+Pl", str(path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "error" not in out.stderr.lower(), out.stderr
    return out.stdout


def test_a_study_becomes_an_sr_and_overlays_in_orthanc_and_an_amendment_follows(
    tmp_path: Path,
    checkpoint: Path,
    orthanc: OrthancServer,
    node_in: Callable[..., Node],
) -> None:
    node = node_in(checkpoint, orthanc)
    manifest, files = study_files(tmp_path / "study", seed=3)
    study_uid = manifest["study_instance_uid"]
    # Hold back the CTA's top slice: it arrives after the first result (a series that grows).
    cta = [
        (float(h.ImagePositionPatient[2]), f)
        for f in files
        if (h := pydicom.dcmread(f, stop_before_pixels=True)).get("ContrastBolusAgent")
        and "ORIGINAL" in h.ImageType
    ]
    late = max(cta)[1]
    storescu(node.port, [f for f in files if f != late])

    wait_for(
        "the results to be acknowledged",
        lambda: node.cli("deliveries", "--json").stdout.count('"status": "sent"') == 1,
        240,
        node.log_text,
    )
    first = orthanc_results(orthanc, study_uid)
    srs = sr_uids(first)
    assert len(srs) == 1
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    paths = {uid: fetch(orthanc, uid, fetched) for uid in first}
    for uid, path in paths.items():
        assert dciodvfy_errors(path) == [], f"{uid}: dciodvfy errors"
    sr = pydicom.dcmread(paths[srs[0]])
    dump = sr_text(paths[srs[0]])
    jobs = json.loads(node.cli("jobs", "--json").stdout)
    assert len(jobs) == 1 and jobs[0]["status"] == "done" and jobs[0]["outcome"] == "analysed"
    probability = jobs[0]["probability"]
    assert f"{100 * probability:.1f}" in dump  # the probability, in %
    assert "SCANet" in dump and "checkpoint-sha256=" in dump
    evidence = {
        (str(series.SeriesInstanceUID), str(sop.ReferencedSOPInstanceUID))
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    used = {jobs[0]["ncct_series_uid"], jobs[0]["cta_series_uid"]}
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files if f != late]
    expected = {
        (str(h.SeriesInstanceUID), str(h.SOPInstanceUID))
        for h in headers
        if h.SeriesInstanceUID in used
    }
    assert evidence == expected  # every NCCT and CTA instance used, nothing else
    sc = [pydicom.dcmread(p) for u, p in paths.items() if u not in srs]
    assert all(ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3 for ds in sc)
    assert str(sr.StudyInstanceUID) == study_uid

    # The late slice makes an amended result that names its predecessor; nothing is duplicated.
    storescu(node.port, [late])
    second = wait_for(
        "the amended SR",
        lambda: [u for u in sr_uids(orthanc_results(orthanc, study_uid)) if u not in srs],
        240,
        node.log_text,
    )
    assert len(second) == 1
    amended = pydicom.dcmread(fetch(orthanc, second[0], fetched))
    predecessor = amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert str(predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == srs[0]
    jobs = json.loads(node.cli("jobs", "--json").stdout)
    assert [j["supersedes_id"] for j in jobs] == [jobs[1]["id"], None]
    # A sweep or two more: still exactly two jobs and two SRs. What is shown is that nothing
    # more happens, so a fixed wait, not wait_for.
    time.sleep(2)
    assert len(json.loads(node.cli("jobs", "--json").stdout)) == 2
    assert len(sr_uids(orthanc_results(orthanc, study_uid))) == 2


def test_the_ncct_is_prepared_while_the_cta_arrives(
    tmp_path: Path,
    checkpoint: Path,
    orthanc: OrthancServer,
    node_in: Callable[..., Node],
) -> None:
    # The quiet time is far off: the series settle because their sender released them.
    node = node_in(
        checkpoint,
        orthanc,
        pipeline={"series_settle_seconds": 300, "settle_after_release_seconds": 0.5},
    )
    manifest, files = study_files(tmp_path / "study", seed=5)
    study_uid = manifest["study_instance_uid"]
    ncct = [f for f in files if f.parent.name.endswith("_ncct")]
    assert ncct
    storescu(node.port, ncct)  # the NCCT, on its own association
    cache = node.data_dir / "spool" / ".cache" / "ncct" / study_uid
    wait_for(
        "the NCCT to be prepared before its CTA came",
        lambda: list(cache.glob("*.npz")),
        120,
        node.log_text,
    )
    assert node.queue().jobs(study_uid) == []
    storescu(node.port, [f for f in files if f not in ncct])
    queue = node.queue()
    job = wait_for(
        "the job to be done",
        lambda: next((j for j in queue.jobs(study_uid) if j.status == "done"), None),
        120,
        node.log_text,
    )
    assert job.outcome == "analysed", job.reason
    assert job.timings["ncct_ahead"] > 0  # the job took the NCCT prepared before it
    assert "prepared before its CTA" in node.log_text()
    assert "sender done" in node.log_text()
    # What drift monitoring keeps of the study (issue 18), filed with the job.
    from scanet_node.catalog.monitoring import MonitoringStore

    (record,) = MonitoringStore(queue.catalog).records()
    assert record.probability == pytest.approx(job.probability)
    kept = record.descriptors
    assert kept["registration_similarity"] > 0.7 and 900 < kept["brain_volume_ml"] < 1900
    assert 15 < kept["ncct_p50_hu"] < 50 and kept["cta_p90_hu"] > kept["cta_p50_hu"]
    assert kept["ncct_slice_thickness_mm"] > kept["cta_slice_thickness_mm"] > 0
    assert kept["scanner_model"]


def _correlation(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_a_tilted_study_gets_overlays_drawn_on_the_images_they_name(
    tmp_path: Path,
    checkpoint: Path,
    orthanc: OrthancServer,
    node_in: Callable[..., Node],
) -> None:
    """A 15 degree gantry tilt: prepare's regular grid has 153 rows where the images have 128.
    Each overlay in Orthanc shows the very NCCT image it references, at its own geometry."""
    import numpy as np
    from scipy import ndimage

    from scanet_node.results.sc import WINDOW_CENTER, WINDOW_WIDTH

    node = node_in(checkpoint, orthanc)
    manifest, files = study_files(tmp_path / "study", seed=3, variant="gantry-tilt")
    storescu(node.port, files)
    wait_for(
        "the results to be acknowledged",
        lambda: node.cli("deliveries", "--json").stdout.count('"status": "sent"') == 1,
        240,
        node.log_text,
    )
    jobs = json.loads(node.cli("jobs", "--json").stdout)
    assert [(j["status"], j["outcome"]) for j in jobs] == [("done", "analysed")], jobs
    results = orthanc_results(orthanc, manifest["study_instance_uid"])
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    paths = {uid: fetch(orthanc, uid, fetched) for uid in results}
    for uid, path in paths.items():
        assert dciodvfy_errors(path) == [], f"{uid}: dciodvfy errors"
    by_uid = {
        str(h.SOPInstanceUID): (f, h)
        for f in files
        if (h := pydicom.dcmread(f, stop_before_pixels=True)).SeriesInstanceUID
        == jobs[0]["ncct_series_uid"]
    }
    overlays = [ds for p in paths.values() if "SourceImageSequence" in (ds := pydicom.dcmread(p))]
    assert len(overlays) >= 2
    for sc in overlays:
        source_uid = str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert source_uid in by_uid, "the overlay references no image of the tilted NCCT"
        source_file, header = by_uid[source_uid]
        assert float(header.GantryDetectorTilt) == 15.0
        source = pydicom.dcmread(source_file)
        hu = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
        low = WINDOW_CENTER - WINDOW_WIDTH / 2
        grey = np.clip((hu - low) / WINDOW_WIDTH, 0, 1) * 255
        # The image area is the left 512 x 512 of the capture (the side panel is right of it).
        image = sc.pixel_array[:512, :512].astype(float)
        plain = (image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2])
        shown = ndimage.zoom(grey, (512 / grey.shape[0], 512 / grey.shape[1]), order=1)
        match = _correlation(image[..., 0][plain], shown[plain])
        # ... and not any other image of the series (5 mm apart): the overlay names its own.
        others = []
        for uid, (f, _) in by_uid.items():
            if uid == source_uid:
                continue
            other = pydicom.dcmread(f)
            ohu = other.pixel_array * float(other.RescaleSlope) + float(other.RescaleIntercept)
            ogrey = np.clip((ohu - low) / WINDOW_WIDTH, 0, 1) * 255
            oshown = ndimage.zoom(ogrey, (512 / ogrey.shape[0], 512 / ogrey.shape[1]), order=1)
            if float(oshown[plain].std()) > 0:  # images above the head are all air
                others.append(_correlation(image[..., 0][plain], oshown[plain]))
        print(f"overlay {source_uid}: {match:.3f}, best other image {max(others):.3f}")
        assert match > 0.95 and match > max(others), (match, max(others))


def test_a_worker_killed_mid_job_still_delivers_once(
    tmp_path: Path,
    checkpoint: Path,
    orthanc: OrthancServer,
    node_in: Callable[..., Node],
) -> None:
    node = node_in(checkpoint, orthanc)
    manifest, files = study_files(tmp_path / "study", seed=4)
    storescu(node.port, files)
    queue = node.queue()
    running = wait_for(
        "the job to start",
        lambda: [j for j in queue.jobs() if j.status == "running"],
        120,
        node.log_text,
    )
    pids = node.worker_pids()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    done = wait_for(
        "the job to finish after the kill",
        lambda: [j for j in queue.jobs() if j.status == "done"],
        300,
        node.log_text,
    )
    assert done[0].id == running[0].id and done[0].attempts == 2
    wait_for(
        "the delivery",
        lambda: all(d.status == "sent" for d in queue.deliveries()) and queue.deliveries(),
        60,
        node.log_text,
    )
    results = orthanc_results(orthanc, manifest["study_instance_uid"])
    assert len(sr_uids(results)) == 1
    assert len(queue.deliveries()) == 1
    # Every instance storescu sent is in the catalog.
    assert queue.catalog.count_instances() == len(files)
    assert "ended with exit code -9; starting another" in node.log_text()
    queue.catalog.close()


def _failure_report(orthanc: OrthancServer, study_uid: str, folder: Path) -> str:
    """The SR in Orthanc that says the analysis failed, checked by dciodvfy; its dsrdump."""
    (uid,) = sr_uids(orthanc_results(orthanc, study_uid))
    folder.mkdir(exist_ok=True)
    path = fetch(orthanc, uid, folder)
    assert dciodvfy_errors(path) == []
    text = sr_text(path)
    assert "Not analysable" in text and "The analysis failed" in text
    assert "No prediction will follow" in text
    return text


def test_a_study_that_kills_its_worker_every_time_is_answered_and_the_next_analysed(
    tmp_path: Path,
    checkpoint: Path,
    orthanc: OrthancServer,
    node_in: Callable[..., Node],
) -> None:
    """SIGKILL on every attempt (a study that makes its worker exit): after job_max_attempts
    the job fails, the PACS is told so, and the node goes on analysing the next study."""
    node = node_in(checkpoint, orthanc, pipeline={"job_max_attempts": 2, "job_lease_seconds": 3})
    manifest, files = study_files(tmp_path / "study", seed=4)
    storescu(node.port, files)
    queue = node.queue()
    killed: set[int] = set()

    def kill_while_running() -> list[Any]:
        jobs = queue.jobs()
        for job in jobs:
            if job.status == "running" and job.attempts <= 2 and job.attempts not in killed:
                pids = node.worker_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.add(job.attempts)
        return [j for j in jobs if j.status == "failed"]

    (failed,) = wait_for("the job to fail for good", kill_while_running, 300, node.log_text)
    assert killed == {1, 2}
    assert failed.attempts == 3 and failed.worker_stops == 2
    assert (failed.reason or "").startswith(
        "the worker stopped during the analysis 2 times (killed, or out of memory)"
    )
    wait_for(
        "the failure report to be sent",
        lambda: [d for d in queue.deliveries() if d.status == "sent"],
        60,
        node.log_text,
    )
    text = _failure_report(orthanc, manifest["study_instance_uid"], tmp_path / "fetched")
    assert "stopped 2 times" in text
    # The next study is analysed as usual.
    second, more = study_files(tmp_path / "second", seed=5)
    storescu(node.port, more)
    done = wait_for(
        "the next study's result",
        lambda: [j for j in queue.jobs() if j.status == "done" and j.outcome == "analysed"],
        240,
        node.log_text,
    )
    assert done[0].study_instance_uid == second["study_instance_uid"]
    queue.catalog.close()


def test_a_model_that_raises_for_a_study_answers_it_after_its_attempts(
    tmp_path: Path,
    checkpoint: Path,
    orthanc: OrthancServer,
    node_in: Callable[..., Node],
) -> None:
    """The analysis raises on every attempt for one study: after the attempts (spaced by the
    job backoff), Orthanc receives a "not analysable" SR naming the failure."""
    from scanet_node.config import load_settings
    from scanet_node.model.predictor import Predictor
    from scanet_node.pipeline.worker import Worker

    class FailsForOneStudy(Predictor):
        def predict(self, model_input: Any) -> Any:
            if model_input.study_instance_uid == target:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return super().predict(model_input)

    pipeline = {"workers": 0, "retry_initial_seconds": 0.5, "retry_max_seconds": 1}
    node = node_in(checkpoint, orthanc, pipeline=pipeline)
    manifest, files = study_files(tmp_path / "study", seed=6)
    target = manifest["study_instance_uid"]
    storescu(node.port, files)
    worker = Worker(load_settings(node.config), predictor=FailsForOneStudy(checkpoint))
    queue = node.queue()

    def work() -> list[Any]:
        worker.run_once()
        return [d for d in queue.deliveries() if d.status == "sent"]

    wait_for("the failure report to be sent", work, 240, node.log_text)
    (job,) = queue.jobs()
    assert job.status == "failed" and job.attempts == 3  # job_max_attempts' default
    assert (job.reason or "").startswith("failed 3 times; last: RuntimeError: CUDA error")
    text = _failure_report(orthanc, target, tmp_path / "fetched")
    assert "unexpected error stopped it 3 times (RuntimeError" in text
    worker.close()
    queue.catalog.close()


def test_a_pacs_that_is_down_gets_the_not_analysable_report_when_it_is_back(
    tmp_path: Path,
    checkpoint: Path,
    orthanc: OrthancServer,
    node_in: Callable[..., Node],
) -> None:
    orthanc.stop()
    node = node_in(checkpoint, orthanc, pipeline={"pairing_window_seconds": 2})
    manifest, files = study_files(tmp_path / "study", seed=41, index=1, variant="no-cta")
    storescu(node.port, files)
    queue = node.queue()
    wait_for(
        "two failed delivery attempts",
        lambda: [d for d in queue.deliveries() if d.attempts >= 2],
        120,
        node.log_text,
    )
    pending = queue.deliveries()[0]
    assert pending.status == "pending" and pending.last_status == "unreachable"
    orthanc.start()
    wait_for("the delivery", lambda: queue.deliveries()[0].status == "sent", 60, node.log_text)
    results = orthanc_results(orthanc, manifest["study_instance_uid"])
    srs = sr_uids(results)
    assert len(srs) == 1
    path = fetch(orthanc, srs[0], tmp_path)
    assert dciodvfy_errors(path) == []
    dump = sr_text(path)
    assert "Not analysable" in dump or "not analysable" in dump
    assert "CTA missing" in dump
    job = queue.jobs()[0]
    assert job.outcome == "not_analysable" and job.missing == "CTA missing"
    listed = node.cli("deliveries").stdout
    assert "unreachable" in listed and "sent" in listed
    queue.catalog.close()


def test_a_cta_filed_under_its_own_study_is_paired_and_takes_the_results(
    tmp_path: Path,
    checkpoint: Path,
    orthanc: OrthancServer,
    node_in: Callable[..., Node],
) -> None:
    node = node_in(checkpoint, orthanc)
    manifest, files = study_files(tmp_path / "study", seed=3)
    cta_study = pydicom.uid.generate_uid()
    moved = tmp_path / "cta-study"
    moved.mkdir()
    sent = []
    for f in files:
        ds = pydicom.dcmread(f)
        if ds.get("ContrastBolusAgent"):  # the CTA and its MIP: another accession and study
            ds.StudyInstanceUID = cta_study
            ds.AccessionNumber = "ACC-CTA"
            f = moved / f.name
            ds.save_as(f)
        sent.append(f)
    storescu(node.port, sent)
    queue = node.queue()
    wait_for(
        "the delivery",
        lambda: queue.deliveries() and queue.deliveries()[0].status == "sent",
        240,
        node.log_text,
    )
    (job,) = queue.jobs()
    assert job.study_instance_uid == cta_study and job.outcome == "analysed", job.reason
    results = orthanc_results(orthanc, cta_study)
    (sr_uid,) = sr_uids(results)
    assert orthanc_results(orthanc, manifest["study_instance_uid"]) == {}
    sr = pydicom.dcmread(fetch(orthanc, sr_uid, tmp_path))
    other = {str(item.StudyInstanceUID) for item in sr.PertinentOtherEvidenceSequence}
    assert other == {manifest["study_instance_uid"]}  # the NCCT, from the first study
    assert dciodvfy_errors(fetch(orthanc, sr_uid, tmp_path)) == []
    queue.catalog.close()
