"""The run store: runs, rounds, per-client rounds and events in any SQLAlchemy database.

SQLite (a file under the run's out-dir) is the embedded default; a URL such as
`postgresql+psycopg://user@host/offsite` points it at a server. Every write is one transaction,
so a crash mid-write loses at most the round being written (the checkpoint still holds it, and a
resumed run writes it again). On SQLite, WAL lets the dashboard read while runs write, and write
transactions start with `BEGIN IMMEDIATE` plus a busy timeout so that two runs writing at once
queue for the lock instead of failing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, insert, select, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

from coordinator.ops.runstore.tables import RUN_STATES, client_rounds, events, metadata, rounds, runs

BUSY_TIMEOUT_S = 30.0
DB_FILE = "offsite.db"
# A running run whose row (its heartbeat) is older than its round-timeout counts as stale: a live
# coordinator touches the row far more often (RunRecorder), so its coordinator is gone.
DEFAULT_ROUND_TIMEOUT_S = 600.0


class StoreError(ValueError):
    """A run-store URL that cannot be used, or a run that does not exist."""


def default_store_url(out_dir: str | Path) -> str:
    """The embedded default: SQLite file `offsite.db` in the (absolute) out-dir."""
    return f"sqlite:///{Path(out_dir).expanduser().resolve() / DB_FILE}"


def public_url(url: str) -> str:
    """The URL with any password masked (safe to log or store)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: non-finite floats become None (PostgreSQL's JSON rejects NaN), odd types str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return jsonable(value.item())
    return str(value)


def stale_after_s(config: dict | None) -> float:
    """Seconds without a heartbeat after which a running run is stale: its round-timeout."""
    value = (config or {}).get("round-timeout")
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if ok else DEFAULT_ROUND_TIMEOUT_S


def mark_staleness(row: dict, config: dict | None, now: float | None = None) -> dict:
    """Add `heartbeat_age_s` and `stale` (running, but no heartbeat within its round-timeout) to a run row."""
    age = (time.time() if now is None else now) - row["updated_at"]
    row["heartbeat_age_s"] = age
    row["stale_after_s"] = stale_after_s(config)
    row["stale"] = row["status"] == "running" and age > row["stale_after_s"]
    return row


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def epsilon_of(entry: dict) -> float | None:
    """ε of a history entry (`epsilon`, or `privacy`/`dp` → `epsilon`); None when DP is off."""
    for holder in (entry, entry.get("privacy") or {}, entry.get("dp") or {}):
        if isinstance(holder, dict) and _num(holder.get("epsilon")) is not None:
            return float(holder["epsilon"])
    return None


def round_row(entry: dict) -> dict:
    """The `rounds` columns of one history entry (see coordinator.federation.loop)."""
    clients = entry.get("clients") or []
    train = entry.get("train") or {}
    client_eval = entry.get("client_eval") or {}
    return {
        "round": int(entry["round"]),
        "updated": bool(entry.get("updated", True)),
        "wall_s": _num(entry.get("wall_s")),
        "train_s": _num(entry.get("train_s")),
        "query_s": _num(entry.get("query_s")),
        "plugin_acc": _num(entry.get("plug-in")),
        "emulator_ft_acc": _num(entry.get("emulator FT")),
        "train_loss": _num(train.get("train-loss")),
        "client_eval_acc": _num(client_eval.get("eval-accuracy")),
        "client_eval_loss": _num(client_eval.get("eval-loss")),
        "epsilon": epsilon_of(entry),
        "clients": len(clients),
        "replies": sum(c.get("status") == "ok" for c in clients),
        "failures": sum(c.get("status") != "ok" for c in clients),
        "bytes_down": int(sum(c.get("bytes_down", 0) for c in clients)),
        "bytes_up": int(sum(c.get("bytes_up", 0) for c in clients)),
        "train": jsonable(train) or None,
        "client_eval": jsonable(client_eval) or None,
    }


_CLIENT_COLUMNS = {"node", "status", "reason", "standin_sent", "bytes_down", "bytes_up"}


def client_row(rnd: int, client: dict) -> dict:
    """The `client_rounds` columns of one row of `RoundLog.clients()`."""
    examples = client.get("num-examples")
    return {
        "round": rnd,
        "node": str(client["node"]),
        "status": str(client.get("status", "ok")),
        "reason": client.get("reason") or None,
        "standin_sent": bool(client.get("standin_sent", False)),
        "bytes_down": int(client.get("bytes_down", 0)),
        "bytes_up": int(client.get("bytes_up", 0)),
        "num_examples": int(examples) if isinstance(examples, int | float) else None,
        "loss": _num(client.get("train-loss")),
        "train_s": _num(client.get("train-seconds")),
        "peak_mem_mb": _num(client.get("peak-mem-mb")),
        "metrics": jsonable({k: v for k, v in client.items() if k not in _CLIENT_COLUMNS}),
    }


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy's begin event below issue BEGIN (pysqlite's own would be DEFERRED).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A deferred transaction that later writes can fail at once with SQLITE_BUSY in WAL mode
        # (no busy wait on lock upgrade); IMMEDIATE takes the write lock up front and waits.
        immediate = conn.get_execution_options().get("offsite_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def check_store_url(url: str) -> URL:
    """Parse a run-store URL and load its driver; raise StoreError with the reason if unusable."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"{url!r} is not a database URL (e.g. sqlite:////srv/offsite/runs.db)") from exc
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"no database driver for {public_url(url)!r}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StoreError("the run store needs a SQLite *file* (sqlite:////path/offsite.db), not memory")
    return parsed


class RunStore:
    """Runs, rounds, per-client rounds and events behind one SQLAlchemy URL."""

    def __init__(self, url: str):
        parsed = check_store_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.is_sqlite:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_setup(self.engine)
        self._create_tables()

    def _create_tables(self) -> None:
        for attempt in range(3):
            try:
                with self._write() as conn:
                    metadata.create_all(conn)
                return
            except (OperationalError, IntegrityError, ProgrammingError):
                # Two processes creating the schema at once: the loser's CREATE fails (SQLite: locked;
                # PostgreSQL: duplicate table or type); the retry sees the tables and creates nothing.
                if attempt == 2:
                    raise
                time.sleep(0.2)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(offsite_write=True)
            with conn.begin():
                yield conn

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()

    # --- writes (each one transaction) ---------------------------------------------------
    def start_run(
        self,
        run_dir: str | Path,
        config: dict,
        rounds_planned: int,
        baseline: dict | None = None,
        standin: dict | None = None,
        name: str | None = None,
    ) -> int:
        """Register a run (or reopen the row of a resumed one, keyed by run_dir); return its id."""
        run_dir = str(run_dir)
        now = time.time()
        values = {
            "status": "running",
            "updated_at": now,
            "finished_at": None,
            "rounds_planned": int(rounds_planned),
            "config": jsonable(config),
            "baseline": jsonable(baseline),
            "standin": jsonable(standin),
            "error": None,
            "active_round": None,
            "active_nodes": None,
        }
        with self._write() as conn:
            run_id = conn.execute(select(runs.c.id).where(runs.c.run_dir == run_dir)).scalar()
            if run_id is None:
                run_id = conn.execute(
                    insert(runs).values(
                        name=name or Path(run_dir).name,
                        run_dir=run_dir,
                        started_at=now,
                        current_round=0,
                        **values,
                    )
                ).inserted_primary_key[0]
                kind, message = "started", f"run started: {rounds_planned} rounds planned"
            else:
                conn.execute(update(runs).where(runs.c.id == run_id).values(**values))
                kind, message = "resumed", f"run resumed: {rounds_planned} rounds planned"
            conn.execute(insert(events).values(run_id=run_id, at=now, kind=kind, message=message))
        return int(run_id)

    def round_started(self, run_id: int, rnd: int, nodes: list[int]) -> None:
        """Mark round `rnd` under way with the nodes it addressed."""
        with self._write() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(active_round=rnd, active_nodes=[str(n) for n in nodes], updated_at=time.time())
            )

    def record_round(self, run_id: int, entry: dict) -> None:
        """Write one finished round and its clients atomically (replacing an earlier copy of it)."""
        row = round_row(entry)
        rnd = row["round"]
        now = time.time()
        with self._write() as conn:
            self._require(conn, run_id)
            conn.execute(
                delete(client_rounds).where(client_rounds.c.run_id == run_id, client_rounds.c.round == rnd)
            )
            conn.execute(delete(rounds).where(rounds.c.run_id == run_id, rounds.c.round == rnd))
            conn.execute(insert(rounds).values(run_id=run_id, recorded_at=now, **row))
            clients = [client_row(rnd, c) for c in entry.get("clients") or []]
            if clients:
                conn.execute(insert(client_rounds), [{"run_id": run_id, **c} for c in clients])
            current = conn.execute(select(runs.c.current_round).where(runs.c.id == run_id)).scalar() or 0
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(current_round=max(current, rnd), active_round=None, active_nodes=None, updated_at=now)
            )
            eps = "" if row["epsilon"] is None else f", ε {row['epsilon']:.3g}"
            acc = row["plugin_acc"]
            conn.execute(
                insert(events).values(
                    run_id=run_id,
                    at=now,
                    kind="round",
                    round=rnd,
                    message=f"round {rnd}: {row['replies']}/{row['clients']} replies"
                    + ("" if acc is None else f", plug-in {acc:.1f}")
                    + eps,
                )
            )

    def finish_run(self, run_id: int, report: dict) -> None:
        """Mark a run finished and keep its report (less the per-round history, stored as rows)."""
        summary = {k: v for k, v in report.items() if k not in ("rounds", "config")}
        self._end(run_id, "finished", "run finished", report=jsonable(summary))

    def stop_run(self, run_id: int, rnd: int, reason: str | None = None) -> None:
        """Mark a run stopped after round `rnd` (stop-after, or `reason`, e.g. a signal); resume continues it."""
        why = f": {reason}; resume=true continues it" if reason else ""
        self._end(run_id, "stopped", f"run stopped after round {rnd}{why}")

    def heartbeat(self, run_id: int) -> None:
        """Touch a running run's row: the coordinator is alive (the dashboard's staleness check)."""
        with self._write() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == "running")
                .values(updated_at=time.time())
            )

    def fail_run(self, run_id: int, error: str) -> None:
        """Mark a run failed with its error."""
        self._end(run_id, "failed", f"run failed: {error}", error=error)

    def _end(self, run_id: int, status: str, message: str, **extra: Any) -> None:
        assert status in RUN_STATES
        now = time.time()
        with self._write() as conn:
            self._require(conn, run_id)
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    status=status,
                    updated_at=now,
                    finished_at=now,
                    active_round=None,
                    active_nodes=None,
                    **extra,
                )
            )
            conn.execute(insert(events).values(run_id=run_id, at=now, kind=status, message=message[:2000]))

    @staticmethod
    def _require(conn: Connection, run_id: int) -> None:
        if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).scalar() is None:
            raise StoreError(f"no run with id {run_id} in the run store")

    # --- reads ---------------------------------------------------------------------------
    def list_runs(self) -> list[dict]:
        """Every run, newest first, without its config or report, with its staleness (`mark_staleness`)."""
        cols = [c for c in runs.c if c.name not in ("report", "baseline", "standin")]
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(select(*cols).order_by(runs.c.started_at.desc(), runs.c.id.desc())).mappings()
            out = [dict(r) for r in rows]
        return [mark_staleness(r, r.pop("config"), now) for r in out]

    def get_run(self, run_id: int) -> dict | None:
        """One run's row (config, baseline, stand-in and report included) with its staleness, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
        return mark_staleness(dict(row), row["config"]) if row else None

    def run_id_for(self, run_dir: str | Path) -> int | None:
        """The id of the run recorded for a run directory, or None."""
        with self.engine.connect() as conn:
            return conn.execute(select(runs.c.id).where(runs.c.run_dir == str(run_dir))).scalar()

    def rounds(self, run_id: int) -> list[dict]:
        """A run's finished rounds in order."""
        with self.engine.connect() as conn:
            q = select(rounds).where(rounds.c.run_id == run_id).order_by(rounds.c.round)
            return [dict(r) for r in conn.execute(q).mappings()]

    def client_rounds(self, run_id: int) -> list[dict]:
        """A run's per-client rows, by round then node."""
        with self.engine.connect() as conn:
            q = (
                select(client_rounds)
                .where(client_rounds.c.run_id == run_id)
                .order_by(client_rounds.c.round, client_rounds.c.node)
            )
            return [dict(r) for r in conn.execute(q).mappings()]

    def events(self, run_id: int, limit: int = 200) -> list[dict]:
        """A run's newest events, newest first."""
        with self.engine.connect() as conn:
            q = select(events).where(events.c.run_id == run_id).order_by(events.c.id.desc()).limit(limit)
            return [dict(r) for r in conn.execute(q).mappings()]
