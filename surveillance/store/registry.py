"""Models, clearance baselines, sites and reference sets: what everything else is judged against."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from surveillance.core.config import ModelConfig
from surveillance.core.errors import NotFoundError
from surveillance.store import audit
from surveillance.store.base import Repository
from surveillance.store.convert import model_info
from surveillance.store.domain import (
    ModelInfo,
    ReferenceSet,
)
from surveillance.store.ingest_writer import _insert
from surveillance.store.models import (
    BaselineRow,
    DeviceRow,
    ModelRow,
    ReferenceSetRow,
    SiteRow,
)
from surveillance.store.types import utcnow


class RegistryRepository(Repository):
    """Registered models and what they are compared with."""

    def register_models(
        self, configs: Sequence[ModelConfig], *, actor: str, now: datetime | None = None
    ) -> list[ModelInfo]:
        """Create or update models and their baselines; audits every change.

        A baseline whose value or alert limit changes is re-baselined at ``now``
        (the current time by default): its CUSUM chart restarts there.
        """
        with self._sessions.scope() as s:
            for config in configs:
                self._register_model(s, config, actor, now or utcnow())
        return [self.model(c.name) for c in configs]

    def _register_model(self, s: Session, config: ModelConfig, actor: str, now: datetime) -> None:
        row = s.scalar(select(ModelRow).where(ModelRow.name == config.name))
        fields = {
            "version": config.version,
            "manufacturer": config.manufacturer,
            "intended_use": config.intended_use,
            "findings": dict(config.findings),
            "udi_di": config.udi_di,
            "basic_udi_di": config.basic_udi_di,
            "device_class": config.device_class,
            "notified_body": config.notified_body,
            "certificate": config.certificate,
        }
        if row is None:
            row = ModelRow(name=config.name, registered_at=utcnow(), **fields)
            s.add(row)
            s.flush()
            audit.append(
                s,
                actor=actor,
                action="model.registered",
                entity="model",
                entity_id=config.name,
                detail=fields,
            )
        else:
            changed = {k: v for k, v in fields.items() if getattr(row, k) != v}
            if changed:
                for key, value in changed.items():
                    setattr(row, key, value)
                audit.append(
                    s,
                    actor=actor,
                    action="model.updated",
                    entity="model",
                    entity_id=config.name,
                    detail=changed,
                )
        existing = {
            (b.finding, b.metric, b.stratum): b
            for b in s.scalars(select(BaselineRow).where(BaselineRow.model_id == row.id))
        }
        wanted: set[tuple[str, str, str]] = set()
        for b in config.baselines:
            baseline_key = (b.finding, b.metric, b.stratum)
            wanted.add(baseline_key)
            values = b.model_dump(exclude={"finding", "metric", "stratum"})
            current = existing.get(baseline_key)
            if current is None:
                s.add(
                    BaselineRow(
                        model_id=row.id,
                        finding=b.finding,
                        metric=b.metric,
                        stratum=b.stratum,
                        updated_at=utcnow(),
                        **values,
                    )
                )
            elif all(getattr(current, k) == v for k, v in values.items()):
                continue
            else:
                before = {k: getattr(current, k) for k in values}
                if (current.value, current.alert_limit) != (values["value"], values["alert_limit"]):
                    current.rebaselined_at = now
                for k, v in values.items():
                    setattr(current, k, v)
                current.updated_at = now
                values = {"before": before, "after": values}
            audit.append(
                s,
                actor=actor,
                action="baseline.changed",
                entity="clearance_baseline",
                entity_id=f"{config.name}/{b.finding}/{b.metric}/{b.stratum}",
                detail=values,
            )
        for stale_key, stale in existing.items():
            if stale_key not in wanted:
                s.delete(stale)
                audit.append(
                    s,
                    actor=actor,
                    action="baseline.removed",
                    entity="clearance_baseline",
                    entity_id=f"{config.name}/{'/'.join(stale_key)}",
                    detail={},
                )

    def models(self) -> list[ModelInfo]:
        with self._sessions.scope() as s:
            rows = s.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            baselines = s.scalars(select(BaselineRow)).all()
            return [model_info(r, [b for b in baselines if b.model_id == r.id]) for r in rows]

    def model(self, name: str) -> ModelInfo:
        for info in self.models():
            if info.name == name:
                return info
        known = ", ".join(m.name for m in self.models()) or "none"
        raise NotFoundError(
            f"model {name!r} is not registered (registered: {known}); "
            "register it with 'surveillance models load CONFIG.toml'"
        )

    def set_site_label(self, pseudonym: str, label: str) -> None:
        with self._sessions.scope() as s:
            stmt = _insert(s, SiteRow).values(pseudonym=pseudonym, label=label)
            s.execute(
                stmt.on_conflict_do_update(index_elements=["pseudonym"], set_={"label": label})
            )
            site_id = s.scalar(select(SiteRow.id).where(SiteRow.pseudonym == pseudonym))
            for device in s.scalars(select(DeviceRow).where(DeviceRow.site_id == site_id)):
                device.label = device.label.rsplit(" @ ", 1)[0] + f" @ {label}"

    def ensure_reference_set(
        self, model_id: int, name: str, kind: str, start: datetime, end: datetime, *, actor: str
    ) -> int:
        """The id of reference set ``name``; created (and audited) on first use, then frozen."""
        with self._sessions.scope() as s:
            existing = s.scalar(
                select(ReferenceSetRow).where(
                    ReferenceSetRow.model_id == model_id, ReferenceSetRow.name == name
                )
            )
            if existing is not None:
                return existing.id
            row = ReferenceSetRow(
                model_id=model_id,
                name=name,
                kind=kind,
                period_start=start,
                period_end=end,
                frozen=True,
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            audit.append(
                s,
                actor=actor,
                action="reference_set.created",
                entity="reference_set",
                entity_id=row.id,
                detail={
                    "name": name,
                    "kind": kind,
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                },
            )
            return row.id

    def reference_period(self, reference_set_id: int) -> tuple[datetime, datetime]:
        with self._sessions.scope() as s:
            row = s.get(ReferenceSetRow, reference_set_id)
            if row is None:
                raise NotFoundError(f"reference set {reference_set_id} does not exist")
            return row.period_start, row.period_end

    def reference_sets(self, model_id: int) -> list[ReferenceSet]:
        stmt = (
            select(ReferenceSetRow)
            .where(ReferenceSetRow.model_id == model_id)
            .order_by(ReferenceSetRow.period_start, ReferenceSetRow.id)
        )
        with self._sessions.scope() as s:
            return [
                ReferenceSet(
                    name=r.name,
                    kind=r.kind,
                    period_start=r.period_start,
                    period_end=r.period_end,
                    frozen=r.frozen,
                )
                for r in s.scalars(stmt)
            ]
