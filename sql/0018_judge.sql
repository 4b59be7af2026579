-- The optional judge stage (`[stages] judge`): a task per reasoning task that asks a teacher to
-- score the reasoning's faithfulness to its prompt's facts and its agreement with the label. Its
-- subject is the reasoning task's, so the unique (run_id, stage, subject) index finds the judge of
-- a reasoning task. The score (1-5) is parsed from the judge's answer by the worker and stored on
-- the output: a reused judge output carries its score into later runs, like its audit mark.
ALTER TABLE tasks DROP CONSTRAINT tasks_stage_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_stage_check
    CHECK (stage IN ('item_profile', 'user_profile', 'reasoning', 'judge'));
ALTER TABLE outputs ADD COLUMN score SMALLINT CHECK (score BETWEEN 1 AND 5);
