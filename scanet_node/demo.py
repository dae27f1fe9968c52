"""``scanet-node demo``: the node's main job, end to end, on one synthetic study.

Starts a node on the embedded defaults (SQLite catalog, local spool, CPU, the shipped demo
weights) with a worker process, and a local receiving peer standing in for the PACS (or the
configured destinations); writes a synthetic NCCT + CTA study, sends it to the node by
C-STORE, waits until the PACS has acknowledged the results and prints the probability, where
the overlay image is and how long each stage took.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from scanet_node.catalog.jobs import DeliveryInfo, JobInfo, JobQueue
from scanet_node.catalog.models import DeliveryStatus, JobStatus
from scanet_node.config import Settings
from scanet_node.dicom_status import Status
from scanet_node.errors import ScanetError

if TYPE_CHECKING:
    from scanet_node.catalog import Catalog

MARKER = ".scanet-demo"
PACS_AE = "DEMOPACS"


class LocalPacs:
    """A minimal Storage SCP (pynetdicom) that keeps what it receives: the demo's PACS."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._server: Any = None

    def start(self) -> int:
        """Listen on a free port of 127.0.0.1; return the port."""
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=PACS_AE)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(
                    context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
                )
        self._server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return int(self._server.server_address[1])

    def _store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        (self.folder / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        return Status.SUCCESS

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _prepare_folder(data_dir: Path) -> None:
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / MARKER).exists():
            raise ScanetError(
                f"{data_dir} holds data that the demo did not write; choose another --data-dir"
            )
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("written by scanet-node demo; removed by the next demo run\n")


def _demo_settings(
    settings: Settings, data_dir: Path, pacs_port: int | None, verbose: bool
) -> Settings:
    values = settings.model_dump(mode="json")
    if not verbose:
        values["logging"]["level"] = "WARNING"  # the worker process logs at this level
    values["node"].update(host="127.0.0.1", port=0, data_dir=str(data_dir.resolve()))
    values["pipeline"]["workers"] = max(1, values["pipeline"]["workers"])
    # A short-lived node: no admin page, so it never clashes with a running serve's port.
    values["admin"]["enabled"] = False
    if pacs_port is not None:
        values["destinations"] = [
            {"name": "demo-pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs_port}
        ]
    return Settings.model_validate(values)


def run_demo(
    settings: Settings,
    *,
    data_dir: Path,
    small: bool = False,
    seed: int = 7,
    timeout: float = 600.0,
    use_configured_destinations: bool = False,
    verbose: bool = False,
) -> int:
    """Run the demo; print the result; 0 when the results reached every destination."""
    from scanet_node.model.checkpoint import read_card
    from scanet_node.model.predictor import resolve_checkpoint
    from scanet_node.results.deliver import Peer, send
    from scanet_node.service import Node
    from scanet_node.synth.cohort import plan_study, write_study

    # Fails early, with the reason, when there are no weights to run.
    card = read_card(resolve_checkpoint(settings.model.checkpoint))
    _prepare_folder(data_dir)
    pacs = None if use_configured_destinations else LocalPacs(data_dir / "pacs")
    pacs_port = pacs.start() if pacs is not None else None
    demo = _demo_settings(settings, data_dir, pacs_port, verbose)
    if not demo.destinations:
        raise ScanetError("no [[destinations]] are configured (or leave out the option)")
    node = Node(demo)
    started = time.perf_counter()
    try:
        host, port = node.start()
        print(f"node {demo.node.ae_title} on {host}:{port}, data in {data_dir}")
        for d in demo.destinations:
            print(f"results go to {d.name} ({d.ae_title} at {d.host}:{d.port})")
        print(
            f"model: {card.architecture['kind']} {card.weights_sha256[:12]}, input "
            f"{card.preprocessing['size']} px"
            + (" - trained on SYNTHETIC data, research use only" if card.synthetic else "")
        )
        tic = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="scanet-demo-") as tmp:
            manifest = write_study(Path(tmp), plan_study(seed, 0), small=small)
            study_uid = manifest["study_instance_uid"]
            files = sorted(p for p in (Path(tmp) / manifest["case_id"]).rglob("*.dcm"))
            took = time.perf_counter() - tic
            print(f"synthetic study {study_uid}: {len(files)} instances ({took:.1f} s)")
            tic = time.perf_counter()
            outcome = send(
                files,
                Peer(ae_title=demo.node.ae_title, host=host, port=port, name="node"),
                calling_aet="DEMO-SCU",
                timeout=60,
            )
        if not outcome.ok:
            print(f"sending the study failed: {outcome.detail}")
            return 1
        sent_at = time.perf_counter()
        print(f"sent {outcome.sent} instances in {sent_at - tic:.1f} s; waiting for the results")
        return _wait_and_report(node.catalog, study_uid, sent_at, timeout)
    finally:
        node.stop(grace_seconds=2)
        if pacs is not None:
            pacs.stop()
        print(f"demo took {time.perf_counter() - started:.0f} s")


def _wait_and_report(catalog: Catalog, study_uid: str, sent_at: float, timeout: float) -> int:
    queue = JobQueue(catalog)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [j for j in queue.jobs(study_uid) if j.status in (JobStatus.DONE, JobStatus.FAILED)]
        if done:
            job = done[0]
            if job.status == JobStatus.FAILED:
                print(f"the analysis failed: {job.reason}")
                return 1
            deliveries = queue.deliveries(job_id=job.id)
            if deliveries and all(d.status != DeliveryStatus.PENDING for d in deliveries):
                return _report(job, deliveries, time.perf_counter() - sent_at)
        time.sleep(0.5)
    print(f"no result after {timeout:.0f} s; see 'scanet-node jobs' and the log (--verbose)")
    return 1


def _report(job: JobInfo, deliveries: list[DeliveryInfo], turnaround: float) -> int:
    print()
    if job.probability is not None:
        verdict = "recanalization expected" if job.positive else "recanalization not expected"
        print(f"P(mTICI >= 2c) = {100 * job.probability:.1f} %  ({verdict})")
    else:
        print(f"not analysable: {job.reason}")
    if job.results_dir is not None:
        from scanet_node.results.files import OVERLAY_PNG, SUMMARY_PNG

        folder = Path(job.results_dir)
        for name in (OVERLAY_PNG, SUMMARY_PNG):
            if (folder / name).is_file():
                print(f"{name:12}  {folder / name}")
        print(f"results      {folder}")
    send_seconds = sum(a.seconds for d in deliveries for a in d.attempt_rows if a.ok)
    stages = {**job.timings, "send": send_seconds}
    print(
        "stages (s)   "
        + "  ".join(
            f"{k} {stages[k]:.1f}"
            for k in ("load", "register", "infer", "overlay", "build", "send")
            if k in stages
        )
    )
    print(
        f"turnaround   {turnaround:.1f} s from the last instance sent to the PACS's acknowledgement"
    )
    ok = True
    for d in deliveries:
        print(f"delivery     {d.destination}: {d.status} ({d.last_detail})")
        ok = ok and d.status == DeliveryStatus.SENT
    return 0 if ok else 1
