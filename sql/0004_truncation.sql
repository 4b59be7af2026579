-- How many history entries the worker cut from a task's prompt to fit sampling.max_prompt_words.
ALTER TABLE tasks ADD COLUMN history_truncated INT NOT NULL DEFAULT 0;
