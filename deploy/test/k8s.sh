#!/usr/bin/env bash
# Validates deploy/k8s/*.yaml offline: against the Kubernetes API schemas (kubernetes-validate,
# strict: unknown fields are errors) and against the fleet's own rules: every Deployment has
# startup, liveness and readiness probes, memory requests and limits, a PodDisruptionBudget, and a
# termination grace period longer than FLEET_SHUTDOWN_TIMEOUT plus the NATS drain.
# Needs python3; installs kubernetes-validate into .dev/venv-deploy on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.dev/venv-deploy
if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
  echo "k8s: installing kubernetes-validate into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'kubernetes-validate==1.37.0'
fi
files=(deploy/k8s/*.yaml)
"$VENV/bin/kubernetes-validate" --strict --quiet "${files[@]}"
"$VENV/bin/python" - "${files[@]}" <<'PY'
import re, sys, yaml

def seconds(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", v.strip())
    if not m:
        sys.exit(f"k8s: FLEET_SHUTDOWN_TIMEOUT {v!r} is not a duration like 30s")
    n, unit = int(m[1]), m[2]
    return n / 1000 if unit == "ms" else n * {"s": 1, "m": 60, "h": 3600}[unit]

docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
env = {}
for d in docs:
    if d["kind"] == "ConfigMap":
        env.update(d.get("data", {}))
shutdown = seconds(env.get("FLEET_SHUTDOWN_TIMEOUT", "30s"))
pdbs = [d["spec"]["selector"]["matchLabels"] for d in docs if d["kind"] == "PodDisruptionBudget"]
problems = []
deployments = [d for d in docs if d["kind"] == "Deployment"]
for d in deployments:
    name = d["metadata"]["name"]
    spec = d["spec"]["template"]["spec"]
    labels = d["spec"]["template"]["metadata"]["labels"]
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < shutdown + 10:
        problems.append(f"{name}: terminationGracePeriodSeconds {grace} < FLEET_SHUTDOWN_TIMEOUT {shutdown:g}s + 10s for the drain")
    if not any(all(labels.get(k) == v for k, v in sel.items()) for sel in pdbs):
        problems.append(f"{name}: no PodDisruptionBudget selects it")
    for c in spec["containers"]:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe not in c:
                problems.append(f"{name}/{c['name']}: no {probe}")
        res = c.get("resources", {})
        if "memory" not in res.get("requests", {}) or "memory" not in res.get("limits", {}):
            problems.append(f"{name}/{c['name']}: memory request and limit are required")
if not deployments:
    problems.append("no Deployment found")
for p in problems:
    print(f"k8s: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"k8s: {len(docs)} resources valid; {len(deployments)} deployments with probes, resources, PDBs and a grace period over {shutdown:g}s")
PY
