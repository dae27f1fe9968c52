"""Typed settings, loaded from TOML and validated once at start-up.

Precedence, highest first: command-line overrides, environment variables
(``SCANET__SECTION__KEY=value``, for example ``SCANET__NODE__PORT=11113``), the
TOML file, the defaults below. ``config.example.toml`` documents every key.
This is the only module that reads configuration files or the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from scanet_node.errors import ConfigError
from scanet_node.imaging.thresholds import (
    CTA_MAX_SLICE_THICKNESS_MM,
    CTA_MIN_VESSEL_FRACTION,
    MIN_IMAGES,
    MIN_SIMILARITY,
    NCCT_MAX_SLICE_THICKNESS_MM,
    NCCT_MAX_VESSEL_FRACTION,
)

ENV_PREFIX = "SCANET__"


def _models_dir() -> Path:
    """The repository's ``models/`` in a source checkout (an editable install), else the copy
    ``pip install`` puts under ``<prefix>/share/scanet-node/models`` (pyproject data-files)."""
    checkout = Path(__file__).resolve().parents[1] / "models"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "scanet-node" / "models"


#: Weights, model cards and the CT template that ship with the node.
MODELS_DIR = _models_dir()
#: The shipped demo weights (trained on the synthetic cohort; see their card), the default
#: of ``[model] checkpoint``.
DEFAULT_CHECKPOINT = MODELS_DIR / "scanet-demo.pt"
DEFAULT_CONFIG_FILE = Path("config.toml")

# PS3.5 6.2: AE is up to 16 characters of the default character repertoire, no
# backslash or control characters; leading and trailing spaces are not significant.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)"
        )
    return stripped


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSettings(_Section):
    """``[node]``: how the DICOM listener presents itself and where it keeps data."""

    ae_title: str = "SCANET"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    data_dir: Path = Path("scanet-data")
    max_associations: int = Field(default=8, ge=1, le=256)
    min_free_disk_mb: int = Field(default=512, ge=0)
    max_pdu_size: int = Field(default=0, ge=0)

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("host")
    @classmethod
    def _host_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty (use 0.0.0.0 to listen on every interface)")
        return value.strip()

    @property
    def spool_dir(self) -> Path:
        """Where received instances are kept."""
        return self.data_dir / "spool"


class SecuritySettings(_Section):
    """``[security]``: who may connect, and TLS."""

    allowed_calling_aets: list[str] = Field(default_factory=list)
    #: Calling AE titles bound to host addresses: such an AE title gets in only from one of
    #: its addresses (IP addresses, or host names resolved when the listener starts).
    ae_hosts: dict[str, list[str]] = Field(default_factory=dict)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @field_validator("allowed_calling_aets")
    @classmethod
    def _valid_aets(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in value]

    @field_validator("ae_hosts")
    @classmethod
    def _valid_ae_hosts(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for aet, hosts in value.items():
            hosts = [h.strip() for h in hosts if h.strip()]
            if not hosts:
                raise ValueError(f"{aet!r}: give at least one host address")
            out[_check_ae_title(aet)] = hosts
        return out

    @model_validator(mode="after")
    def _tls_pair(self) -> SecuritySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ValueError(f"{missing} is required when the other of tls_cert/tls_key is set")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca (client certificate check) needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: file {str(path)!r} does not exist")
        return self

    @property
    def tls_enabled(self) -> bool:
        """True when the listener speaks DICOM over TLS."""
        return self.tls_cert is not None


class CatalogSettings(_Section):
    """``[catalog]``: the database; empty ``url`` means SQLite under ``data_dir``."""

    url: str = ""

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        value = value.strip()
        if value and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError(
                f"{value!r} is not a supported database URL "
                "(sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
            )
        return value


class PipelineSettings(_Section):
    """``[pipeline]``: timing of the hand-over from ingest to analysis."""

    #: A series counts as complete after this long without a new instance...
    series_settle_seconds: float = Field(default=10.0, gt=0, le=86400)
    #: ... or this long after its sender was done with it: the association that delivered it
    #: was released, or moved on to another series, and no other association is delivering
    #: it. ``series_settle_seconds`` stays the fallback for senders that hold associations
    #: open or spread a series over several.
    settle_after_release_seconds: float = Field(default=1.0, ge=0, le=3600)
    #: A patient's NCCT and CTA received within this many seconds of each other are paired,
    #: even across studies; a series waiting longer for its partner is reported missing.
    pairing_window_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400)
    #: Worker processes ``serve`` runs beside the listener (0: analysis runs elsewhere).
    workers: int = Field(default=1, ge=0, le=64)
    #: A worker renews its job's lease every third of this; a dead worker's job runs again
    #: once the lease has expired.
    job_lease_seconds: float = Field(default=120.0, ge=2, le=86400)
    #: Tries of a job that fails unexpectedly (a QC refusal is an outcome, not a failure), or
    #: whose worker stops during it (killed, out of memory); then the study is answered with
    #: a "not analysable" report that says the analysis failed.
    job_max_attempts: int = Field(default=3, ge=1, le=100)
    #: A failed job runs again after this long, doubling up to ``retry_max_seconds``.
    retry_initial_seconds: float = Field(default=30.0, gt=0, le=3600)
    retry_max_seconds: float = Field(default=600.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _retry_ordered(self) -> PipelineSettings:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must not be less than retry_initial_seconds")
        return self

    @property
    def settle_sweep_seconds(self) -> float:
        """How often the settle sweep runs: often enough to add at most a quarter of the
        shorter settle time (and never more than 1 s) of delay."""
        shortest = min(self.series_settle_seconds, self.settle_after_release_seconds or 1.0)
        return max(0.2, min(1.0, shortest / 4))


class Destination(_Section):
    """``[[destinations]]``: a DICOM peer that receives our results."""

    name: str = Field(min_length=1)
    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    #: DICOM TLS to this peer; its certificate is checked against ``tls_ca`` (default:
    #: the system's trusted CAs) and its name against ``tls_server_name`` (default: host).
    tls: bool = False
    tls_ca: Path | None = None
    #: Our client certificate and key, for a peer that asks for one (mutual TLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str = ""

    _ae = field_validator("ae_title")(_check_ae_title)

    @model_validator(mode="after")
    def _tls_files(self) -> Destination:
        names = ("tls_ca", "tls_cert", "tls_key", "tls_server_name")
        if not self.tls and any(getattr(self, n) for n in names):
            raise ValueError("tls_ca, tls_cert, tls_key and tls_server_name need tls = true")
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ValueError(f"{missing} is required when the other of tls_cert/tls_key is set")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: file {str(path)!r} does not exist")
        return self


class DeliverySettings(_Section):
    """``[delivery]``: sending results to the destinations, and retrying."""

    #: Our AE title as the calling AE; empty: [node] ae_title.
    calling_ae_title: str = ""
    #: First retry after this long, doubling up to ``retry_max_seconds``.
    retry_initial_seconds: float = Field(default=5.0, gt=0, le=3600)
    retry_max_seconds: float = Field(default=300.0, gt=0, le=86400)
    #: A destination still failing after this long is given up (recorded, `resend` retries).
    give_up_after_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    #: Network timeout of one association (connect, each response).
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("calling_ae_title")
    @classmethod
    def _aet(cls, value: str) -> str:
        return _check_ae_title(value) if value.strip() else ""

    @model_validator(mode="after")
    def _ordered(self) -> DeliverySettings:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must not be less than retry_initial_seconds")
        return self


#: Series number of the SR by default; the overlays take the next, the summary the one after.
RESULTS_SERIES_NUMBER = 9900


class ResultsSettings(_Section):
    """``[results]``: what is sent back."""

    #: Attention overlays: the NCCT slices of this many most-weighted slabs.
    overlay_slices: int = Field(default=4, ge=1, le=26)
    #: Series numbers: the SR gets this, the attention overlays +1, the summary image +2.
    series_number: int = Field(default=RESULTS_SERIES_NUMBER, ge=1, le=2**31 - 3)


class ImagingSettings(_Section):
    """``[imaging]``: how the non-contrast CT and the CTA are chosen among a study's series."""

    extra_cta_patterns: list[str] = Field(default_factory=list)
    extra_ncct_patterns: list[str] = Field(default_factory=list)
    extra_head_patterns: list[str] = Field(default_factory=list)
    extra_exclude_patterns: list[str] = Field(default_factory=list)
    ncct_max_slice_thickness_mm: float = Field(default=NCCT_MAX_SLICE_THICKNESS_MM, gt=0)
    cta_max_slice_thickness_mm: float = Field(default=CTA_MAX_SLICE_THICKNESS_MM, gt=0)
    min_images: int = Field(default=MIN_IMAGES, ge=1)
    cta_min_vessel_fraction: float = Field(default=CTA_MIN_VESSEL_FRACTION, gt=0, lt=1)
    ncct_max_vessel_fraction: float = Field(default=NCCT_MAX_VESSEL_FRACTION, ge=0, lt=1)
    registration: Literal["affine", "syn"] = "affine"
    min_registration_similarity: float = Field(default=MIN_SIMILARITY, ge=0, le=1)

    @field_validator(
        "extra_cta_patterns", "extra_ncct_patterns", "extra_head_patterns", "extra_exclude_patterns"
    )
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _fractions_ordered(self) -> ImagingSettings:
        if self.cta_min_vessel_fraction <= self.ncct_max_vessel_fraction:
            raise ValueError(
                "cta_min_vessel_fraction must be greater than ncct_max_vessel_fraction"
            )
        return self


class ModelSettings(_Section):
    """``[model]``: which weights the worker loads and where it runs them."""

    #: Empty: the shipped demo weights (models/scanet-demo.pt, trained on SYNTHETIC data).
    checkpoint: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: CPU threads for inference; 0 lets torch decide.
    threads: int = Field(default=0, ge=0, le=256)

    @field_validator("checkpoint")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file '{value}' does not exist")
        return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminSettings(_Section):
    """``[admin]``: the read-only web page, ``/healthz`` and ``/metrics`` that ``serve`` runs."""

    enabled: bool = True
    #: Loopback by default; any other address needs ``token``.
    host: str = "127.0.0.1"
    port: int = Field(default=8104, ge=0, le=65535)
    #: Asked for as ``Authorization: Bearer TOKEN`` (or ``?token=TOKEN`` in a browser) on
    #: every page but ``/healthz``; required when ``host`` is not a loopback address.
    token: str = Field(default="", validate_default=True)

    @field_validator("token")
    @classmethod
    def _token_off_loopback(cls, value: str, info: ValidationInfo) -> str:
        host = str(info.data.get("host", "127.0.0.1"))
        if info.data.get("enabled", True) and not _is_loopback(host) and not value:
            raise ValueError(f"required when host is not a loopback address (host = {host!r})")
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value


class RetentionSettings(_Section):
    """``[retention]``: how long received instances and results are kept."""

    #: Spool files and results of a study whose last instance arrived more than this many
    #: days ago are deleted; the catalog keeps a de-identified audit row of the study.
    days: float = Field(default=30.0, gt=0, le=3650)
    #: Also purge a study as soon as every delivery of its results succeeded.
    purge_after_delivery: bool = False
    #: How often the scheduler looks for studies to purge.
    sweep_seconds: float = Field(default=300.0, ge=1, le=86400)


class LoggingSettings(_Section):
    """``[logging]``: the level of the node's own log lines."""

    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"{value!r} is not one of DEBUG, INFO, WARNING, ERROR")
        return level


class Settings(_Section):
    """All of scanet-node's settings."""

    node: NodeSettings = Field(default_factory=NodeSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    destinations: list[Destination] = Field(default_factory=list)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    results: ResultsSettings = Field(default_factory=ResultsSettings)
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _unique_destinations(self) -> Settings:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def catalog_url(self) -> str:
        """The SQLAlchemy URL of the catalog, with the SQLite default filled in."""
        if self.catalog.url:
            return self.catalog.url
        return f"sqlite:///{(self.node.data_dir / 'catalog.sqlite').resolve()}"

    @property
    def results_dir(self) -> Path:
        """Where the results of each job are kept (``job-<id>/``)."""
        return self.node.data_dir / "results"

    @property
    def calling_ae_title(self) -> str:
        """Our AE title when we send."""
        return self.delivery.calling_ae_title or self.node.ae_title


def _parse_env_value(raw: str) -> Any:
    """Read an environment value as a TOML value where it is one, else as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"environment variable {name}: expected {ENV_PREFIX}SECTION__KEY, "
                f"for example {ENV_PREFIX}NODE__PORT"
            )
        out.setdefault(parts[0], {})[parts[1]] = _parse_env_value(raw)
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _key_name(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "(top level)"
    if loc[0] == "destinations" and len(loc) > 1:
        rest = ".".join(str(p) for p in loc[2:])
        return f"[[destinations]] #{int(loc[1]) + 1}" + (f" {rest}" if rest else "")
    if len(loc) == 1:
        return f"[{loc[0]}]" if loc[0] in Settings.model_fields else str(loc[0])
    return f"[{loc[0]}] " + ".".join(str(p) for p in loc[1:])


#: Keys whose values an error message never repeats.
_SECRET_KEYS = {"token"}


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        elif (
            "input" in item
            and not isinstance(item["input"], dict | list)
            and item["loc"][-1] not in _SECRET_KEYS
        ):
            msg += f" (got {item['input']!r})"
        lines.append(f"  {_key_name(tuple(item['loc']))}: {msg}")
    return "\n".join(lines)


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Load and validate the settings.

    Parameters
    ----------
    path
        A TOML file. ``None`` means ``./config.toml`` when it exists, else defaults only.
    environ
        Environment to read ``SCANET__SECTION__KEY`` overrides from (default ``os.environ``).
    overrides
        Values from the command line, by section, applied last.

    Raises
    ------
    ConfigError
        With every invalid key named and the reason.
    """
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"configuration file {str(path)!r} cannot be read: {exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"configuration file {str(path)!r} is not valid TOML: {exc}"
            ) from None
    env = _env_overrides(os.environ if environ is None else environ)
    if env:
        source += " + environment"
    data = _merge(data, env)
    if overrides:
        data = _merge(data, {k: dict(v) for k, v in overrides.items() if v})
        source += " + command line"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
