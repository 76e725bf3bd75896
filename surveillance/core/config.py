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
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from surveillance.core.errors import ConfigError
from surveillance.core.metrics import metric, metric_keys

DEFAULT_DB_URL = "sqlite:///surveillance.db"
#: A complete, commented configuration for a realistic model (used by the demo).
EXAMPLE_CONFIG = Path(__file__).parents[1] / "examples" / "cxr-pneumothorax.toml"
METRICS = metric_keys()


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

    @model_validator(mode="after")
    def _baselines_name_findings(self) -> ModelConfig:
        if not self.findings:
            raise ValueError(f"model {self.name!r} needs at least one finding")
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
    dashboard_url: str | None = Field(
        default=None, description="Grafana base URL used in alert links"
    )


class DriftConfig(_Strict):
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01
    window_days: Annotated[int, Field(ge=1)] = 7
    reference_days: Annotated[int, Field(ge=1)] = 28
    min_samples: Annotated[int, Field(ge=5)] = 50
    persistence_windows: Annotated[int, Field(ge=1)] = 2
    strata: list[Literal["overall", "site", "scanner"]] = ["overall", "site", "scanner"]


class PerformanceConfig(_Strict):
    window_days: Annotated[int, Field(ge=1)] = 28
    maturity_days: Annotated[int, Field(ge=0)] = 30
    min_samples: Annotated[int, Field(ge=5)] = 30
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
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
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_certificate: Path | None = Field(
        default=None, description="When set, peers must present a certificate it signed"
    )


class EmbeddingConfig(_Strict):
    extractor: str = "conv-ae"
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    decode_workers: Annotated[int, Field(ge=0, le=64)] = 2
    decode_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    decode_memory_mb: Annotated[int, Field(ge=64)] = 2048


class RetentionConfig(_Strict):
    """How long derived operational rows are kept; predictions and checks are evidence."""

    dead_letter_days: Annotated[int, Field(ge=1)] = 180
    job_run_days: Annotated[int, Field(ge=1)] = 400
    failed_spool_days: Annotated[int, Field(ge=1)] = 30


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
    retention: RetentionConfig = RetentionConfig()
    schedules: SchedulesConfig = SchedulesConfig()
    alerts: list[AlertChannelConfig] = Field(default_factory=list)

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
    "ModelConfig",
    "PerformanceConfig",
    "Settings",
    "load_settings",
    "parse_settings",
    "read_toml",
]
