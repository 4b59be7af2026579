-- The two vocabulary columns (core::vocab) Postgres did not constrain yet: a task's split and a
-- dataset's family now take only the words the code decodes, like every other state, stage,
-- route and verdict column. The split check is NOT VALID: existing task rows are not read (a
-- large task table would be scanned whole under a lock); every row written from now on is
-- checked. A task of the profile stages has no split (NULL passes).
ALTER TABLE tasks ADD CONSTRAINT tasks_split_known CHECK (split IN ('train', 'validation', 'test')) NOT VALID;
ALTER TABLE datasets ADD CONSTRAINT datasets_family_known CHECK (family IN ('movielens', 'amazon', 'generic'));
