-- Keyset pages of one run's tasks in one state (the trainer's export reads a run's done tasks in
-- id order, a page at a time). With only (run_id, state) Postgres fetched every remaining done
-- task of the run, joined and sorted them all to return the first page: measured 0.6-1.0 s per
-- page of 2,000 on a 100k-task run, quadratic in the run size. With id as the third column the
-- page is an ordered index range. The new index serves every query the old one did (same
-- leading columns), so the old one goes: one index to keep up, not two.
CREATE INDEX tasks_by_run_state_id ON tasks (run_id, state, id);
DROP INDEX tasks_by_run_state;
