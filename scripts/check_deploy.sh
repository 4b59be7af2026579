#!/usr/bin/env bash
# Checks deploy/ without a cluster:
#   - every YAML file under deploy/ parses (all documents, duplicate keys are errors) and passes
#     yamllint (syntax, duplicate keys, indentation, trailing spaces);
#   - every Kubernetes manifest under deploy/k8s validates against the Kubernetes OpenAPI schemas
#     (kubernetes-validate, strict: unknown fields are errors), for the oldest and newest
#     Kubernetes versions below; CRD kinds (KEDA, Prometheus operator) have no schema there and are
#     listed as SKIPPED, then cross-checked by hand (names, ports, secret keys, queue name);
#   - every kustomization's resources/components/patch targets exist; when kubectl is installed,
#     `kubectl kustomize` renders each and the rendered objects are validated too;
#   - reasonrec settings used in deploy/ (TOML in the ConfigMap and compose file, REASONREC__*
#     environment variables) are keys of reasonrec.example.toml;
#   - the Grafana dashboard is valid JSON with an importable shape, every panel has a description,
#     and every PromQL expression (dashboard and alert rules) names only reasonrec's metrics.
# The validators are installed from PyPI into target/deploy-venv (once; later runs reuse it). When
# that is impossible (no network), the schema validation is skipped with a loud warning and the
# remaining checks still run: exit 0 then, 1 on any failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/deploy-venv
PINS="kubernetes-validate==1.37.0 yamllint==1.38.0"
K8S_VERSIONS="1.29.0 1.37.0"   # oldest and newest validated; CronJob timeZone needs 1.27+

started=$(date +%s)
have_validator=1
if [ ! -f "$VENV/.pins" ] || [ "$(cat "$VENV/.pins")" != "$PINS" ]; then
  echo "check_deploy: installing $PINS into $VENV"
  rm -rf "$VENV"
  # shellcheck disable=SC2086
  if ! { python3 -m venv "$VENV" >/dev/null \
      && "$VENV/bin/pip" install --quiet --disable-pip-version-check $PINS \
      && echo "$PINS" >"$VENV/.pins"; }; then
    have_validator=0
  fi
fi
if [ "$have_validator" = 1 ]; then
  PY="$VENV/bin/python"
else
  PY=python3
  cat >&2 <<'MSG'
################################################################################
check_deploy: WARNING: could not install kubernetes-validate/yamllint from PyPI.
check_deploy: WARNING: Kubernetes SCHEMA VALIDATION AND YAMLLINT ARE SKIPPED;
check_deploy: WARNING: only parse and cross-reference checks run below.
################################################################################
MSG
  rm -rf "$VENV"
fi

# Render every kustomization with kubectl's built-in kustomize when kubectl is there.
RENDER_DIR=$(mktemp -d)
trap 'rm -rf "$RENDER_DIR"' EXIT
render_note=""
if command -v kubectl >/dev/null 2>&1; then
  while IFS= read -r k; do
    dir=$(dirname "$k")
    case "$dir" in */components/*) continue ;; esac   # components render only inside an overlay
    out="$RENDER_DIR/$(echo "$dir" | tr '/' '_').yaml"
    if kubectl kustomize "$dir" >"$out" 2>"$out.err"; then
      rm -f "$out.err"
    else
      rm -f "$out"   # the Python part reports $out.err as a failure
    fi
  done < <(find deploy/k8s -name kustomization.yaml | sort)
else
  render_note="kubectl not installed: kustomizations not rendered (resources lists still checked)"
fi

HAVE_VALIDATOR=$have_validator RENDER_DIR=$RENDER_DIR RENDER_NOTE=$render_note \
  K8S_VERSIONS=$K8S_VERSIONS "$PY" - <<'PY'
import glob, json, os, re, subprocess, sys

try:
    import yaml
except ImportError:
    sys.exit("check_deploy: FAIL: PyYAML is missing, nothing can be parsed (pip install pyyaml)")
try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

HAVE_VALIDATOR = os.environ["HAVE_VALIDATOR"] == "1"
VERSIONS = os.environ["K8S_VERSIONS"].split()
failures, warnings, skipped, notes = [], [], [], []
counts = {"yaml files": 0, "yaml documents": 0, "schema validations": 0, "rendered objects": 0,
          "promql expressions": 0, "dashboard panels": 0, "settings keys": 0}


def fail(msg):
    failures.append(msg)


# ---------------------------------------------------------------------------------------------
# 1. Parse every YAML file under deploy/ (all documents; duplicate keys are errors).
class StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", k.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)

yaml_files = sorted(p for ext in ("yaml", "yml") for p in glob.glob(f"deploy/**/*.{ext}", recursive=True))
docs = {}  # path -> list of documents
for path in yaml_files:
    counts["yaml files"] += 1
    try:
        with open(path) as f:
            ds = [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{path}: does not parse: {e}")
        continue
    counts["yaml documents"] += len(ds)
    docs[path] = ds

if HAVE_VALIDATOR:
    conf = ("{extends: default, rules: {line-length: {max: 130}, document-start: disable, "
            "truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}, "
            "comments-indentation: disable, braces: {max-spaces-inside: 1}, "
            "brackets: {max-spaces-inside: 1}}}")
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "yamllint"), "-f", "parsable",
                        "-d", conf, "--strict", *yaml_files], capture_output=True, text=True)
    if r.returncode != 0:
        fail("yamllint:\n  " + "\n  ".join((r.stdout + r.stderr).strip().splitlines()))

# ---------------------------------------------------------------------------------------------
# 2. Kubernetes manifests: schema validation (strict) of every object, files and rendered.
k8s_objects = []  # (where, obj)
for path, ds in docs.items():
    if not path.startswith("deploy/k8s/"):
        continue
    for d in ds:
        if isinstance(d, dict) and d.get("kind") in ("Kustomization", "Component"):
            continue
        if not (isinstance(d, dict) and "apiVersion" in d and "kind" in d):
            fail(f"{path}: a document without apiVersion/kind")
            continue
        k8s_objects.append((path, d))

rendered = []
render_dir = os.environ["RENDER_DIR"]
for out in sorted(glob.glob(os.path.join(render_dir, "*.yaml"))):
    name = os.path.basename(out)[:-5].replace("_", "/")
    with open(out) as f:
        for d in yaml.safe_load_all(f):
            if d:
                rendered.append((f"rendered {name}", d))
for err in sorted(glob.glob(os.path.join(render_dir, "*.yaml.err"))):
    name = os.path.basename(err)[:-9].replace("_", "/")
    text = open(err).read().strip()
    m = re.search(r'err="(.*)"', text, re.S)
    fail(f"kubectl kustomize {name}: " + (m.group(1) if m else text)[:500])
counts["rendered objects"] = len(rendered)
if os.environ.get("RENDER_NOTE"):
    warnings.append(os.environ["RENDER_NOTE"])

if HAVE_VALIDATOR:
    import kubernetes_validate as kv
    skipped_kinds = {}
    for where, obj in k8s_objects + rendered:
        ident = f"{obj['kind']}/{obj.get('metadata', {}).get('name', '?')}"
        for v in VERSIONS:
            try:
                kv.validate(obj, v, strict=True)
                counts["schema validations"] += 1
            except kv.SchemaNotFoundError:
                skipped_kinds.setdefault((obj["kind"], obj["apiVersion"]), []).append(where)
                break
            except kv.ValidationError as e:
                p = "/".join(str(x) for x in e.path)
                fail(f"{where}: {ident} invalid for Kubernetes {v} at {p or '(top)'}: {e.message}")
            except kv.InvalidSchemaError as e:
                fail(f"{where}: {ident}: schema error for {v}: {e}")
    for (kind, api), wheres in sorted(skipped_kinds.items()):
        skipped.append(f"{kind} ({api}, a CRD: no schema bundled; cross-checked by hand) in {', '.join(wheres)}")

# ---------------------------------------------------------------------------------------------
# 3. Kustomizations: every resource/component exists; patch targets name objects that exist.
all_objs = {(o["kind"], o.get("metadata", {}).get("name")) for _, o in k8s_objects}
for path, ds in docs.items():
    if os.path.basename(path) != "kustomization.yaml":
        continue
    k = ds[0] if ds else {}
    base = os.path.dirname(path)
    for field in ("resources", "components"):
        for ref in k.get(field, []) or []:
            target = os.path.normpath(os.path.join(base, ref))
            if os.path.isdir(target):
                if not os.path.exists(os.path.join(target, "kustomization.yaml")):
                    fail(f"{path}: {field} entry {ref}: folder without kustomization.yaml")
            elif not os.path.isfile(target):
                fail(f"{path}: {field} entry {ref} does not exist")
    for p in k.get("patches", []) or []:
        t = p.get("target", {})
        if "path" in p and not os.path.isfile(os.path.join(base, p["path"])):
            fail(f"{path}: patch file {p['path']} does not exist")
        if t.get("name") and not any(re.fullmatch(t.get("kind", ".*"), kk) and nn == t["name"] for kk, nn in all_objs):
            fail(f"{path}: patch target {t} matches no object under deploy/k8s")
    for img in k.get("images", []) or []:
        if img.get("name") != "reasonrec":
            fail(f"{path}: images entry {img.get('name')} is not the image the manifests use (reasonrec)")

# ---------------------------------------------------------------------------------------------
# 4. Cross-references between the manifests (what schemas cannot see).
def pod_specs(obj):
    s = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [s.get("template", {})]
    if obj["kind"] == "CronJob":
        return [s.get("jobTemplate", {}).get("spec", {}).get("template", {})]
    return []


by_kind = {}
for where, o in k8s_objects:
    by_kind.setdefault(o["kind"], []).append((where, o))
secret_keys = {}
for where, s in by_kind.get("Secret", []):
    secret_keys[s["metadata"]["name"]] = set((s.get("stringData") or {}).keys()) | set((s.get("data") or {}).keys())
configmaps = {c["metadata"]["name"]: c for _, c in by_kind.get("ConfigMap", [])}
env_names = []  # (where, name)
worker_grace = None
for where, o in k8s_objects:
    for tpl in pod_specs(o):
        spec = tpl.get("spec", {})
        labels = tpl.get("metadata", {}).get("labels", {})
        sel = o.get("spec", {}).get("selector", {}).get("matchLabels")
        if sel and any(labels.get(k) != v for k, v in sel.items()):
            fail(f"{where}: {o['kind']}/{o['metadata']['name']}: selector {sel} does not match the pod labels")
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            cname = f"{o['kind']}/{o['metadata']['name']}/{c['name']}"
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                hg = c.get(probe, {}).get("httpGet")
                if hg and hg.get("port") not in ports:
                    fail(f"{where}: {cname}: {probe} port {hg.get('port')} is not a container port")
            for m in c.get("volumeMounts", []):
                if m["name"] not in vols:
                    fail(f"{where}: {cname}: volumeMount {m['name']} has no volume")
            for ef in c.get("envFrom", []):
                n = ef.get("secretRef", {}).get("name")
                if n and n not in secret_keys:
                    fail(f"{where}: {cname}: envFrom Secret {n} is not in any manifest/template under deploy/k8s")
            for e in c.get("env", []):
                env_names.append((f"{where} {cname}", e["name"]))
            if c.get("image") != "reasonrec":
                fail(f"{where}: {cname}: image {c.get('image')!r}; the manifests use `reasonrec` and set the real one via kustomize images")
        for v in vols.values():
            cm = v.get("configMap", {}).get("name")
            if cm and cm not in configmaps:
                fail(f"{where}: volume {v['name']}: ConfigMap {cm} does not exist")
        if o["metadata"]["name"] == "reasonrec-worker":
            worker_grace = spec.get("terminationGracePeriodSeconds", 30)

for where, svc in by_kind.get("Service", []):
    sel = svc["spec"].get("selector", {})
    pods = [(o, t) for _, o in k8s_objects for t in pod_specs(o)
            if all(t.get("metadata", {}).get("labels", {}).get(k) == v for k, v in sel.items())]
    if not pods:
        fail(f"{where}: Service {svc['metadata']['name']} selects no pod")
    for p in svc["spec"].get("ports", []):
        tp = p.get("targetPort", p.get("port"))
        for o, t in pods:
            names = {pp.get("name") for c in t["spec"]["containers"] for pp in c.get("ports", [])} | \
                    {pp["containerPort"] for c in t["spec"]["containers"] for pp in c.get("ports", [])}
            if tp not in names:
                fail(f"{where}: Service port {p.get('name')} targets {tp}, not a port of {o['metadata']['name']}")

# The reasonrec.toml of the ConfigMap.
toml_conf = None
cm = configmaps.get("reasonrec-config")
if cm is None:
    fail("deploy/k8s: no ConfigMap reasonrec-config")
elif tomllib is None:
    warnings.append("Python has no tomllib (< 3.11): the ConfigMap's reasonrec.toml was not parsed")
else:
    try:
        toml_conf = tomllib.loads(cm["data"]["reasonrec.toml"])
    except Exception as e:
        fail(f"ConfigMap reasonrec-config: reasonrec.toml does not parse: {e}")
prefix = ((toml_conf or {}).get("broker", {}) or {}).get("prefix", "reasonrec")
grace = ((toml_conf or {}).get("worker", {}) or {}).get("shutdown_grace_secs", 30)
if worker_grace is not None and not worker_grace > grace:
    fail(f"worker terminationGracePeriodSeconds {worker_grace} must exceed worker.shutdown_grace_secs {grace}")
for ep in ((toml_conf or {}).get("teacher", {}) or {}).get("endpoints", []):
    ke = ep.get("api_key_env")
    if ke and not any(ke in keys for keys in secret_keys.values()):
        fail(f"ConfigMap: endpoint {ep.get('name')}: api_key_env {ke} is not a key of the Secret template")

# CRDs the schema validator skips: check them by hand.
for where, so in by_kind.get("ScaledObject", []):
    spec = so["spec"]
    tgt = spec.get("scaleTargetRef", {}).get("name")
    if ("Deployment", tgt) not in all_objs:
        fail(f"{where}: ScaledObject targets Deployment {tgt}, which does not exist")
    if not 1 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100):
        fail(f"{where}: ScaledObject: need 1 <= minReplicaCount <= maxReplicaCount")
    for t in spec.get("triggers", []):
        if t.get("type") != "rabbitmq":
            continue
        md = t.get("metadata", {})
        if md.get("queueName") != f"{prefix}.tasks":
            fail(f"{where}: trigger queueName {md.get('queueName')} is not {prefix}.tasks (broker.prefix + .tasks)")
        if not isinstance(md.get("value"), str):
            fail(f"{where}: trigger metadata values must be strings (value)")
        auth = t.get("authenticationRef", {}).get("name")
        if ("TriggerAuthentication", auth) not in all_objs:
            fail(f"{where}: authenticationRef {auth} does not exist")
for where, ta in by_kind.get("TriggerAuthentication", []):
    for ref in ta["spec"].get("secretTargetRef", []):
        if ref["key"] not in secret_keys.get(ref["name"], set()):
            fail(f"{where}: TriggerAuthentication reads {ref['name']}/{ref['key']}, not in the Secret template")
for where, pm in by_kind.get("PodMonitor", []):
    sel = pm["spec"]["selector"].get("matchLabels", {})
    for ep in pm["spec"].get("podMetricsEndpoints", []):
        hits = [o["metadata"]["name"] for _, o in k8s_objects for t in pod_specs(o)
                if all(t.get("metadata", {}).get("labels", {}).get(k) == v for k, v in sel.items())
                and any(p.get("name") == ep.get("port") for c in t["spec"]["containers"] for p in c.get("ports", []))]
        for need in ("reasonrec-coordinator", "reasonrec-worker"):
            if need not in hits:
                fail(f"{where}: PodMonitor port {ep.get('port')} does not reach {need}")

# ---------------------------------------------------------------------------------------------
# 5. reasonrec settings used in deploy/ are keys of reasonrec.example.toml.
# Keys announced by issue 9 (metrics and status page) that the example may not list yet: a warning
# until it does (then this list can go).
PENDING = {"metrics.bind", "coordinator.http_bind", "coordinator.status_token_env"}
known, section = set(), ""
for line in open("reasonrec.example.toml"):
    m = re.match(r"^\s*\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?", line)
    if m:
        section = m.group(1)
        known.add(section)
        continue
    m = re.match(r"^\s*#?\s*([a-z_][a-z0-9_]*)\s*=", line)   # commented-out keys count too
    if m and section:
        known.add(f"{section}.{m.group(1)}")


def check_key(key, where):
    counts["settings keys"] += 1
    if key in known:
        return
    if key in PENDING:
        warnings.append(f"{where}: {key} is not in reasonrec.example.toml yet (announced by issue 9)")
        return
    fail(f"{where}: {key} is not a key of reasonrec.example.toml (unknown keys stop reasonrec at start-up)")


def walk_toml(t, where, pre=""):
    for k, v in t.items():
        key = f"{pre}{k}"
        if isinstance(v, dict):
            walk_toml(v, where, key + ".")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for x in v:
                walk_toml(x, where, key + ".")
        else:
            check_key(key, where)


if toml_conf is not None:
    walk_toml(toml_conf, "ConfigMap reasonrec-config")
if tomllib is not None:
    with open("deploy/reasonrec.compose.toml", "rb") as f:
        walk_toml(tomllib.load(f), "deploy/reasonrec.compose.toml")
compose = docs.get("deploy/docker-compose.yml", [{}])[0]
for sname, svc in (compose.get("services") or {}).items():
    env = svc.get("environment") or {}
    names = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
    env_names += [(f"deploy/docker-compose.yml service {sname}", n) for n in names]
    for vol in svc.get("volumes") or []:
        src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
        if src.startswith("."):
            if not os.path.exists(os.path.normpath(os.path.join("deploy", src))):
                fail(f"deploy/docker-compose.yml: service {sname} mounts {src}, which does not exist")
for keys in secret_keys.values():
    env_names += [("Secret template", k) for k in keys]
for where, n in env_names:
    if n.startswith("REASONREC__"):
        check_key(".".join(p.lower() for p in n[len("REASONREC__"):].split("__")), f"{where} env {n}")

# ---------------------------------------------------------------------------------------------
# 6. PromQL: only reasonrec's metrics (dashboard, alert rules), and the rule files agree.
COUNTERS = ["reasonrec_tasks_total", "reasonrec_teacher_tokens_total", "reasonrec_teacher_cost_usd_total",
            "reasonrec_teacher_rate_limited_total", "reasonrec_teacher_retries_total",
            "reasonrec_rate_limit_wait_seconds_total", "reasonrec_outbox_published_total",
            "reasonrec_dead_letters_recorded_total"]
GAUGES = ["reasonrec_worker_in_flight", "reasonrec_queue_messages", "reasonrec_run_tasks",
          "reasonrec_run_cost_usd", "reasonrec_build_info"]
HISTOGRAMS = ["reasonrec_teacher_request_duration_seconds", "reasonrec_db_commit_batch_size"]
METRICS = set(COUNTERS + GAUGES) | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
FUNCS = set("""abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min
count count_over_time count_values day_of_month day_of_week delta deriv exp floor group histogram_quantile
holt_winters idelta increase irate label_join label_replace last_over_time ln log10 log2 max max_over_time
min min_over_time predict_linear quantile quantile_over_time rate resets round scalar sgn sort sort_desc
sqrt stddev stdvar sum sum_over_time time timestamp topk vector""".split())
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def check_promql(expr, where):
    counts["promql expressions"] += 1
    s = re.sub(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])*\'|`[^`]*`', '""', expr)   # strings
    s = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "", s)                       # Grafana variables
    s = re.sub(r"\{[^{}]*\}", "", s)                                            # label matchers
    s = re.sub(r"\[[^\[\]]*\]", "", s)                                          # ranges, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    s = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?([smhdwy]|ms)?\b", " ", s)             # numbers, durations
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word, rest = m.group(0), s[m.end():].lstrip()
        if word in KEYWORDS:
            continue
        if rest.startswith("("):
            if word not in FUNCS:
                fail(f"{where}: unknown PromQL function {word}() in: {expr}")
        elif word not in METRICS:
            fail(f"{where}: {word} is not one of reasonrec's metrics, in: {expr}")
    if not re.search(r"reasonrec_", expr):
        fail(f"{where}: expression names no reasonrec metric: {expr}")


dash_path = "deploy/grafana/reasonrec-dashboard.json"
try:
    with open(dash_path) as f:
        dash = json.load(f)
except (OSError, ValueError) as e:
    fail(f"{dash_path}: {e}")
    dash = None
if dash is not None:
    if not 36 <= dash.get("schemaVersion", 0) <= 41:
        fail(f"{dash_path}: schemaVersion {dash.get('schemaVersion')} (expected about 39)")
    if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus" for i in dash.get("__inputs", [])):
        fail(f"{dash_path}: no __inputs entry DS_PROMETHEUS (prometheus): not importable with a data source choice")
    if dash.get("id") is not None:
        fail(f"{dash_path}: id must be null for import")
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels += p.get("panels", [])
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        fail(f"{dash_path}: duplicate panel ids")
    for p in panels:
        if p.get("type") == "row":
            continue
        counts["dashboard panels"] += 1
        title = p.get("title", "?")
        if len(p.get("description", "")) < 40:
            fail(f"{dash_path}: panel {title!r} has no description saying how to read it")
        if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            fail(f"{dash_path}: panel {title!r} does not use the ${{DS_PROMETHEUS}} data source")
        gp = p.get("gridPos", {})
        if not all(k in gp for k in "hwxy") or gp["x"] + gp["w"] > 24:
            fail(f"{dash_path}: panel {title!r}: bad gridPos {gp}")
        if not p.get("targets"):
            fail(f"{dash_path}: panel {title!r} has no query")
        for t in p.get("targets", []):
            check_promql(t.get("expr", ""), f"{dash_path} panel {title!r}")
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
            m = re.fullmatch(r"\s*label_values\(\s*([^,()]+)\s*,\s*[A-Za-z_]+\s*\)\s*", q)
            if not m:
                fail(f"{dash_path}: variable {v.get('name')}: query {q!r} is not label_values(metric, label)")
            else:
                check_promql(m.group(1), f"{dash_path} variable {v.get('name')}")

rule_sets = {}
for path, ds in docs.items():
    for d in ds:
        groups = d.get("groups") if path.startswith("deploy/prometheus/") else \
            d.get("spec", {}).get("groups") if d.get("kind") == "PrometheusRule" else None
        if groups is None:
            continue
        rule_sets[path] = groups
        for g in groups:
            for r in g.get("rules", []):
                check_promql(r.get("expr", ""), f"{path} rule {r.get('alert') or r.get('record')}")
if len(rule_sets) >= 2:
    (pa, ga), *rest = rule_sets.items()
    for pb, gb in rest:
        if ga != gb:
            fail(f"{pa} and {pb} hold different alert rules: keep them identical")

# ---------------------------------------------------------------------------------------------
print("check_deploy: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
if HAVE_VALIDATOR:
    print(f"check_deploy: Kubernetes schemas {', '.join(VERSIONS)} (kubernetes-validate, strict)")
for s in skipped:
    print(f"check_deploy: SKIPPED schema: {s}")
for w in warnings:
    print(f"check_deploy: WARNING: {w}")
if not HAVE_VALIDATOR:
    print("check_deploy: WARNING: NO SCHEMA VALIDATION RAN (validator not installable); parse and cross checks only")
for f_ in failures:
    print(f"check_deploy: FAIL: {f_}")
if failures:
    print(f"check_deploy: {len(failures)} problem(s)")
    sys.exit(1)
print("check_deploy: OK")
PY
echo "check_deploy: done in $(($(date +%s) - started)) s"
