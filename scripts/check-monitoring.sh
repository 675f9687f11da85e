#!/usr/bin/env bash
# Checks the monitoring files under deploy/ without running anything:
#   1. promtool check config: deploy/prometheus/prometheus.yml and prometheus.compose.yml
#      (each with the rules file it loads);
#   2. promtool check rules: deploy/prometheus/alerts.yml;
#   3. promtool test rules: deploy/prometheus/alerts.test.yml (every alert, firing and not);
#   4. the Grafana dashboard deploy/grafana/data-tunnel.json is valid JSON with panels;
#   5. every tunnel_* metric that the rules, the scrape configs and the dashboard name exists in
#      shared/src/metrics/names.rs (a histogram's _bucket/_sum/_count series count as its name).
#
#   scripts/check-monitoring.sh
#
# promtool: TUNNEL_PROMTOOL_BIN, else promtool on PATH, else /usr/bin/promtool (Debian's
# prometheus package, which `scripts/stack.sh up` installs). Prints `monitoring: ok (...)`, or
# the reason it failed and exits 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROM=$ROOT/deploy/prometheus
DASHBOARD=$ROOT/deploy/grafana/data-tunnel.json
NAMES=$ROOT/shared/src/metrics/names.rs

fail() { printf 'monitoring: FAIL: %s\n' "$*" >&2; exit 1; }

promtool=${TUNNEL_PROMTOOL_BIN:-}
[[ -n $promtool ]] || promtool=$(command -v promtool || true)
[[ -n $promtool ]] || { [[ -x /usr/bin/promtool ]] && promtool=/usr/bin/promtool; }
[[ -n $promtool && -x $promtool ]] \
  || fail "promtool is missing: scripts/stack.sh up installs it (Debian's prometheus package), or set TUNNEL_PROMTOOL_BIN"

run() { # what, command...
  local what=$1 out; shift
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    fail "$what"
  fi
}

# promtool resolves rule_files relative to the config file: run from anywhere
for config in "$PROM/prometheus.yml" "$PROM/prometheus.compose.yml"; do
  run "promtool check config ${config#"$ROOT"/}" "$promtool" check config "$config"
done
run "promtool check rules deploy/prometheus/alerts.yml" "$promtool" check rules "$PROM/alerts.yml"
run "promtool test rules deploy/prometheus/alerts.test.yml" \
  bash -c 'cd "$1" && "$2" test rules alerts.test.yml' _ "$PROM" "$promtool"

# the dashboard and the metric names (python3 is a prerequisite of the stack already)
python3 -m json.tool "$DASHBOARD" >/dev/null || fail "${DASHBOARD#"$ROOT"/} is not valid JSON"
summary=$(python3 - "$NAMES" "$DASHBOARD" "$PROM/alerts.yml" "$PROM/prometheus.yml" \
  "$PROM/prometheus.compose.yml" <<'PY'
import json, re, sys
names_rs, dashboard, *others = sys.argv[1:]
names = set(re.findall(r'=\s*"(tunnel_[a-z_]+)"', open(names_rs).read()))
if not names:
    sys.exit(f"no metric names found in {names_rs}")

def known(token):
    if token in names:
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", token)
    return base != token and base in names

problems = []
d = json.load(open(dashboard))
panels = [p for p in d.get("panels", []) if p.get("type") != "row"]
if not d.get("title") or not d.get("uid") or not panels:
    problems.append(f"{dashboard}: a dashboard needs a title, a uid and panels")
exprs = 0
for p in panels:
    if not p.get("title"):
        problems.append(f"{dashboard}: panel {p.get('id')} has no title")
    targets = p.get("targets") or []
    if not targets:
        problems.append(f"{dashboard}: panel '{p.get('title')}' has no query")
    for t in targets:
        exprs += 1
        for token in re.findall(r"tunnel_[a-z_]+", t.get("expr", "")):
            if not known(token):
                problems.append(f"{dashboard}: panel '{p.get('title')}' uses {token}, not in names.rs")
for path in others:
    for token in sorted(set(re.findall(r"tunnel_[a-z_]+", open(path).read()))):
        if not known(token):
            problems.append(f"{path}: {token} is not in names.rs")
if problems:
    sys.exit("\n".join(problems))
print(f"dashboard: {len(panels)} panels, {exprs} queries; {len(names)} metric names")
PY
) || fail "metric names or dashboard (see above)"

printf 'monitoring: ok (prometheus.yml, prometheus.compose.yml, alerts.yml, alerts.test.yml; %s; %s)\n' \
  "$summary" "$("$promtool" --version 2>/dev/null | sed -n '1s/ (.*//p')"
