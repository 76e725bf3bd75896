"""Indexes the dashboards need; time partitioning deliberately not done yet.

Indexes (both backends):

* ``prediction (ingested_at, predicted_at)``: the overview's ingest-rate and
  ingest-lag panels filter on ``ingested_at`` and read ``predicted_at``; with
  both in the index they are index-only scans instead of a seq scan of
  ``prediction`` (1.5 s at 1M rows before this revision).
* ``prediction (predicted_at, study_id)``: freshness per site filters a time
  range across all models (``ix_prediction_model_time`` leads with the model).
* ``dead_letter (received_at)``, ``job_run (scheduled_for)``,
  ``incident_event (at)``: the time filters of the dead-letter, check-run and
  incident-timeline panels (tables that grow without bound).

On a large installed base, build them first with ``CREATE INDEX CONCURRENTLY``
under the same names (this revision then only records them: it skips an index
that already exists on PostgreSQL).

Declarative monthly partitions (prediction, study, embedding, check tables) are
*not* in this revision. PostgreSQL requires the partition key in every unique
constraint and primary key of a partitioned table, so ``uq_prediction_message_finding``
would become (message_id, finding, predicted_at): a redelivered message whose
``predicted_at`` differs would no longer be caught by the database, and
``study.uid_pseudonym`` (what every event joins on) cannot be unique at all.
Keeping idempotency then needs a separate unpartitioned key table (message id
-> partition key) written in the same transaction, and every foreign key to
``study``/``prediction``/``drift_check`` turned into (id, partition key) pairs.
That is a redesign of the write path and of the incremental checks (issue 11,
second half), not an index; a half-done version would lose idempotency, so it
is left to that work.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (index name, table, columns)
_INDEXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ix_prediction_ingested_at", "prediction", ("ingested_at", "predicted_at")),
    ("ix_prediction_predicted_at", "prediction", ("predicted_at", "study_id")),
    ("ix_dead_letter_received_at", "dead_letter", ("received_at",)),
    ("ix_job_run_scheduled_for", "job_run", ("scheduled_for",)),
    ("ix_incident_event_at", "incident_event", ("at",)),
)


def _existing(table: str) -> set[str]:
    return {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table) if ix["name"]}


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        if name not in _existing(table):  # built CONCURRENTLY beforehand
            op.create_index(name, table, list(columns))


def downgrade() -> None:
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
