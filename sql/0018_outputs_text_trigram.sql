-- Text search in the corpus browser (issue 18): a trigram index on the answers, so that a search
-- for a rare word reads the outputs that hold it instead of every answer of the run until a page
-- fills (6.6 s a page on a 1M-task run without it: BENCHMARKS.md, session 7). Trigram rather
-- than full-text: the browser's search is a case-insensitive substring (a word's stem, a title's
-- fragment, a number), which a tsvector index cannot answer, and pg_trgm needs no language
-- configuration. It is paid on every output the workers write: measured in BENCHMARKS.md
-- (session 10). pg_trgm is a trusted extension: a database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX outputs_text_trgm ON outputs USING gin (lower(text) gin_trgm_ops);
