-- The outbox looks for tasks published long ago and not finished (lost messages) on every pass:
-- a partial index keeps that an index range scan instead of a scan of every published task.
CREATE INDEX tasks_published_at ON tasks (run_id, published_at) WHERE state = 'published';
