-- omniq_mp SQLite schema, version 1. Statements are separated by blank lines.
-- seq is a plain rowid, not AUTOINCREMENT: a new row always gets one above every row
-- present, which is all FIFO needs, and every enqueue commit is spared a write of the
-- sqlite_sequence page (about a tenth of a single enqueue's cost). Stores created with
-- AUTOINCREMENT keep it and work the same.
CREATE TABLE IF NOT EXISTS tasks (
    seq         INTEGER PRIMARY KEY,  -- FIFO tie-break (see the note above)
    id          TEXT NOT NULL UNIQUE,
    func_name   TEXT NOT NULL,
    payload     BLOB NOT NULL,
    queue       TEXT NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL,
    eta         REAL NOT NULL,
    interval    REAL,
    timeout     REAL,
    max_retries INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    lease_token TEXT,
    lease_until REAL,
    worker_id   TEXT,
    result      BLOB,
    error       TEXT,
    unique_key  TEXT,                         -- one unfinished task per key
    max_memory  INTEGER,                      -- bytes
    result_ttl  REAL,                         -- seconds the finished record is kept
    expires_at  REAL,                         -- finished_at + result_ttl
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    crashes     INTEGER NOT NULL DEFAULT 0,
    history     TEXT                          -- JSON list of every failed attempt's error
);

-- Partial indexes stay as small as the backlog: the claim reads only due PENDING rows.
CREATE INDEX IF NOT EXISTS tasks_claimable
    ON tasks (queue, priority DESC, eta, seq) WHERE status = 'PENDING';

CREATE INDEX IF NOT EXISTS tasks_leased
    ON tasks (lease_until) WHERE status = 'RUNNING';

CREATE INDEX IF NOT EXISTS tasks_cancelling
    ON tasks (id) WHERE cancel_requested = 1 AND status = 'RUNNING';

CREATE UNIQUE INDEX IF NOT EXISTS tasks_unique_key
    ON tasks (unique_key) WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'RUNNING');

CREATE INDEX IF NOT EXISTS tasks_finished
    ON tasks (status, finished_at) WHERE finished_at IS NOT NULL;

CREATE INDEX IF NOT EXISTS tasks_expiring
    ON tasks (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS workers (
    worker_id    TEXT PRIMARY KEY,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    procs        INTEGER NOT NULL,
    queues       TEXT NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    details      TEXT NOT NULL DEFAULT '{}'   -- JSON: active, processed, children
);

CREATE TABLE IF NOT EXISTS schedules (
    id           TEXT PRIMARY KEY,
    func_name    TEXT NOT NULL,
    payload      BLOB NOT NULL,
    options      TEXT NOT NULL,                -- JSON: queue, priority, timeout ...
    cron         TEXT NOT NULL,
    tz           TEXT NOT NULL,
    next_run     REAL NOT NULL,
    paused       INTEGER NOT NULL DEFAULT 0,
    last_task_id TEXT,
    created_at   REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_run) WHERE paused = 0;

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
