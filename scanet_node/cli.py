"""``scanet-node``: the command line. Thin: parse, load the settings, call one function.

Every import beyond the standard library happens inside the command that needs it, so that
``--help`` starts fast and ``serve`` never loads the synthetic-data generator or training code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanet_node import __version__
from scanet_node.errors import ScanetError
from scanet_node.logs import configure_logging

if TYPE_CHECKING:
    from scanet_node.catalog import Catalog, StudySummary
    from scanet_node.catalog.jobs import JobInfo, JobQueue
    from scanet_node.config import Settings
    from scanet_node.model.data import Cohort
    from scanet_node.model.train import TrainSettings

#: The ``[node]`` settings a command's options may override, by option name.
_NODE_OPTIONS = ("host", "port", "data_dir")


def _load(args: argparse.Namespace, *, node_options: bool = True) -> Settings:
    """The settings of ``--config``, with the command's ``[node]`` options applied last
    (``node_options=False``: a command whose ``--data-dir`` means something else)."""
    from scanet_node.config import load_settings

    if not node_options:
        return load_settings(args.config)
    node = {k: getattr(args, k) for k in _NODE_OPTIONS if getattr(args, k, None) is not None}
    return load_settings(args.config, overrides={"node": node})


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds") + "Z"
    return str(value)


def _print_json(value: object) -> None:
    print(json.dumps(value, default=_json_default, indent=2))


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _load(args)
    configure_logging(settings.logging.level)
    from scanet_node.service import serve

    serve(settings)
    return 0


def _cmd_echo(args: argparse.Namespace) -> int:
    from scanet_node.dicom_status import label
    from scanet_node.results.echo import echo

    result = echo(
        args.host,
        args.port,
        calling_aet=args.aet,
        called_aet=args.called_aet,
        timeout=args.timeout,
    )
    if not result.established:
        why = "rejected" if result.rejected else "could not be established"
        print(f"echo {args.host}:{args.port} as {args.aet}: association {why}", file=sys.stderr)
        return 1
    if result.ok:
        print(f"echo {args.host}:{args.port} ({args.called_aet}): success")
        return 0
    code = label(result.status) if result.status is not None else "no response"
    print(f"echo {args.host}:{args.port}: failed ({code})", file=sys.stderr)
    return 1


def _open_catalog(args: argparse.Namespace) -> Catalog:
    from scanet_node.catalog import Catalog

    return Catalog(_load(args).catalog_url, create=False)


def _study_lines(study: StudySummary) -> list[str]:
    lines = [
        f"{study.study_instance_uid}  {study.study_date or '-':8}  "
        f"{study.num_instances} instances  last received {_json_default(study.last_received_at)}"
    ]
    for s in study.series:
        lines.append(
            f"  {s.series_number if s.series_number is not None else '-':>4} "
            f"{s.modality or '-':3} {s.state:9} {(s.role or '-').upper():5} {s.num_instances:5}  "
            f"{s.series_description or ''!s:30}  {s.series_instance_uid}"
        )
    return lines


def _cmd_studies(args: argparse.Namespace) -> int:
    catalog = _open_catalog(args)
    try:
        studies = catalog.list_studies()
    finally:
        catalog.close()
    if args.json:
        _print_json([dataclasses.asdict(s) for s in studies])
    elif not studies:
        print("no studies")
    else:
        for study in studies:
            print("\n".join(_study_lines(study)))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    catalog = _open_catalog(args)
    try:
        study = catalog.get_study(args.uid)
    finally:
        catalog.close()
    if study is None:
        print(f"no study with Study Instance UID {args.uid}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(dataclasses.asdict(study))
    else:
        print("\n".join(_study_lines(study)))
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from scanet_node.catalog.schema import current_catalog, upgrade_catalog

    settings = _load(args)
    if args.action == "upgrade":
        configure_logging(settings.logging.level)
        print(upgrade_catalog(settings.catalog_url))
        return 0
    text, is_head = current_catalog(settings.catalog_url)
    print(text)
    return 0 if is_head else 1


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = _load(args)
    configure_logging(settings.logging.level)
    from scanet_node.pipeline.worker import run_worker

    run_worker(settings)
    return 0


def _queue(args: argparse.Namespace) -> JobQueue:
    from scanet_node.catalog.jobs import JobQueue

    return JobQueue(_open_catalog(args))


def _job_line(job: JobInfo) -> str:
    if job.probability is not None:
        what = f"P={job.probability:.3f} {'positive' if job.positive else 'negative'}"
    else:
        what = job.reason or job.missing or ""
    took = job.timings.get("total")
    took_text = f" {took:.1f}s" if took is not None else ""
    amends = f" amends {job.supersedes_id}" if job.supersedes_id else ""
    return (
        f"{job.id:5} {job.status:8} {job.outcome or '-':14} try {job.attempts}"
        f"{took_text}{amends}  {job.study_instance_uid}  {what}"
    )


def _cmd_jobs(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        jobs = queue.jobs(args.study, limit=args.limit)
    finally:
        queue.catalog.close()
    if args.json:
        _print_json([dataclasses.asdict(j) for j in jobs])
    elif not jobs:
        print("no jobs")
    else:
        for job in jobs:
            print(_job_line(job))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from scanet_node.catalog import Catalog, utcnow
    from scanet_node.catalog.overview import Overview
    from scanet_node.pipeline.doctor import clock, unanswered

    settings = _load(args)
    catalog = Catalog(settings.catalog_url, create=False)
    now = utcnow()
    try:
        activity = Overview(catalog).activity(now - timedelta(hours=args.hours))
    finally:
        catalog.close()
    pipeline = settings.pipeline
    waiting = unanswered(
        activity,
        now,
        settle_seconds=pipeline.series_settle_seconds,
        pairing_window_seconds=pipeline.pairing_window_seconds,
        max_attempts=pipeline.job_max_attempts,
    )
    if args.json:
        _print_json(
            {
                "hours": args.hours,
                "studies": len(activity.studies),
                "unanswered": [dataclasses.asdict(w) for w in waiting],
            }
        )
        return 0
    answered = len(activity.studies) - len(waiting)
    print(
        f"{len(activity.studies)} studies received in the last {args.hours:g} h: "
        f"{answered} with their result sent, {len(waiting)} without"
    )
    for w in waiting:
        print(f"{w.study_instance_uid}  last image {clock(w.last_received_at)}  {w.state}")
        print(f"    {w.why}")
    return 0


def _cmd_deliveries(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        deliveries = queue.deliveries(job_id=args.job)
    finally:
        queue.catalog.close()
    if args.json:
        _print_json([dataclasses.asdict(d) for d in deliveries])
    elif not deliveries:
        print("no deliveries")
    else:
        for d in deliveries:
            print(
                f"{d.id:5} job {d.job_id:<5} {d.status:7} {d.destination} "
                f"({d.ae_title}@{d.host}:{d.port}) attempts {d.attempts}  "
                f"{d.last_status or '-'}: {d.last_detail or ''}"
            )
            for a in d.attempt_rows:
                print(
                    f"        {_json_default(a.started_at)} {a.seconds:6.2f}s "
                    f"{'ok' if a.ok else 'permanent' if a.permanent else 'retry'} ({a.status}): "
                    f"{a.detail}"
                )
    return 0


def _cmd_resend(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        ids = list(args.delivery)
        if args.job is not None:
            ids += [d.id for d in queue.deliveries(job_id=args.job)]
        if not ids:
            print("name a delivery (see 'scanet-node deliveries') or --job", file=sys.stderr)
            return 2
        missing = 0
        for delivery_id in ids:
            d = queue.resend(delivery_id)
            if d is None:
                print(f"no delivery {delivery_id}", file=sys.stderr)
                missing += 1
            else:
                print(f"delivery {d.id} (job {d.job_id} to {d.destination}) queued to send again")
    finally:
        queue.catalog.close()
    return 1 if missing else 0


def _cmd_reprocess(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        job = queue.reprocess(args.uid)
    finally:
        queue.catalog.close()
    if job is None:
        print(
            f"study {args.uid} has no job to run again, or one is queued or running already",
            file=sys.stderr,
        )
        return 1
    print(
        f"job {job.id} queued for study {args.uid}"
        + (f" (amends job {job.supersedes_id})" if job.supersedes_id else "")
    )
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    from scanet_node.catalog import Catalog
    from scanet_node.pipeline.retention import run_retention

    settings = _load(args)
    configure_logging("WARNING")
    catalog = Catalog(settings.catalog_url, create=False)
    try:
        report = run_retention(
            catalog,
            settings.retention,
            settings.node.spool_dir,
            settings.results_dir,
            dry_run=args.dry_run,
        )
    finally:
        catalog.close()
    verb = "would purge" if args.dry_run else "purged"
    for p in report.purged:
        print(
            f"{verb} study {p.study_instance_uid} ({p.rule}): "
            f"{p.files} files, {p.bytes_freed} bytes"
        )
    for h in report.held:
        print(f"kept study {', '.join(h.study_instance_uids)}: {h.reason}")
    print(
        f"{verb} {len(report.purged)} studies, {report.bytes_freed} bytes"
        + (f"; {report.skipped} changed meanwhile, left for later" if report.skipped else "")
    )
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from scanet_node.catalog.retention import RetentionStore

    catalog = _open_catalog(args)
    try:
        audits = RetentionStore(catalog).audits(limit=args.limit)
    finally:
        catalog.close()
    if args.json:
        _print_json([dataclasses.asdict(a) for a in audits])
    elif not audits:
        print("no purged studies")
    else:
        for a in audits:
            print(
                f"{a.id:5} {_json_default(a.purged_at)} {a.rule:9} received "
                f"{_json_default(a.first_received_at)}..{_json_default(a.last_received_at)} "
                f"{a.num_series} series {a.num_instances} instances {a.bytes_freed} bytes; "
                f"{a.jobs} jobs ({a.outcome or '-'}), deliveries {a.deliveries_sent} sent "
                f"{a.deliveries_failed} not sent"
            )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = _load(args, node_options=False)
    configure_logging("WARNING" if not args.verbose else settings.logging.level)
    from scanet_node.demo import run_demo

    return run_demo(
        settings,
        data_dir=args.data_dir,
        small=args.small,
        seed=args.seed,
        timeout=args.timeout,
        use_configured_destinations=args.configured_destinations,
        verbose=args.verbose,
    )


def _cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scanet_node.synth.cohort import generate_cohort
    from scanet_node.synth.render import render_study

    if args.template_space and args.prepared:
        print("--template-space and --prepared exclude each other", file=sys.stderr)
        return 2
    generate: Callable[..., Any]
    if args.prepared:
        from scanet_node.synth.prepared import generate_prepared_cohort as generate

        options = {"size": args.size, "small": args.small, "workers": args.workers}
    elif args.template_space:
        from scanet_node.synth.direct import generate_template_cohort as generate

        options = {"size": args.size, "workers": args.workers}
    else:
        generate = generate_cohort
        options = {
            "small": args.small,
            "variant": args.variant,
            "cta_slice_mm": args.cta_slice_mm,
        }
    with tqdm(total=args.studies, unit="study", desc="synth", file=sys.stderr) as bar:
        summary = generate(
            args.out,
            args.studies,
            args.seed,
            progress=lambda done, _total: bar.update(done - bar.n),
            **options,
        )
    if args.render:
        for manifest in summary.manifests:
            render_study(args.out / manifest["case_id"])
    print(f"wrote {summary.studies} synthetic studies to {args.out} in {summary.seconds:.1f} s")
    print(f"  labels: {args.out / 'labels.csv'}")
    print(
        f"  label balance: {summary.positives}/{summary.studies} recanalized (mTICI >= 2c) "
        f"= {summary.balance:.0%}"
    )
    auc = "n/a (one class only)" if summary.oracle_auc is None else f"{summary.oracle_auc:.3f}"
    print(f"  oracle ROC-AUC (true probability vs label): {auc}")
    if args.prepared:
        from scanet_node.synth.prepared import excluded_cases

        left_out = excluded_cases(args.out)
        print(f"  not prepared: {len(left_out)} (reasons in {args.out / 'excluded.csv'})")
    print("  SYNTHETIC DATA: not from any patient; not for clinical use.")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from scanet_node.imaging.classify import rules_from_settings
    from scanet_node.imaging.model_input import save
    from scanet_node.imaging.prepare import prepare
    from scanet_node.imaging.qc import NotAnalysable

    settings = _load(args, node_options=False)
    configure_logging(settings.logging.level)
    try:
        model_input = prepare(
            args.study_dir,
            rules=rules_from_settings(settings.imaging),
            method=args.method or settings.imaging.registration,
            min_similarity=settings.imaging.min_registration_similarity,
        )
    except NotAnalysable as exc:
        print(f"scanet-node: {exc}", file=sys.stderr)
        return 3
    paths = save(model_input, args.out)
    for reason in model_input.reasons:
        print(f"  {reason}")
    qc = model_input.qc
    print(
        f"prepared {model_input.study_instance_uid}: similarity "
        f"{qc['registration_similarity']:.3f}, brain {qc['brain_volume_ml']:.0f} mL, "
        f"{model_input.timings['total']:.1f} s"
    )
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def _train_settings(args: argparse.Namespace) -> TrainSettings:
    from scanet_node.model.train import RESNET_DEPTHS, TrainSettings

    return TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        folds=args.folds,
        seed=args.seed,
        augment=not args.no_augment,
        device=args.device,
        cpu_bf16=args.cpu_bf16,
        threads=args.threads,
        subtract_mean=args.subtract_mean,
        standardize=args.standardize,
        layers=RESNET_DEPTHS[args.depth],
        optimizer=args.optimizer,
        schedule=args.schedule,
        soft_targets=args.soft_targets,
        slab_weight=args.slab_weight,
        select=args.select,
        misregister_mm=args.misregister_mm,
        init=_weights_sha256(args.init) if args.init else "",
    )


def _weights_sha256(checkpoint: Path) -> str:
    from scanet_node.model.checkpoint import read_card

    return str(read_card(checkpoint).weights_sha256)


def _load_cohort(path: Path, size: int, cache: Path | None) -> Cohort:
    from tqdm import tqdm

    from scanet_node.model.data import load_cohort

    with tqdm(unit="case", desc=f"load {path.name}", file=sys.stderr) as bar:

        def step(done: int, total: int) -> None:
            bar.total = total
            bar.update(1)

        cohort = load_cohort(path, size, cache_dir=cache, progress=step)
    for case, reason in cohort.excluded.items():
        print(f"  left out {case}: {reason}", file=sys.stderr)
    return cohort


def _cmd_train(args: argparse.Namespace) -> int:
    from scanet_node.model.checkpoint import data_description, read_card
    from scanet_node.model.experiment import cross_validate, train_final
    from scanet_node.model.metrics import final_threshold

    configure_logging("INFO")
    if args.init and args.folds >= 2:
        print(
            "scanet-node: --init fine-tunes the final model; use it with --folds 0",
            file=sys.stderr,
        )
        return 2
    settings = _train_settings(args)
    cohort = _load_cohort(args.cohort, args.size, args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    methods = ["scanet", *(["resnet34", "hu-logistic"] if args.baselines else [])]
    summary, cv_probabilities = None, None
    if settings.folds >= 2:
        cv = cross_validate(cohort, settings, args.out / "cv", methods=methods)
        print((args.out / "cv" / "table.md").read_text())
        summary, cv_probabilities = cv.summary(), cv.probabilities["scanet"]
    if args.no_final:
        return 0
    threshold = final_threshold(cv_probabilities, cohort.labels)
    synthetic = args.synthetic or (cohort.root / "inputs").is_dir()
    description = args.data_description or data_description(
        len(cohort), cohort.root.name, synthetic=synthetic
    )
    init_kind = None
    if args.init:
        init_kind = read_card(args.init).architecture["kind"]
    for kind in ["scanet", *(["resnet34"] if args.baselines else [])]:
        path = train_final(
            cohort,
            kind,
            settings,
            args.out / f"{kind}.pt",
            threshold=threshold,
            cv_summary=summary,
            data_description=description,
            synthetic=synthetic,
            command=shlex.join(["scanet-node", *args.argv]),
            init=args.init if kind == init_kind else None,
        )
        print(f"wrote {path} and its card {path.with_suffix('.md')}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from scanet_node.model.checkpoint import read_card
    from scanet_node.model.experiment import evaluate_checkpoints

    configure_logging("WARNING")
    size = int(read_card(args.checkpoint[0]).preprocessing["size"])
    cohort = _load_cohort(args.cohort, size, args.cache)
    out = args.out or Path(f"evaluation-{args.cohort.name}")
    _, text = evaluate_checkpoints(args.checkpoint, cohort, out)
    print(text)
    print(f"report, predictions and plots in {out}/")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from scanet_node.imaging.prepare import prepare
    from scanet_node.imaging.qc import NotAnalysable
    from scanet_node.model.predictor import Predictor

    configure_logging("WARNING")
    predictor = Predictor(args.checkpoint, device=args.device)
    try:
        model_input = prepare(args.study_dir, size=predictor.input_size)
    except NotAnalysable as exc:
        print(f"scanet-node: {exc}", file=sys.stderr)
        return 3
    prediction = predictor.predict(model_input.tensor)
    result = predictor.document(model_input.study_instance_uid, prediction)
    _print_json(result)
    if predictor.card.synthetic:
        print(
            "NOTE: demo weights trained on SYNTHETIC data; not for clinical use.", file=sys.stderr
        )
    return 0


def _cmd_outcomes(args: argparse.Namespace) -> int:
    from scanet_node.catalog.monitoring import Matched, MonitoringStore
    from scanet_node.monitoring.outcomes import OutcomeFileError, read_outcomes

    try:
        rows = read_outcomes(args.file, today=datetime.now(UTC).date())
    except OutcomeFileError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    catalog = _open_catalog(args)
    try:
        summary = MonitoringStore(catalog).import_outcomes(rows)
    finally:
        catalog.close()
    for row in summary.rows:
        if row.result in (Matched.UNMATCHED, Matched.REPLACED, Matched.KEPT_LATER):
            print(f"line {row.line}: {row.result}: {row.detail}")
    counts = ", ".join(
        f"{summary.count(m)} {m}" for m in Matched if m != Matched.UNMATCHED and summary.count(m)
    )
    print(
        f"{len(summary.rows)} rows: {summary.matched} matched ({counts or 'none'}), "
        f"{summary.count(Matched.UNMATCHED)} unmatched (not stored)"
    )
    return 0


def _cmd_performance(args: argparse.Namespace) -> int:
    from scanet_node.catalog import Catalog
    from scanet_node.catalog.monitoring import MonitoringStore
    from scanet_node.config import DEFAULT_CHECKPOINT
    from scanet_node.monitoring.live import Monitor
    from scanet_node.monitoring.text import report_lines

    settings = _load(args)
    catalog = Catalog(settings.catalog_url, create=False)
    try:
        monitor = Monitor(MonitoringStore(catalog), settings.model.checkpoint or DEFAULT_CHECKPOINT)
        report = monitor.report(args.since, fresh=True)
    finally:
        catalog.close()
    if args.json:
        _print_json(report.as_dict())
    else:
        print("\n".join(report_lines(report)))
    return 0


class _VariantNames:
    """The synthetic study variants, for ``synth --variant``'s choices: read from
    :mod:`scanet_node.synth` only when argparse checks or lists them, so that building the
    parser (every command, ``serve`` included) never imports the generator."""

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    @staticmethod
    def _names() -> tuple[str, ...]:
        from scanet_node.synth import VARIANT_NAMES

        return VARIANT_NAMES


def _option_parser(*arguments: tuple[str, dict[str, Any]]) -> argparse.ArgumentParser:
    """A parent parser holding options that several commands share."""
    parent = argparse.ArgumentParser(add_help=False)
    for flag, options in arguments:
        parent.add_argument(flag, **options)
    return parent


#: ``--data-dir``, ``--json`` and ``--limit``: the same meaning wherever a command takes them.
_DATA_DIR = _option_parser(("--data-dir", {"help": "override [node] data_dir"}))
_JSON = _option_parser(("--json", {"action": "store_true", "help": "machine-readable output"}))
_LIMIT = _option_parser(("--limit", {"type": int, "default": None, "help": "at most this many"}))
# `scanet-node serve --config FILE` as well as `scanet-node --config FILE serve`; SUPPRESS
# keeps a subcommand without it from overwriting the global option.
_CONFIG = _option_parser(
    ("--config", {"type": Path, "default": argparse.SUPPRESS, "help": "TOML settings file"})
)


class _Commands:
    """Adds the subcommands of ``scanet-node``, each with ``--config`` and its function."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        self,
        name: str,
        func: Callable[[argparse.Namespace], int],
        help: str,
        *parents: argparse.ArgumentParser,
    ) -> argparse.ArgumentParser:
        """A subcommand ``name`` that runs ``func``, with the shared options of ``parents``."""
        child = self._sub.add_parser(name, help=help, parents=[*parents, _CONFIG])
        child.set_defaults(func=func)
        return child


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scanet-node``."""
    parser = argparse.ArgumentParser(
        prog="scanet-node",
        description="A DICOM node that predicts recanalization after thrombectomy (SCANet).",
    )
    parser.add_argument("--version", action="version", version=f"scanet-node {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML settings file (default: ./config.toml if present, else built-in defaults)",
    )
    commands = _Commands(parser)
    _add_node_commands(commands)
    _add_catalog_commands(commands)
    _add_study_commands(commands)
    _add_synth_command(commands)
    _add_train_command(commands)
    _add_model_commands(commands)
    _add_monitoring_commands(commands)
    return parser


def _add_node_commands(commands: _Commands) -> None:
    """``serve`` and ``echo``."""
    serve = commands.add(
        "serve", _cmd_serve, "run the DICOM listener, the scheduler and a worker", _DATA_DIR
    )
    serve.add_argument("--host", help="override [node] host")
    serve.add_argument("--port", type=int, help="override [node] port")

    echo = commands.add("echo", _cmd_echo, "send a C-ECHO to a DICOM peer")
    echo.add_argument("host")
    echo.add_argument("port", type=int)
    echo.add_argument("--aet", default="SCANET", help="our calling AE title (default SCANET)")
    echo.add_argument(
        "--called-aet", default="ANY-SCP", help="the peer's AE title (default ANY-SCP)"
    )
    echo.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")


def _add_catalog_commands(commands: _Commands) -> None:
    """The commands that read or change the catalog, ``studies`` to ``audit``."""
    commands.add(
        "studies", _cmd_studies, "list the catalogued studies and their series", _JSON, _DATA_DIR
    )

    study = commands.add("study", _cmd_study, "show one study", _JSON, _DATA_DIR)
    study.add_argument("uid", help="Study Instance UID")

    db = commands.add(
        "db", _cmd_db, "the catalog's schema: show its revision, or upgrade it", _DATA_DIR
    )
    db.add_argument(
        "action",
        choices=("current", "upgrade"),
        help="current: print the revision (exit 1 unless head); upgrade: migrate to head",
    )

    commands.add(
        "worker", _cmd_worker, "run one analysis worker (scale-out; serve runs one)", _DATA_DIR
    )

    jobs = commands.add(
        "jobs", _cmd_jobs, "list analysis jobs, newest first", _LIMIT, _JSON, _DATA_DIR
    )
    jobs.add_argument("--study", help="only this Study Instance UID")

    doctor = commands.add(
        "doctor",
        _cmd_doctor,
        "list recent studies that have no result sent, and why (nothing stuck?)",
        _JSON,
        _DATA_DIR,
    )
    doctor.add_argument(
        "--hours", type=float, default=24.0, help="studies received in this many hours (24)"
    )

    deliveries = commands.add(
        "deliveries",
        _cmd_deliveries,
        "list result deliveries and their attempts",
        _JSON,
        _DATA_DIR,
    )
    deliveries.add_argument("--job", type=int, help="only this job")

    resend = commands.add("resend", _cmd_resend, "send a job's results again", _DATA_DIR)
    resend.add_argument("delivery", type=int, nargs="*", help="delivery ids")
    resend.add_argument("--job", type=int, help="every delivery of this job")

    reprocess = commands.add(
        "reprocess", _cmd_reprocess, "analyse a study again (an amended result)", _DATA_DIR
    )
    reprocess.add_argument("uid", help="Study Instance UID")

    purge = commands.add(
        "purge",
        _cmd_purge,
        "purge the studies [retention] says to, now (a de-identified audit row stays)",
        _DATA_DIR,
    )
    purge.add_argument("--dry-run", action="store_true", help="only print what would be purged")

    commands.add(
        "audit",
        _cmd_audit,
        "list purged studies (de-identified), newest first",
        _LIMIT,
        _JSON,
        _DATA_DIR,
    )


def _add_study_commands(commands: _Commands) -> None:
    """``demo`` and ``prepare``: one study through the node, or through ``imaging.prepare``."""
    demo = commands.add(
        "demo",
        _cmd_demo,
        "start a node and a local PACS, send a synthetic study, print the result",
    )
    demo.add_argument(
        "--data-dir", type=Path, default=Path("scanet-demo"), help="default ./scanet-demo"
    )
    demo.add_argument("--small", action="store_true", help="a small study (128 px): faster")
    demo.add_argument("--seed", type=int, default=7, help="which synthetic patient (default 7)")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    demo.add_argument(
        "--configured-destinations",
        action="store_true",
        help="send the results to the [[destinations]] of the settings, not a local peer",
    )
    demo.add_argument("--verbose", action="store_true", help="the node's log lines too")

    prep = commands.add(
        "prepare", _cmd_prepare, "make the model input of a study folder (load, classify, register)"
    )
    prep.add_argument("study_dir", type=Path, help="a study folder, one sub-folder per series")
    prep.add_argument("--out", type=Path, required=True, help="where to write the input")
    prep.add_argument("--method", choices=("affine", "syn"), help="override [imaging] registration")


def _add_synth_command(commands: _Commands) -> None:
    """``synth``: synthetic studies and cohorts."""
    synth = commands.add(
        "synth",
        _cmd_synth,
        "write synthetic stroke studies (CT + CTA DICOM with known ground truth)",
    )
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--studies", type=int, default=1, help="how many studies (default 1)")
    synth.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    synth.add_argument("--small", action="store_true", help="128x128 images, 2.5 mm CTA: fast")
    synth.add_argument(
        "--variant",
        choices=_VariantNames(),
        default="standard",
        metavar="VARIANT",
        help="study variant: %(choices)s (default standard)",
    )
    synth.add_argument("--cta-slice-mm", type=float, help="CTA slice thickness (default random)")
    synth.add_argument("--render", action="store_true", help="also write PNGs of each study")
    synth.add_argument(
        "--template-space",
        action="store_true",
        help="write only the model inputs (inputs/<case>.npz) made straight from the phantom",
    )
    synth.add_argument(
        "--prepared",
        action="store_true",
        help="write each study's input as the node makes it (DICOM through prepare), "
        "in parallel, resumable; the DICOM is not kept",
    )
    synth.add_argument(
        "--size", type=int, default=224, help="in-plane size of --template-space/--prepared inputs"
    )
    synth.add_argument(
        "--workers",
        type=int,
        help="processes for --prepared and --template-space (default: one per core)",
    )


def _add_train_command(commands: _Commands) -> None:
    """``train``: cross-validation and the final model ([ours]: not the paper's options)."""
    train = commands.add(
        "train", _cmd_train, "cross-validate SCANet and baselines, train the model"
    )
    train.add_argument("--cohort", type=Path, required=True, help="folder with labels.csv")
    train.add_argument("--out", type=Path, required=True, help="output folder")
    train.add_argument("--size", type=int, default=224, help="in-plane input size (default 224)")
    train.add_argument("--folds", type=int, default=5, help="CV folds; below 2: no CV (default 5)")
    train.add_argument("--epochs", type=int, default=200, help="at most (default 200)")
    train.add_argument("--batch-size", type=int, default=12, help="default 12")
    train.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    train.add_argument("--patience", type=int, default=20, help="early stopping (default 20)")
    train.add_argument("--seed", type=int, default=0, help="default 0")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU")
    train.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    train.add_argument("--no-augment", action="store_true", help="train without augmentation")
    train.add_argument(
        "--subtract-mean",
        action="store_true",
        help="the networks subtract the training inputs' mean image (stored with the weights)",
    )
    train.add_argument(
        "--standardize",
        action="store_true",
        help="the networks standardise each input voxel by the training inputs' mean and SD "
        "(stored with the weights; what made SCANet learn the synthetic cohort)",
    )
    _add_training_choices(train)
    _add_train_outputs(train)


def _add_training_choices(train: argparse.ArgumentParser) -> None:
    """``train``'s network, schedule and selection options (most of them [ours])."""
    train.add_argument(
        "--depth",
        type=int,
        choices=(18, 34),
        default=34,
        help="ResNet depth of the branches: 34 (the paper's, default) or 18 (for CPUs) [ours]",
    )
    train.add_argument(
        "--optimizer", choices=("adam", "adamw"), default="adam", help="default adam (the paper's)"
    )
    train.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning rate: constant (default) or a half cosine to 0 over --epochs [ours]",
    )
    train.add_argument(
        "--soft-targets",
        action="store_true",
        help="train towards labels.csv's true probability (synthetic cohorts) [ours]",
    )
    train.add_argument(
        "--slab-weight",
        type=float,
        default=0.0,
        help="weight of the slice attention's pull towards labels.csv's clot_slab (default 0) "
        "[ours]",
    )
    train.add_argument(
        "--misregister-mm",
        type=float,
        default=0.0,
        metavar="MM",
        help="move each training study as a registration off by about MM mm would (default 0: "
        "off; 3 imitates prepare's) [ours]",
    )
    train.add_argument(
        "--init",
        type=Path,
        metavar="CHECKPOINT",
        help="start from these weights (same architecture; fine-tuning, e.g. on prepared "
        "studies after template-space ones); its input standardisation is kept [ours]",
    )
    train.add_argument(
        "--select",
        choices=("best", "last"),
        default="best",
        help="keep the epoch of the best validation AUC (default) or the last epoch [ours]",
    )


def _add_train_outputs(train: argparse.ArgumentParser) -> None:
    """What ``train`` runs and writes: baselines, the final model, its cache and card."""
    train.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the ResNet34 and HU-feature baselines (default on)",
    )
    train.add_argument("--no-final", action="store_true", help="cross-validate only")
    train.add_argument("--cache", type=Path, help="prepared-input cache (default COHORT/.cache)")
    train.add_argument("--synthetic", action="store_true", help="mark the weights synthetic")
    train.add_argument("--data-description", help="training data, for the card")


def _add_monitoring_commands(commands: _Commands) -> None:
    """``outcomes`` and ``performance``: the model's performance here, and input drift."""
    outcomes = commands.add(
        "outcomes",
        _cmd_outcomes,
        "import the stroke registry's mTICI grades (CSV), matched to the analysed studies",
        _DATA_DIR,
    )
    outcomes.add_argument("action", choices=("import",), help="import: read FILE into the catalog")
    outcomes.add_argument(
        "file",
        type=Path,
        help="CSV: study_instance_uid, accession_number, or patient_id (+ issuer_of_patient_id) "
        "with ct_date; mtici (0 1 2a 2b 2c 3); procedure_date (README: Monitoring)",
    )
    performance = commands.add(
        "performance",
        _cmd_performance,
        "the model's performance against imported outcomes, and input drift",
        _JSON,
        _DATA_DIR,
    )
    performance.add_argument(
        "--since", type=date.fromisoformat, help="only studies analysed from this date (YYYY-MM-DD)"
    )


def _add_model_commands(commands: _Commands) -> None:
    """``evaluate`` checkpoints on a cohort, ``predict`` one study."""
    evaluate = commands.add("evaluate", _cmd_evaluate, "score checkpoints on a held-out cohort")
    evaluate.add_argument(
        "--checkpoint", type=Path, action="append", required=True, help="repeatable"
    )
    evaluate.add_argument("--cohort", type=Path, required=True, help="folder with labels.csv")
    evaluate.add_argument("--out", type=Path, help="report folder (default evaluation-COHORT)")
    evaluate.add_argument("--cache", type=Path, help="prepared-input cache")

    pred = commands.add("predict", _cmd_predict, "prepare one study folder and run the model on it")
    pred.add_argument("study_dir", type=Path)
    pred.add_argument("--checkpoint", type=Path, help="default: the shipped demo weights")
    pred.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scanet-node`` console script."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for the model card
    try:
        return int(args.func(args))
    except ScanetError as exc:
        print(f"scanet-node: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
