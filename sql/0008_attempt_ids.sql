-- Attempt rows carry the id the worker gave the attempt, so writing them is idempotent: when a
-- COMMIT's outcome is unknown (connection lost) and the worker retries the transaction, the
-- attempts of the first, committed try are not counted twice (found by the connection-cut test).
ALTER TABLE attempts ADD COLUMN attempt_id UUID;
CREATE UNIQUE INDEX attempts_attempt_id ON attempts (attempt_id);
