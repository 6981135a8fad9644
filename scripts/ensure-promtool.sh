#!/usr/bin/env bash
# Makes promtool available for the alert rule tests (tests/chart/test_alert_rules.py): installs
# Debian's prometheus package, which ships /usr/bin/promtool, when it is missing. Needs root.
set -euo pipefail

if command -v promtool >/dev/null; then
  exit 0
fi
echo "installing prometheus (for promtool)"
apt-get update -qq
# The package's service is not started: only the promtool binary is wanted.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null || { echo "promtool is still missing after installing prometheus" >&2; exit 1; }
