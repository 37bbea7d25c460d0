"""The run store's tables (SQLAlchemy Core): runs, rounds, per-client rounds and events.

Times are Unix seconds (float) so SQLite and PostgreSQL store them alike. Flower node ids are
unsigned 64-bit, wider than a signed BIGINT, so nodes are kept as decimal strings.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

RUN_STATES = ("running", "stopped", "finished", "failed")

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    # One row per run directory: a resumed run continues its row instead of adding one.
    Column("run_dir", String(1000), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("rounds_planned", Integer, nullable=False),
    Column("current_round", Integer, nullable=False, default=0),
    # Nodes addressed by the round under way (empty between rounds), for the live client view.
    Column("active_round", Integer),
    Column("active_nodes", JSON),
    Column("config", JSON, nullable=False),
    Column("baseline", JSON),
    Column("standin", JSON),
    Column("report", JSON),
    Column("error", Text),
)

rounds = Table(
    "rounds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("round", Integer, nullable=False),
    Column("recorded_at", Float, nullable=False),
    Column("updated", Boolean, nullable=False),
    Column("wall_s", Float),
    Column("train_s", Float),
    Column("query_s", Float),
    Column("plugin_acc", Float),
    Column("emulator_ft_acc", Float),
    Column("train_loss", Float),
    Column("client_eval_acc", Float),
    Column("client_eval_loss", Float),
    Column("epsilon", Float),
    Column("clients", Integer, nullable=False),
    Column("replies", Integer, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("bytes_down", BigInteger, nullable=False),
    Column("bytes_up", BigInteger, nullable=False),
    Column("train", JSON),
    Column("client_eval", JSON),
    UniqueConstraint("run_id", "round", name="uq_rounds_run_round"),
)

client_rounds = Table(
    "client_rounds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("round", Integer, nullable=False),
    Column("node", String(24), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("standin_sent", Boolean, nullable=False),
    Column("bytes_down", BigInteger, nullable=False),
    Column("bytes_up", BigInteger, nullable=False),
    Column("num_examples", Integer),
    Column("loss", Float),
    Column("train_s", Float),
    Column("peak_mem_mb", Float),
    Column("metrics", JSON),
    UniqueConstraint("run_id", "round", "node", name="uq_client_rounds_run_round_node"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("round", Integer),
    Column("message", Text, nullable=False),
)

Index("ix_rounds_run", rounds.c.run_id, rounds.c.round)
Index("ix_client_rounds_run", client_rounds.c.run_id, client_rounds.c.round)
Index("ix_events_run", events.c.run_id, events.c.id)
