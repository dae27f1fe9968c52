"""``scanet-node``: the command line. Thin: parse, load the settings, call one function."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from scanet_node import __version__
from scanet_node.errors import ScanetError
from scanet_node.synth import VARIANT_NAMES


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom's own INFO lines repeat what our association lines say.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _load(args: argparse.Namespace, overrides: dict[str, dict[str, Any]] | None = None) -> Any:
    from scanet_node.config import load_settings

    return load_settings(args.config, overrides=overrides)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds") + "Z"
    return str(value)


def _print_json(value: object) -> None:
    print(json.dumps(value, default=_json_default, indent=2))


def _cmd_serve(args: argparse.Namespace) -> int:
    node: dict[str, Any] = {}
    if args.host is not None:
        node["host"] = args.host
    if args.port is not None:
        node["port"] = args.port
    if args.data_dir is not None:
        node["data_dir"] = args.data_dir
    settings = _load(args, {"node": node})
    _configure_logging(settings.logging.level)
    from scanet_node.service import serve

    serve(settings)
    return 0


def _cmd_echo(args: argparse.Namespace) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=args.aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = args.timeout
    assoc = ae.associate(args.host, args.port, ae_title=args.called_aet)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "could not be established"
        print(f"echo {args.host}:{args.port} as {args.aet}: association {why}", file=sys.stderr)
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    if status and status.Status == 0x0000:
        print(f"echo {args.host}:{args.port} ({args.called_aet}): success")
        return 0
    code = f"0x{status.Status:04X}" if status else "no response"
    print(f"echo {args.host}:{args.port}: failed ({code})", file=sys.stderr)
    return 1


def _open_catalog(args: argparse.Namespace) -> Any:
    from scanet_node.catalog import Catalog

    node = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    settings = _load(args, {"node": node})
    return Catalog(settings.catalog_url, create=False)


def _study_lines(study: Any) -> list[str]:
    lines = [
        f"{study.study_instance_uid}  {study.study_date or '-':8}  "
        f"{study.num_instances} instances  last received {_json_default(study.last_received_at)}"
    ]
    for s in study.series:
        lines.append(
            f"  {s.series_number if s.series_number is not None else '-':>4} "
            f"{s.modality or '-':3} {s.state:9} {s.num_instances:5}  "
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


def _cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scanet_node.synth.cohort import generate_cohort
    from scanet_node.synth.render import render_study

    with tqdm(total=args.studies, unit="study", desc="synth", file=sys.stderr) as bar:
        summary = generate_cohort(
            args.out,
            args.studies,
            args.seed,
            small=args.small,
            variant=args.variant,
            cta_slice_mm=args.cta_slice_mm,
            progress=lambda done, _total: bar.update(1),
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
    print("  SYNTHETIC DATA: not from any patient; not for clinical use.")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from scanet_node.imaging.classify import rules_from_settings
    from scanet_node.imaging.model_input import save
    from scanet_node.imaging.prepare import prepare
    from scanet_node.imaging.qc import NotAnalysable

    settings = _load(args)
    _configure_logging(settings.logging.level)
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the DICOM listener and the scheduler")
    serve.add_argument("--host", help="override [node] host")
    serve.add_argument("--port", type=int, help="override [node] port")
    serve.add_argument("--data-dir", help="override [node] data_dir")
    serve.set_defaults(func=_cmd_serve)

    echo = sub.add_parser("echo", help="send a C-ECHO to a DICOM peer")
    echo.add_argument("host")
    echo.add_argument("port", type=int)
    echo.add_argument("--aet", default="SCANET", help="our calling AE title (default SCANET)")
    echo.add_argument(
        "--called-aet", default="ANY-SCP", help="the peer's AE title (default ANY-SCP)"
    )
    echo.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    echo.set_defaults(func=_cmd_echo)

    studies = sub.add_parser("studies", help="list the catalogued studies and their series")
    studies.add_argument("--json", action="store_true", help="machine-readable output")
    studies.add_argument("--data-dir", help="override [node] data_dir")
    studies.set_defaults(func=_cmd_studies)

    study = sub.add_parser("study", help="show one study")
    study.add_argument("uid", help="Study Instance UID")
    study.add_argument("--json", action="store_true", help="machine-readable output")
    study.add_argument("--data-dir", help="override [node] data_dir")
    study.set_defaults(func=_cmd_study)

    prep = sub.add_parser(
        "prepare", help="make the model input of a study folder (load, classify, register)"
    )
    prep.add_argument("study_dir", type=Path, help="a study folder, one sub-folder per series")
    prep.add_argument("--out", type=Path, required=True, help="where to write the input")
    prep.add_argument("--method", choices=("affine", "syn"), help="override [imaging] registration")
    prep.set_defaults(func=_cmd_prepare)

    synth = sub.add_parser(
        "synth", help="write synthetic stroke studies (CT + CTA DICOM with known ground truth)"
    )
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--studies", type=int, default=1, help="how many studies (default 1)")
    synth.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    synth.add_argument("--small", action="store_true", help="128x128 images, 2.5 mm CTA: fast")
    synth.add_argument("--variant", choices=VARIANT_NAMES, default="standard", help="study variant")
    synth.add_argument("--cta-slice-mm", type=float, help="CTA slice thickness (default random)")
    synth.add_argument("--render", action="store_true", help="also write PNGs of each study")
    synth.set_defaults(func=_cmd_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scanet-node`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ScanetError as exc:
        print(f"scanet-node: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
