-- An answer's word count, written with the output (`core::validate::word_count`: whitespace-
-- separated words, as the validator and the export's word filter count them), so that the corpus
-- browser's word-range filter reads an integer instead of splitting every answer it passes over
-- (issue 18: the words 30-40 page took 119 ms at 10M tasks, most of it the split).
-- Outputs written before this migration are counted here once by Postgres (`\s+` after trimming
-- ASCII whitespace: the same count for answers whose whitespace is ASCII). NULL only for rows
-- written by something other than reasonrec's workers.
ALTER TABLE outputs ADD COLUMN words INT;
UPDATE outputs SET words = CASE WHEN text ~ '^\s*$' THEN 0
                                ELSE array_length(regexp_split_to_array(btrim(text, E' \t\n\r\f\v'), '\s+'), 1) END;
