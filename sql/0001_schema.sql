-- reasonrec schema. Postgres is the source of truth; RabbitMQ only carries task ids.

-- A dataset version: one row per distinct content of the source files. Re-ingesting the same
-- files finds the same content_hash and is a no-op; changed files make a new version.
CREATE TABLE datasets (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT        NOT NULL,
    version       INT         NOT NULL,
    format        TEXT        NOT NULL,
    family        TEXT        NOT NULL,            -- movielens | amazon | generic: picks prompt templates
    content_hash  TEXT        NOT NULL,            -- sha256 over the source files' bytes
    source        JSONB       NOT NULL DEFAULT '{}'::jsonb,  -- file names and sizes
    n_users       INT         NOT NULL DEFAULT 0,
    n_items       INT         NOT NULL DEFAULT 0,
    n_interactions BIGINT     NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (name, version),
    UNIQUE (name, content_hash)
);

-- Users and items get dense ids (0..n) inside their dataset version; ext_id is the source id.
CREATE TABLE users (
    dataset_id BIGINT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    id         INT    NOT NULL,
    ext_id     TEXT   NOT NULL,
    attrs      JSONB  NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (dataset_id, id),
    UNIQUE (dataset_id, ext_id)
);

CREATE TABLE items (
    dataset_id BIGINT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    id         INT    NOT NULL,
    ext_id     TEXT   NOT NULL,
    title      TEXT   NOT NULL,
    attrs      JSONB  NOT NULL DEFAULT '{}'::jsonb,   -- genres, year, brand, price, description...
    PRIMARY KEY (dataset_id, id),
    UNIQUE (dataset_id, ext_id)
);

CREATE TABLE interactions (
    dataset_id BIGINT NOT NULL,
    user_id    INT    NOT NULL,
    item_id    INT    NOT NULL,
    rating     REAL   NOT NULL,
    ts         BIGINT NOT NULL,                       -- unix seconds
    review     JSONB,                                 -- review text/summary where the source has one
    FOREIGN KEY (dataset_id, user_id) REFERENCES users (dataset_id, id) ON DELETE CASCADE,
    FOREIGN KEY (dataset_id, item_id) REFERENCES items (dataset_id, id) ON DELETE CASCADE
);
CREATE INDEX interactions_by_user ON interactions (dataset_id, user_id, ts, item_id);

-- The content-keyed ledger: one row per distinct question to a teacher. key = sha256 of stage,
-- template + version, rendered messages, model and sampling parameters. Accepted outputs are
-- reused by any task (of any run) whose key matches; the primary key makes the write idempotent.
CREATE TABLE outputs (
    key              BYTEA       PRIMARY KEY CHECK (octet_length(key) = 32),
    stage            TEXT        NOT NULL,
    text             TEXT        NOT NULL,
    template         TEXT        NOT NULL,
    template_version TEXT        NOT NULL,
    model            TEXT        NOT NULL,
    params           JSONB       NOT NULL,
    input_tokens     INT         NOT NULL,
    output_tokens    INT         NOT NULL,
    run_id           UUID        NOT NULL,            -- the run and task that produced it first
    task_id          UUID        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE runs (
    id          UUID        PRIMARY KEY,
    dataset_id  BIGINT      NOT NULL REFERENCES datasets(id),
    state       TEXT        NOT NULL DEFAULT 'planning'
                CHECK (state IN ('planning', 'running', 'paused', 'completed', 'cancelled')),
    settings    JSONB       NOT NULL,                 -- sampling and teacher settings it was planned with
    priority    INT         NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    planned_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
);

-- One task per (run, stage, subject). subject is the natural key inside the run, e.g.
-- 'u12:i345:test' for a reasoning pair. input holds ids, labels and flags, never item text:
-- the worker renders the prompt from the current rows (and from upstream outputs).
CREATE TABLE tasks (
    id           UUID        PRIMARY KEY,
    run_id       UUID        NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage        TEXT        NOT NULL CHECK (stage IN ('item_profile', 'user_profile', 'reasoning')),
    subject      TEXT        NOT NULL,
    user_id      INT,
    item_id      INT,
    split        TEXT,
    label        BOOLEAN,
    input        JSONB       NOT NULL,
    pending_deps INT         NOT NULL DEFAULT 0,     -- upstream tasks not yet done
    state        TEXT        NOT NULL
                 CHECK (state IN ('waiting', 'ready', 'published', 'done', 'failed', 'cancelled')),
    output_key   BYTEA       REFERENCES outputs(key),
    attempts     INT         NOT NULL DEFAULT 0,     -- teacher calls made for this task
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    done_at      TIMESTAMPTZ,
    UNIQUE (run_id, stage, subject),
    CHECK ((state = 'done') = (output_key IS NOT NULL))
);
CREATE INDEX tasks_by_run_state ON tasks (run_id, state);
CREATE INDEX tasks_outbox ON tasks (run_id, id) WHERE state = 'ready';

-- Dependencies between tasks of one run (item/user profiles -> reasoning).
CREATE TABLE task_deps (
    task_id    UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    depends_on UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX task_deps_reverse ON task_deps (depends_on);

-- Every teacher call, successful or not: the cost ledger.
CREATE TABLE attempts (
    id            BIGSERIAL   PRIMARY KEY,
    task_id       UUID        NOT NULL,
    run_id        UUID        NOT NULL,
    endpoint      TEXT        NOT NULL,
    model         TEXT        NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    duration_ms   INT         NOT NULL,
    http_status   INT,                                -- NULL when no response (timeout, connect error)
    error_class   TEXT,                               -- NULL = accepted answer
    error         TEXT,
    input_tokens  INT         NOT NULL DEFAULT 0,
    output_tokens INT         NOT NULL DEFAULT 0,
    cost_usd      DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX attempts_by_run ON attempts (run_id, started_at);
CREATE INDEX attempts_by_task ON attempts (task_id);
