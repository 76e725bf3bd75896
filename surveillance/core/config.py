"""Configuration: one TOML file, validated with typo-rejecting pydantic models.

Precedence (lowest to highest): the TOML file < environment variables < CLI
flags. Environment variables (DESIGN.md, "Environment"):

``SURVEILLANCE_CONFIG``            path of the TOML file
``SURVEILLANCE_DB_URL``            database URL (default ``sqlite:///surveillance.db``)
``SURVEILLANCE_KAFKA_BOOTSTRAP``   Kafka bootstrap servers
``SURVEILLANCE_PSEUDONYM_KEY_FILE`` HMAC key file, kept outside the database
``SURVEILLANCE_MODE``              ``production`` (default) or ``demo``

See ``deploy/surveillance.example.toml`` for a complete, commented example.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from surveillance.core.errors import ConfigError
from surveillance.core.metrics import metric, metric_keys

DEFAULT_DB_URL = "sqlite:///surveillance.db"
#: A complete, commented configuration for a realistic model (used by the demo).
EXAMPLE_CONFIG = Path(__file__).parents[1] / "examples" / "cxr-pneumothorax.toml"
METRICS = metric_keys()
#: Embedding extractor keys (the registry of surveillance.analysis.embeddings.backbones,
#: which core may not import; tests/test_intake_hardening.py keeps the two equal).
KNOWN_EXTRACTORS = ("bbsd", "conv-ae", "exported", "torchscript", "torchvision")
_UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineConfig(_Strict):
    """One clearance-study figure and the limit below which live performance breaches."""

    finding: str
    metric: str = Field(description="A registered metric key (surveillance.core.metrics)")
    stratum: str = "overall"
    value: Annotated[float, Field(ge=0, le=1)]
    ci_lower: Annotated[float | None, Field(ge=0, le=1)] = None
    ci_upper: Annotated[float | None, Field(ge=0, le=1)] = None
    alert_limit: Annotated[float, Field(ge=0, le=1)]
    source_document: str = Field(min_length=1, description="e.g. '510(k) K251234, Table 7'")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"unknown metric {value!r}; expected one of {', '.join(METRICS)}")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> BaselineConfig:
        lower, upper = self.ci_lower, self.ci_upper
        if lower is not None and upper is not None and not lower <= self.value <= upper:
            raise ValueError(
                f"baseline {self.metric} for {self.finding}: value {self.value} must lie "
                f"within its confidence interval [{lower}, {upper}]"
            )
        if metric(self.metric).higher_is_better and self.alert_limit > self.value:
            raise ValueError(
                f"baseline {self.metric} for {self.finding}: alert_limit {self.alert_limit} "
                f"is above the cleared value {self.value}"
            )
        return self


class ModelConfig(_Strict):
    """A deployed model and its clearance baseline."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    version: str = Field(min_length=1, max_length=64)
    manufacturer: str | None = None
    intended_use: str = Field(min_length=1)
    findings: dict[str, Annotated[float, Field(gt=0, lt=1)]] = Field(
        description="finding name -> operating threshold on the score"
    )
    baselines: list[BaselineConfig] = Field(default_factory=list)
    monitor_only: bool = Field(
        default=False,
        description="True: no clearance baselines, so drift is watched but no performance "
        "breach can be judged. A model without baselines is refused unless this is set.",
    )
    # Device identification (MDCG 2022-21 Annex I), printed on the PMS report and in the
    # Article 72 export; unset fields are shown as "to be completed".
    udi_di: str | None = Field(
        default=None, max_length=128, description="UDI-DI of this version, e.g. 0123456789ABCD"
    )
    basic_udi_di: str | None = Field(
        default=None, max_length=128, description="Basic UDI-DI, e.g. 4069999SURVCXRPTXW7"
    )
    device_class: str | None = Field(
        default=None, max_length=32, description="Risk class, e.g. 'IIa (MDR Rule 11)'"
    )
    notified_body: str | None = Field(
        default=None, max_length=256, description="Notified body and number, e.g. 'TUV (0123)'"
    )
    certificate: str | None = Field(
        default=None, max_length=256, description="Certificate number(s), e.g. 'MDR 712345'"
    )

    @model_validator(mode="after")
    def _baselines_name_findings(self) -> ModelConfig:
        if not self.findings:
            raise ValueError(f"model {self.name!r} needs at least one finding")
        if not self.baselines and not self.monitor_only:
            raise ValueError(
                f"model {self.name!r} has no [[models.baselines]]: add the clearance figures "
                "(metric, value, alert_limit, source_document), or set monitor_only = true "
                "to watch drift only"
            )
        for baseline in self.baselines:
            if baseline.finding not in self.findings:
                raise ValueError(
                    f"model {self.name!r}: baseline names finding {baseline.finding!r}, "
                    f"which is not in findings {sorted(self.findings)}"
                )
        return self


class ServiceConfig(_Strict):
    mode: Literal["production", "demo"] = "production"
    db_url: str = DEFAULT_DB_URL
    pseudonym_key_file: Path | None = None
    audit_key_file: Path | None = Field(
        default=None,
        description="Hex key (as 'surveillance keys generate' writes) for the audit chain's "
        "HMAC; default: derived from pseudonym_key_file. Kept outside the database.",
    )
    dashboard_url: str | None = Field(
        default=None,
        description="Grafana base URL used in alert links, e.g. 'https://grafana.example.org' "
        "(links go to the surveillance-drift / surveillance-performance dashboards)",
    )
    runbook_url: str | None = Field(
        default=None,
        description="Runbook for on-call, sent as the Alertmanager 'runbook_url' annotation, "
        "e.g. 'https://wiki.example.org/surveillance/runbook'",
    )
    http_listen: str | None = Field(
        default=None,
        pattern=r"^[^\s:]*:[0-9]{1,5}$",
        description="'HOST:PORT' where 'surveillance run' serves /healthz, /readyz and "
        "/metrics, e.g. '0.0.0.0:9108'; unset: no HTTP endpoint",
    )


class ReportsConfig(_Strict):
    """``[reports]``: where the scheduled quarterly PMS reports are written."""

    out_dir: Path = Field(
        default=Path("reports"),
        description="Writable folder for scheduled PMS reports, e.g. '/var/lib/surveillance/"
        "reports' (the k8s manifests mount a volume there)",
    )


class MinEffectConfig(_Strict):
    """``[drift.min_effect]``: the tolerance per signal family, on its effect scale.

    A check is ``drift`` only when it is significant after the window's
    multiple-testing control *and* its effect size reaches this value;
    significant but smaller is ``below_tolerance`` (shown, never an incident).
    Example: ``[drift.min_effect] metadata = 0.2``.
    """

    score: Annotated[float, Field(ge=0)] = Field(
        default=0.1, description="KS D on the model's scores (0.1: ~0.25 SD shift)"
    )
    acquisition: Annotated[float, Field(ge=0)] = Field(
        default=0.1, description="largest KS D over kVp, pixel spacing, slice thickness"
    )
    metadata: Annotated[float, Field(ge=0)] = Field(
        default=0.1, description="Cramér's V of a header field (0.1: small, 0.3: medium)"
    )
    embedding: Annotated[float, Field(ge=0)] = Field(
        default=0.15,
        description="KS D over principal components (ks-pca) and normalised MMD (mmd)",
    )
    image: Annotated[float, Field(ge=0)] = Field(
        default=0.2, description="KS D of one image-quality feature (noise, sharpness, ...)"
    )


class DriftConfig(_Strict):
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01
    window_days: Annotated[int, Field(ge=1)] = 7
    reference_days: Annotated[int, Field(ge=1)] = 28
    min_samples: Annotated[int, Field(ge=5)] = 50
    persistence_windows: Annotated[int, Field(ge=1)] = 2
    strata: list[Literal["overall", "site", "scanner"]] = ["overall", "site", "scanner"]
    correction: Literal["holm", "fdr_bh"] = Field(
        default="fdr_bh",
        description="Multiple-testing control within each window, across strata and signals",
    )
    min_effect: MinEffectConfig = Field(default_factory=MinEffectConfig)
    image_min_samples: Annotated[int, Field(ge=5)] = Field(
        default=20,
        description="Fewest studies with images per side for the image:* and embedding tests",
    )
    worker_poll_seconds: Annotated[float, Field(ge=0)] = Field(
        default=5.0,
        description="How often every replica's check worker looks for queued drift windows "
        "to judge (0: this replica judges only the windows of its own runs)",
    )


class PerformanceConfig(_Strict):
    window_days: Annotated[int, Field(ge=1)] = 28
    maturity_days: Annotated[int, Field(ge=0)] = 30
    min_samples: Annotated[int, Field(ge=5)] = 30
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    max_interval_width: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.25,
        description="An interval that contains the alert limit and is wider than this "
        "cannot decide: insufficient_data (narrower: judged by the point estimate)",
    )
    cusum_arl0_days: Annotated[float, Field(gt=0)] = Field(
        default=365.0,
        description="CUSUM in-control average run length in days of expected volume "
        "(one false alarm a year by default)",
    )
    calibration_days: Annotated[int, Field(ge=1)] = Field(
        default=30,
        description="The label-free estimates are calibrated on the matured, labelled cases "
        "of this many days before the maturity horizon",
    )
    strata: list[Literal["overall", "site", "scanner", "sex", "age_band"]] = [
        "overall",
        "site",
        "scanner",
    ]


class KafkaConfig(_Strict):
    bootstrap: str | None = None
    group_id: str = "surveillance"
    predictions_topic: str = "imaging.predictions"
    metadata_topic: str = "imaging.dicom-metadata"
    diagnoses_topic: str = "imaging.diagnoses"
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    poll_timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 500
    writers: Annotated[int, Field(ge=1, le=16)] = 2
    session_timeout_ms: Annotated[int, Field(ge=1000)] = 10_000
    heartbeat_interval_ms: Annotated[int, Field(ge=100)] = 3_000
    check_crcs: bool = Field(
        default=False, description="Verify record CRCs (slow in pure Python; as librdkafka)"
    )
    on_offset_out_of_range: Literal["earliest", "stop"] = Field(
        default="earliest",
        description="When a stored offset lies outside the broker's log (log lost, topic "
        "recreated): 'earliest' re-reads from the log start (idempotent), 'stop' stops the "
        "consumer. Either way an intake incident is raised.",
    )


class DicomConfig(_Strict):
    receive: bool = Field(default=False, description="Run the C-STORE receiver in the daemon")
    ae_title: str = Field(default="SURVEILLANCE", max_length=16)
    port: Annotated[int, Field(ge=1, le=65535)] = 11112
    spool_dir: Path = Path("spool")
    drop_folder: Path | None = None
    drop_folder_poll_seconds: Annotated[float, Field(gt=0)] = 5.0
    allowed_calling_aets: list[Annotated[str, Field(max_length=16)]] = Field(
        default_factory=list, description="Empty: accept any calling AE title"
    )
    max_file_bytes: Annotated[int, Field(ge=1024)] = 512 * 1024 * 1024
    max_decoded_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=2 * 1024**3,
        description="Pixel budget: Rows x Columns x Frames x Samples x bytes per sample "
        "declared by a header; larger instances are refused before any decode",
    )
    accepted_sop_classes: (
        Literal["images", "all"] | list[Annotated[str, Field(max_length=64, pattern=_UID_PATTERN)]]
    ) = Field(
        default="images",
        description="'images': the image storage classes (CT, MR, CR, DX, MG, US, SC, XA, NM, "
        "PT); 'all': every storage class; or a list of SOP class UIDs",
    )
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_certificate: Path | None = Field(
        default=None, description="When set, peers must present a certificate it signed"
    )


class EmbeddingConfig(_Strict):
    extractor: str = "conv-ae"

    @field_validator("extractor")
    @classmethod
    def _known_extractor(cls, value: str) -> str:
        if value not in KNOWN_EXTRACTORS:
            raise ValueError(
                f"unknown extractor {value!r}; expected one of {', '.join(KNOWN_EXTRACTORS)}"
            )
        return value

    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    decode_workers: Annotated[int, Field(ge=0, le=64)] = 2
    decode_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    decode_memory_mb: Annotated[int, Field(ge=64)] = 2048


class IntakeConfig(_Strict):
    """Limits on what the intake accepts (every entry point)."""

    not_before: datetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="Event times before this are dead-lettered (a broken clock, 1900, 0001)",
    )
    max_ahead_hours: Annotated[float, Field(ge=0, le=24 * 366)] = Field(
        default=24.0, description="Event times more than this ahead of now are dead-lettered"
    )
    uncoded_reports_absent: bool = Field(
        default=False,
        description="True: a FHIR report without a known code means 'every finding absent'; "
        "default: it is dead-lettered (an uncoded report says nothing about our findings)",
    )

    @field_validator("not_before")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("not_before needs a time zone, e.g. 2000-01-01T00:00:00Z")
        return value.astimezone(UTC)


class RetentionConfig(_Strict):
    """How long derived operational rows are kept; predictions and checks are evidence."""

    dead_letter_days: Annotated[int, Field(ge=1)] = 180
    job_run_days: Annotated[int, Field(ge=1)] = 400
    failed_spool_days: Annotated[int, Field(ge=1)] = 30
    #: Months of predictions kept on PostgreSQL: the retention job detaches and
    #: drops the monthly partitions that end on or before the start of the month
    #: this many months before the current one (so at least this many whole months
    #: stay, plus the current one). Default None: keep forever. Predictions are
    #: PMS evidence: the MDR (Art. 10(8), Annex IX §8) expects the technical
    #: documentation, PMS data included, to be kept for at least the device's
    #: lifetime and 10 years after the last device is placed on the market; set
    #: it only from your QMS's retention rule. Example: ``prediction_months = 180``.
    #: SQLite: ignored.
    prediction_months: Annotated[int, Field(ge=1)] | None = None
    #: Months of embeddings kept on PostgreSQL (by ``created_at``), the same way.
    #: Default None: keep forever. Embeddings can be recomputed only while the
    #: images exist; drop them once the period's drift checks are recorded.
    #: Example: ``embedding_months = 24``. SQLite: ignored.
    embedding_months: Annotated[int, Field(ge=1)] | None = None


class SchedulesConfig(_Strict):
    """Cron-style or interval schedules (``"every 15m"``, ``"cron 0 6 * * 1"``)."""

    drift: str = "every 1h"
    performance: str = "every 6h"
    embeddings: str = "every 5m"
    alert_retries: str = "every 1m"
    retention: str = "cron 0 3 * * *"
    quarterly_report: str = "cron 0 6 1 1,4,7,10 *"


class AlertChannelConfig(_Strict):
    name: str
    type: Literal["webhook", "alertmanager", "slack", "smtp"]
    url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    sender: str | None = None
    recipients: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _target(self) -> AlertChannelConfig:
        if self.type == "smtp":
            if not (self.smtp_host and self.sender and self.recipients):
                raise ValueError(
                    f"alert channel {self.name!r}: smtp needs smtp_host, sender and recipients"
                )
        elif not self.url:
            raise ValueError(f"alert channel {self.name!r}: type {self.type} needs a url")
        return self


class SiteConfig(_Strict):
    """A display label for a site, keyed by its InstitutionName pseudonym."""

    pseudonym: str = Field(pattern=r"^[0-9a-f]{64}$")
    label: str


class Settings(_Strict):
    service: ServiceConfig = ServiceConfig()
    models: list[ModelConfig] = Field(default_factory=list)
    sites: list[SiteConfig] = Field(default_factory=list)
    drift: DriftConfig = DriftConfig()
    performance: PerformanceConfig = PerformanceConfig()
    kafka: KafkaConfig = KafkaConfig()
    dicom: DicomConfig = DicomConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    intake: IntakeConfig = IntakeConfig()
    retention: RetentionConfig = RetentionConfig()
    schedules: SchedulesConfig = SchedulesConfig()
    alerts: list[AlertChannelConfig] = Field(default_factory=list)
    reports: ReportsConfig = ReportsConfig()

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {duplicates}")
        return models

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        known = ", ".join(m.name for m in self.models) or "none"
        raise ConfigError(f"no model {name!r} in the configuration (configured: {known})")


def _describe(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown setting (typo?)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid configuration in {source}: {where}: {message}{more}"


def parse_settings(data: Mapping[str, Any], source: str = "configuration") -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"configuration file {path} is not valid TOML: not UTF-8 at byte {exc.start}"
        ) from exc
    except RecursionError as exc:
        raise ConfigError(
            f"configuration file {path} is not valid TOML: arrays or tables nest too deeply"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """File < environment < ``overrides`` (CLI flags), as ``{"service.db_url": ...}``."""
    env = os.environ if env is None else env
    if path is None and env.get("SURVEILLANCE_CONFIG"):
        path = Path(env["SURVEILLANCE_CONFIG"])
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"

    layered: dict[str, Any] = {}
    env_map = {
        "SURVEILLANCE_DB_URL": "service.db_url",
        "SURVEILLANCE_PSEUDONYM_KEY_FILE": "service.pseudonym_key_file",
        "SURVEILLANCE_MODE": "service.mode",
        "SURVEILLANCE_KAFKA_BOOTSTRAP": "kafka.bootstrap",
    }
    for var, dotted in env_map.items():
        if env.get(var):
            layered[dotted] = env[var]
    layered.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for dotted, value in layered.items():
        section, key = dotted.split(".", 1)
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"invalid configuration in {source}: [{section}] must be a table")
        target[key] = value
    return parse_settings(data, source)


__all__ = [
    "AlertChannelConfig",
    "BaselineConfig",
    "DriftConfig",
    "IntakeConfig",
    "ModelConfig",
    "PerformanceConfig",
    "Settings",
    "load_settings",
    "parse_settings",
    "read_toml",
]
