-- A second copy of a batch found at the provider (OpenAI: two batches whose metadata names one
-- row, after a create whose answer was lost). It is recorded as a row of its own, `copy_of` the
-- adopted one, with the adopted row's lines copied (same line numbers, so the copy's results,
-- whose custom ids name the adopted row, map onto them), in the transaction that adopts the
-- first; then it is cancelled. What it finished before the cancel is read like any batch's
-- results: an attempt row per line with its cost (the provider bills it), an accepted answer
-- finishing a task only through the state machine (a task done already stays as it is). No task
-- is ever `batched` in a copy.
ALTER TABLE batches ADD COLUMN copy_of UUID REFERENCES batches(id) ON DELETE CASCADE;
