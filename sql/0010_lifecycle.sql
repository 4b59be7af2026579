-- Run lifecycle (issue 8): pause and resume, a per-run budget, named snapshots of a corpus.
--
-- A run may carry a budget in dollars and/or tokens (input + output of its attempts). The outbox
-- checks it before each pass over the run; once spend reaches it the run pauses itself
-- (state 'paused', the reason below) and nothing more of it is published. NULL = no limit.
-- Nullable without a default, so adding them rewrites nothing.
ALTER TABLE runs ADD COLUMN budget_usd DOUBLE PRECISION CHECK (budget_usd >= 0);
ALTER TABLE runs ADD COLUMN budget_tokens BIGINT CHECK (budget_tokens >= 0);
-- Why a paused run is paused ("paused by hand", "budget reached: $x of $y"); NULL otherwise.
ALTER TABLE runs ADD COLUMN paused_reason TEXT;

-- A snapshot names a completed run's corpus. Ledger rows are immutable and a completed run's
-- tasks do not move, so the name keeps meaning the same examples: the foreign key keeps the run
-- (and, through it, its tasks) from being deleted, and the trigger below keeps it completed.
CREATE TABLE snapshots (
    name       TEXT        PRIMARY KEY CHECK (name <> ''),
    run_id     UUID        NOT NULL REFERENCES runs(id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    note       TEXT
);
CREATE INDEX snapshots_by_run ON snapshots (run_id);

-- A snapshotted run stays completed: `run retry-failed` (which reopens a completed run) and
-- `run cancel` are refused for it, in the same transaction that tried, so nothing of the attempt
-- is kept. Fires only when a completed run's state changes, so the hot paths never run it.
CREATE FUNCTION reasonrec_keep_snapshotted_runs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    names TEXT;
BEGIN
    SELECT string_agg(name, ', ' ORDER BY name) INTO names FROM snapshots WHERE run_id = OLD.id;
    IF names IS NOT NULL THEN
        RAISE EXCEPTION 'run % is snapshotted (%): its corpus is frozen, so it stays completed', OLD.id, names
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER runs_keep_snapshotted BEFORE UPDATE OF state ON runs
    FOR EACH ROW WHEN (OLD.state = 'completed' AND NEW.state IS DISTINCT FROM 'completed')
    EXECUTE FUNCTION reasonrec_keep_snapshotted_runs();
