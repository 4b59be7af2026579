-- Retention (issue 15): `reasonrec run prune` and `[retention]`.
--
-- A pruned run keeps its row (state, settings, spend: its attempts stay, they are the cost
-- ledger) but loses its task rows and their edges; `pruned_at` says when.
ALTER TABLE runs ADD COLUMN pruned_at TIMESTAMPTZ;
-- A pruned dataset version keeps its row (runs name it) but loses its users, items and
-- interactions; the latest version of a name is never pruned.
ALTER TABLE datasets ADD COLUMN pruned_at TIMESTAMPTZ;

-- Every `train export` records the run it exported and where: a run an export manifest names is
-- kept by retention.
CREATE TABLE exports (
    id         BIGSERIAL   PRIMARY KEY,
    run_id     UUID        NOT NULL,
    path       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX exports_by_run ON exports (run_id);

-- The ledger's garbage collection deletes outputs no task uses; the foreign key from
-- tasks.output_key checks every deleted output against tasks, which without this index is a
-- scan of every task per output.
CREATE INDEX tasks_by_output_key ON tasks (output_key) WHERE output_key IS NOT NULL;
