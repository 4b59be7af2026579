-- Audit marks (issue 18): a reviewer's verdict on an output of the ledger. Marks are per output
-- key, not per task, so an output reused by later runs (incremental carry-over, the ledger's
-- reuse by content key) carries its mark with it. One current mark per output: marking again
-- replaces it (who and when are the latest reviewer's). The ledger's garbage collection deletes
-- the marks of the outputs it deletes.
CREATE TABLE audit_marks (
    output_key BYTEA       PRIMARY KEY REFERENCES outputs(key) ON DELETE CASCADE,
    verdict    TEXT        NOT NULL CHECK (verdict IN ('approved', 'rejected')),
    reason     TEXT,
    reviewer   TEXT        NOT NULL,
    marked_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
