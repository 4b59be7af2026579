-- Provider Batch APIs (issue 17): OpenAI Batch and Anthropic Message Batches.
--
-- A run whose settings name a `mode = "batch"` endpoint is routed `batch`: its ready tasks are
-- not published to RabbitMQ; the batch submitter (`worker::batch`) claims them into a batch row
-- (state `batched`, `tasks.batch_id`) before anything is sent, submits the batch, polls it and
-- feeds every result line through the same validation and finishing as a live answer. A task
-- whose line errored, expired, was cancelled or rejected (re-ask) goes back to `ready`.
-- `route = 'live'` (spill, or no batch endpoint) hands the run's ready tasks to the outbox again.
ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('waiting', 'ready', 'published', 'batched', 'done', 'failed', 'cancelled'));
ALTER TABLE tasks ADD COLUMN batch_id UUID;

ALTER TABLE runs ADD COLUMN route TEXT NOT NULL DEFAULT 'live' CHECK (route IN ('live', 'batch'));
-- When the run must be finished (`run create --deadline`, `[batch] deadline`): once the batch
-- work left cannot end by then at the observed batch turnaround, the run is spilled to live
-- endpoints (`route = 'live'`) and its batches that would end later are cancelled.
ALTER TABLE runs ADD COLUMN deadline TIMESTAMPTZ;
ALTER TABLE runs ADD COLUMN spilled_at TIMESTAMPTZ;

-- One provider batch. The row and its lines (with the tasks claimed) are written before the
-- provider hears of it. `submitting` is recorded before the create call, so a submitter that
-- died there leaves a row that the next one reconciles with the provider's list (OpenAI: our id
-- in the batch's metadata; Anthropic, which has no metadata: an unknown batch of the endpoint
-- created since, with as many requests) before it ever submits again.
CREATE TABLE batches (
    id                UUID        PRIMARY KEY,
    run_id            UUID        NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    endpoint          TEXT        NOT NULL,
    protocol          TEXT        NOT NULL CHECK (protocol IN ('openai', 'anthropic')),
    state             TEXT        NOT NULL DEFAULT 'building'
                      CHECK (state IN ('building', 'submitting', 'submitted', 'ended', 'failed')),
    lines             INT         NOT NULL,
    -- The submitter working the row: every move checks it, so one that lost its endpoint lock
    -- (a Postgres restart) cannot go on with a row another took over.
    owner             UUID        NOT NULL,
    provider_id       TEXT,
    input_file_id     TEXT,
    provider_status   TEXT,
    error             TEXT,
    -- US dollars: estimated when submitted (counted against the run's budget while open),
    -- then what the results cost.
    reserved_usd      DOUBLE PRECISION NOT NULL DEFAULT 0,
    cost_usd          DOUBLE PRECISION,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    submit_started_at TIMESTAMPTZ,
    -- The last create call began: a row left `submitting` is reconciled only once a create
    -- still in flight would have timed out (its request may reach the provider late).
    create_attempted_at TIMESTAMPTZ,
    submitted_at      TIMESTAMPTZ,
    cancel_requested_at TIMESTAMPTZ,
    ended_at          TIMESTAMPTZ
);
CREATE INDEX batches_open ON batches (endpoint, created_at) WHERE state IN ('building', 'submitting', 'submitted');
CREATE UNIQUE INDEX batches_provider_id ON batches (endpoint, provider_id) WHERE provider_id IS NOT NULL;

-- One request of a batch: `custom_id` = the batch's id (hex) + '_' + line. `reasks` and
-- `conversation` (the answers rejected so far with the validator's reasons, to append to the
-- prompt) carry a re-ask into the task's next batch. What the results need of the prompt is
-- written when the line is rendered (`output_key` of the original prompt for this endpoint,
-- template and version, history trimmed, estimated prompt tokens), so results are finished
-- without rendering again. `outcome` is written when results arrive.
CREATE TABLE batch_lines (
    batch_id          UUID  NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    line              INT   NOT NULL,
    task_id           UUID  NOT NULL,
    inputs_version    INT   NOT NULL,
    reasks            INT   NOT NULL DEFAULT 0,
    conversation      JSONB,
    output_key        BYTEA,
    template          TEXT,
    template_version  TEXT,
    history_truncated INT   NOT NULL DEFAULT 0,
    prompt_tokens     INT   NOT NULL DEFAULT 0,
    outcome           TEXT,
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX batch_lines_by_task ON batch_lines (task_id);
CREATE INDEX tasks_batch ON tasks (batch_id) WHERE batch_id IS NOT NULL;
