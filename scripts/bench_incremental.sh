#!/usr/bin/env bash
# Benchmark for issue 15: the nightly incremental plan of a 1M-task corpus where 1 % of the users
# got one new rating. Goal: plan < 10 s, rows written within 2x of the stale tasks.
#
# A generated ml-1m dataset (166,667 users, 6 reasoning targets each, profile stages off: the
# corpus of the issue) is ingested and planned; the run is then completed in SQL (one ledger
# output per task, made by the configured teacher; no teacher is asked, the benchmark is about
# planning). One rating later than every other is added for every 100th user, the files are
# ingested again as a new version, and the incremental run is planned: dry (`--dry-run`) and for
# real (`--no-publish`). Printed: seconds and peak RSS of each step, tasks stale, task rows and
# edges written by the night, and the growth of the task, edge, ledger and dataset tables.
#   scripts/bench_incremental.sh [USERS]        (BIN=<build> COMMIT=<label> to measure another build)
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-166667}
scripts/services.sh >/dev/null
COMMIT=${COMMIT:-$(git rev-parse --short HEAD)}
if [ -z "${BIN:-}" ]; then cargo build --release -p reasonrec-cli; BIN="$PWD/target/release/reasonrec"; fi
OUT="$PWD/target/bench"; mkdir -p "$OUT"
DATA="$OUT/incr-ml1m-$USERS"
[ -f "$DATA/ratings.dat" ] || "$BIN" dataset generate --format ml-1m --out "$DATA" --users "$USERS" --items 3700 --min-ratings 20 --max-ratings 30 --seed 5 >/dev/null
NIGHT="$OUT/incr-ml1m-$USERS-night"
rm -rf "$NIGHT"; cp -r "$DATA" "$NIGHT"
# One new rating, after every other, for every 100th user (an item it may have rated before: a
# re-rating is an interaction too).
awk -F'::' 'BEGIN { OFS = "::" } $1 % 100 == 0 && !seen[$1]++ { print $1, ($1 % 3700) + 1, 5, 2000000000 }' \
  "$DATA/ratings.dat" >> "$NIGHT/ratings.dat"
DB="rr_bench_incr_$$"
export REASONREC__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB?sslmode=${PGSSLMODE:-disable}"
export REASONREC__LOG__FILTER=warn
export REASONREC__BROKER__PREFIX="rr-bench-incr-$$"
export REASONREC__STAGES__ITEM_PROFILE=false REASONREC__STAGES__USER_PROFILE=false
export REASONREC__SAMPLING__TRAIN_TARGETS_PER_USER=4
psql_db() { psql -h 127.0.0.1 -U postgres -d "$DB" -qAtc "$1"; }
cleanup() { psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
step() { # name, command...: prints "name seconds rss_mib"
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/incr.time" "$@" >"$OUT/incr-$name.out"
  read -r secs rss <"$OUT/incr.time"
  echo "$name $secs $((rss / 1024))"
}
sizes() { psql_db "SELECT pg_total_relation_size('tasks'), pg_total_relation_size('task_deps'),
                          pg_total_relation_size('outputs'), pg_total_relation_size('interactions')
                          + pg_total_relation_size('users') + pg_total_relation_size('items')"; }
"$BIN" migrate >/dev/null
step ingest "$BIN" ingest --format ml-1m --path "$DATA" --dataset corpus
step plan "$BIN" run create --dataset corpus --no-publish --json
RUN=$(psql_db "SELECT id FROM runs ORDER BY created_at DESC LIMIT 1")
# The night before, finished: an output per task by the run's first teacher, the run completed.
psql_db "INSERT INTO outputs (key, stage, text, template, template_version, model, params, input_tokens,
                              output_tokens, run_id, task_id, words)
         SELECT sha256(convert_to(t.id::text, 'UTF8')), t.stage, 'Prediction: Yes. Reasoning: a synthetic answer.',
                'bench', '1', r.settings->'teacher'->0->>'model', r.settings->'teacher'->0->'params', 100, 20,
                t.run_id, t.id, 7
         FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.run_id = '$RUN';
         UPDATE tasks SET state = 'done', output_key = sha256(convert_to(id::text, 'UTF8')), done_at = now()
         WHERE run_id = '$RUN';
         UPDATE runs SET state = 'completed', finished_at = now() WHERE id = '$RUN';" >/dev/null
psql_db "VACUUM ANALYZE tasks, task_deps, outputs" >/dev/null
read -r tasks_b deps_b outputs_b data_b <<<"$(sizes | tr '|' ' ')"
step ingest_night "$BIN" ingest --format ml-1m --path "$NIGHT" --dataset corpus
step dry_run "$BIN" run create --dataset corpus --incremental --dry-run --json
step incremental "$BIN" run create --dataset corpus --incremental --no-publish --json
read -r tasks_a deps_a outputs_a data_a <<<"$(sizes | tr '|' ' ')"
NEW=$(psql_db "SELECT id FROM runs ORDER BY created_at DESC LIMIT 1")
python3 - "$OUT/incr-dry_run.out" "$OUT/incr-incremental.out" <<'PY'
import json, sys
for name, path in (("dry_run", sys.argv[1]), ("incremental", sys.argv[2])):
    plan = json.load(open(path))["plan"]
    stale = sum(n for by_reason in plan["regeneration"]["stale"].values() for n in by_reason.values())
    print(f"{name}: planned {plan['tasks']} tasks, stale {stale} {plan['regeneration']['stale']}")
PY
echo "stale $(psql_db "SELECT count(*) FROM tasks WHERE run_id = '$NEW' AND carried_from IS NULL")"
echo "task_rows $(psql_db "SELECT count(*) FROM tasks WHERE run_id = '$NEW'")"
echo "edge_rows $(psql_db "SELECT count(*) FROM task_deps d JOIN tasks t ON t.id = d.task_id WHERE t.run_id = '$NEW'")"
echo "interaction_rows_new_version $(psql_db "SELECT n_interactions FROM datasets ORDER BY version DESC LIMIT 1")"
echo "growth_mb tasks $(( (tasks_a - tasks_b) / 1048576 )) task_deps $(( (deps_a - deps_b) / 1048576 )) outputs $(( (outputs_a - outputs_b) / 1048576 )) dataset $(( (data_a - data_b) / 1048576 ))"
echo "commit $COMMIT"
