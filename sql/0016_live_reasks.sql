-- Live re-asks of a batch endpoint's rejected answers (issue 17; `[[teacher.endpoints]] reask =
-- "live"`). Such a task goes back to `ready` with `live_reask`: the outbox publishes it to the
-- live workers although its run is routed `batch`, and the batch submitter does not claim it.
-- The live worker carries on the conversation of the task's last batch line (outcome
-- `rejected_live`: the rejected answers and the validator's reasons). `run retry-failed` clears
-- the mark: a task put back starts afresh on its run's route.
ALTER TABLE tasks ADD COLUMN live_reask BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX tasks_live_reasks ON tasks (run_id, id) WHERE state = 'ready' AND live_reask;
