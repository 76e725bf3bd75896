"""Grafana provisioning files and the push to a running Grafana.

The dashboards are the JSON files beside this module (``overview``, ``drift``,
``performance``, ``incidents``). Every panel is raw SQL on one PostgreSQL data
source with uid ``surveillance-pg``, connected as the read-only role of
``deploy/readonly_role.sql``.

* :func:`export_provisioning` writes what Grafana reads at start-up from
  ``/etc/grafana/provisioning``: ``datasources/surveillance.yaml``,
  ``dashboards/surveillance.yaml`` (a file provider) and the dashboards under
  ``dashboards/surveillance/``. The password is not written: the data source
  reads ``$SURVEILLANCE_GRAFANA_DB_PASSWORD`` from Grafana's environment.
* :func:`push` uploads the dashboards into a folder through the Grafana HTTP API
  and writes each incident with drift evidence as an annotation on the drift dashboard
  (once: an annotation carries the tag ``surveillance-incident-<id>``).

HTTP client: ``grafana-api`` 1.0.3, not its maintained fork ``grafana-client``.
The fork's 5.x pulls ``niquests`` and ``urllib3-future``, which installs over the
files of ``urllib3`` that ``requests`` (and so the rest of this project) uses;
grafana-api needs only ``requests``. We use few of its calls (folders,
``POST /dashboards/db``, annotations) and they are stable Grafana API, so the
unmaintained wrapper is a small, contained risk: ``_Grafana`` is the one place
to change if it ever has to go.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from surveillance.core.errors import SurveillanceError, UsageError

if TYPE_CHECKING:
    from surveillance.store import Store

DASHBOARD_DIR = Path(__file__).resolve().parent
DATASOURCE_UID = "surveillance-pg"
DATASOURCE_TYPE = "grafana-postgresql-datasource"
DRIFT_DASHBOARD_UID = "surveillance-drift"
FOLDER_UID = "surveillance"


class GrafanaPushError(SurveillanceError):
    """Grafana refused or could not be reached."""


@dataclass(frozen=True, slots=True)
class DataSource:
    host: str = "postgres"
    port: int = 5432
    database: str = "surveillance"
    user: str = "surveillance_grafana"
    sslmode: str = "prefer"


@dataclass(frozen=True, slots=True)
class PushResult:
    dashboards: tuple[str, ...]
    annotations: int


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def dashboards() -> list[dict[str, Any]]:
    """The dashboards as Grafana JSON models, ordered by file name."""
    return [json.loads(path.read_text("utf-8")) for path in dashboard_files()]


def _yaml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def datasource_yaml(source: DataSource) -> str:
    return f"""# Provisioned by 'surveillance dashboards export'. The password comes from
# Grafana's environment: SURVEILLANCE_GRAFANA_DB_PASSWORD (never written here).
apiVersion: 1
datasources:
  - name: surveillance
    uid: {DATASOURCE_UID}
    type: {DATASOURCE_TYPE}
    access: proxy
    url: {source.host}:{source.port}
    user: {source.user}
    isDefault: true
    editable: false
    jsonData:
      database: {_yaml_string(source.database)}
      sslmode: {_yaml_string(source.sslmode)}
      postgresVersion: 1500
      maxOpenConns: 10
      maxIdleConns: 2
      connMaxLifetime: 14400
      timescaledb: false
    secureJsonData:
      password: $SURVEILLANCE_GRAFANA_DB_PASSWORD
"""


def dashboards_provider_yaml(path: str) -> str:
    return f"""# Provisioned by 'surveillance dashboards export'.
apiVersion: 1
providers:
  - name: surveillance
    orgId: 1
    folder: Surveillance
    folderUid: {FOLDER_UID}
    type: file
    disableDeletion: true
    allowUiUpdates: false
    updateIntervalSeconds: 60
    options:
      path: {path}
      foldersFromFilesStructure: false
"""


def export_provisioning(
    directory: Path,
    source: DataSource | None = None,
    *,
    dashboards_path: str = "/etc/grafana/provisioning/dashboards/surveillance",
) -> list[Path]:
    """Write Grafana's provisioning tree under ``directory``; returns the files written.

    Mount ``directory`` at ``/etc/grafana/provisioning`` (``dashboards_path`` is
    where the dashboards will be inside the Grafana container).
    """
    source = source or DataSource()
    datasources = directory / "datasources"
    providers = directory / "dashboards"
    boards = providers / "surveillance"
    for folder in (datasources, boards):
        folder.mkdir(parents=True, exist_ok=True)
    written = [datasources / "surveillance.yaml", providers / "surveillance.yaml"]
    written[0].write_text(datasource_yaml(source), "utf-8")
    written[1].write_text(dashboards_provider_yaml(dashboards_path), "utf-8")
    for path in dashboard_files():
        target = boards / path.name
        target.write_bytes(path.read_bytes())
        written.append(target)
    return written


# ---- push ------------------------------------------------------------------------------


class _Grafana:
    """The few Grafana HTTP API calls we make, through grafana-api."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        from grafana_api.grafana_face import GrafanaFace

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--url {url!r}: expected http(s)://host[:port][/prefix]")
        prefix = parts.path.strip("/")
        self.face = GrafanaFace(
            auth=token,
            host=parts.hostname,
            port=parts.port,
            url_path_prefix=f"{prefix}/" if prefix else "",
            protocol=parts.scheme,
            timeout=timeout,
        )

    def close(self) -> None:
        self.face.api.s.close()

    def ensure_folder(self, title: str) -> str:
        for folder in self.face.folder.get_all_folders():
            if folder.get("uid") == FOLDER_UID or folder.get("title") == title:
                return str(folder["uid"])
        created = self.face.folder.create_folder(title, uid=FOLDER_UID)
        return str(created["uid"])

    def upload(self, dashboard: dict[str, Any], folder_uid: str) -> int:
        body = {
            "dashboard": {**dashboard, "id": None},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": "surveillance dashboards push",
        }
        response = self.face.dashboard.update_dashboard(body)
        return int(response.get("id") or 0)

    def has_annotation(self, tag: str) -> bool:
        return bool(self.face.annotations.get_annotation(tags=[tag], limit=1))

    def annotate(self, payload: dict[str, Any]) -> None:
        self.face.api.POST("/annotations", json=payload)


def drift_annotations(store: Store) -> list[dict[str, Any]]:
    """One annotation per incident with drift evidence: when it opened, what and where.

    An incident is one root cause (it may hold drift and performance signals), so
    "drift incident" means: drift checks are part of its evidence.
    """
    out = []
    for incident in store.incidents.find():
        if not store.incidents.evidence(incident.id)[1]:
            continue
        start_ms = int(incident.opened_at.timestamp() * 1000)
        end = incident.closed_at or incident.opened_at
        out.append(
            {
                "dashboardUID": DRIFT_DASHBOARD_UID,
                "time": start_ms,
                "timeEnd": max(int(end.timestamp() * 1000), start_ms),
                "tags": [
                    "surveillance",
                    "drift",
                    incident.model,
                    incident.stratum_kind,
                    f"surveillance-incident-{incident.id}",
                ],
                "text": f"#{incident.id} {incident.title} ({incident.status})",
            }
        )
    return out


def push(
    url: str,
    token: str,
    *,
    folder: str = "Surveillance",
    store: Store | None = None,
    timeout: float = 10.0,
) -> PushResult:
    """Upload every dashboard into ``folder``; with a store, annotate drift incidents."""
    from grafana_api.grafana_api import GrafanaClientError, GrafanaServerError
    from requests import RequestException

    client = _Grafana(url, token, timeout)
    try:
        folder_uid = client.ensure_folder(folder)
        uploaded: list[str] = []
        for dashboard in dashboards():
            client.upload(dashboard, folder_uid)
            uploaded.append(str(dashboard["uid"]))
        written = 0
        if store is not None:
            for annotation in drift_annotations(store):
                if not client.has_annotation(annotation["tags"][-1]):
                    client.annotate(annotation)
                    written += 1
    except (GrafanaClientError, GrafanaServerError) as exc:
        raise GrafanaPushError(f"Grafana at {url} refused the request: {exc}") from exc
    except RequestException as exc:
        raise GrafanaPushError(f"cannot reach Grafana at {url}: {exc}") from exc
    finally:
        client.close()
    return PushResult(tuple(uploaded), written)


__all__: Sequence[str] = [
    "DASHBOARD_DIR",
    "DataSource",
    "GrafanaPushError",
    "PushResult",
    "dashboards",
    "datasource_yaml",
    "drift_annotations",
    "export_provisioning",
    "push",
]
