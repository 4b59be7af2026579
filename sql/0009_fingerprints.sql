-- Incremental regeneration (issue 8). Every task carries a fingerprint: SHA-256 over what
-- determines its prompt (stage, template name and version, the prompt cap, the content of the
-- items it mentions, the item's reviews for an item profile, the like flags and label, and the
-- fingerprints of the tasks it depends on), computed by the planner without rendering. An
-- incremental run compares each task with the same (stage, user, item, split) of the dataset
-- name's previous completed run and carries unchanged, done ones over without a teacher call.
-- NULL: planned before this migration (or without the prompt templates): never reused.
-- Nullable without a default, so adding it rewrites nothing.
ALTER TABLE tasks ADD COLUMN fingerprint BYTEA;
-- A task an incremental run took over finished (done with the previous output, or failed and
-- kept) names the run it came from; it has no message, no attempt and no done_at of its own.
ALTER TABLE tasks ADD COLUMN carried_from UUID;
-- "The previous completed run of a dataset name": completed runs per dataset version, newest
-- first (datasets are found by name through UNIQUE (name, version)). Its tasks are then read
-- once, by run, through the (run_id, stage, subject) unique index.
CREATE INDEX runs_completed_by_dataset ON runs (dataset_id, created_at DESC) WHERE state = 'completed';
