-- The finishing state machine (issue 15; rules in crates/core/src/finishing.rs).
--
-- `released`: this task has counted its dependents down. It happens once per task, on its first
-- finish (done or failed), whatever order failures, completions, duplicate copies and
-- `run retry-failed` arrive in. A later success of a task that had already released (a failed
-- task retried, or completed by a late copy) re-plans the dependents that ran without it.
-- Tasks an incremental run carries over finished are written released: their dependents were
-- planned with them counted.
ALTER TABLE tasks ADD COLUMN released BOOLEAN NOT NULL DEFAULT false;
UPDATE tasks SET released = true WHERE state IN ('done', 'failed');

-- `inputs_version`: bumped when an upstream task's output changed after this task was made
-- ready (re-planned with reason upstream_changed). A worker that rendered the prompt from an
-- older version has its completion refused (superseded) and renders again.
ALTER TABLE tasks ADD COLUMN inputs_version INT NOT NULL DEFAULT 0;
-- How often the task was re-planned because an upstream output changed.
ALTER TABLE tasks ADD COLUMN replanned INT NOT NULL DEFAULT 0;
-- How many messages were published for the task (confirmed by the broker): 1 when nothing went
-- wrong; more means a republish (lost message, crash between publish and mark).
ALTER TABLE tasks ADD COLUMN publishes INT NOT NULL DEFAULT 0;
UPDATE tasks SET publishes = 1 WHERE published_at IS NOT NULL;

-- A run whose plan died (no live planner holds its lock) is failed with the reason, so that
-- scheduled ticks and `run create --incremental` of its dataset go on.
ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check
    CHECK (state IN ('planning', 'running', 'paused', 'completed', 'cancelled', 'failed'));
ALTER TABLE runs ADD COLUMN failed_reason TEXT;
