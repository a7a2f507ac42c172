#!/bin/bash
# The whole test suite: unit tests (with real Dovecot on loopback), then the lab
# end-to-end tests. Installs the Debian packages and the venv it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/apt-install.sh scripts/test-packages.txt
scripts/initenv.sh

echo "== unit tests"
venv/bin/pytest -q -m "not lab" "$@"

echo "== lab end-to-end tests"
set +e
# Tests marked "pending" do not pass yet (their issue is open and says why): left out here.
venv/bin/pytest -q -m "lab and not pending" "$@"
rc=$?
set -e
# 5 = nothing collected (no lab tests selected), not a failure of the suite.
[ "$rc" = 5 ] && rc=0
[ "$rc" = 0 ] || exit "$rc"

echo "== online suite (cmdeploy test, cmdeploy bench) against two fresh lab relays"
work=$(mktemp -d /tmp/chatmail-online-XXXXXX)
cleanup() { venv/bin/cmdeploy lab down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
# The bench's burst pair and its throughput senders may send without the rate limit
# (documented override).
exempt="benchpair@_relay1.lab benchpeer@_relay1.lab"
for i in $(seq -f %03g 0 31); do exempt="$exempt benchs$i@_relay1.lab"; done
# Lab hosts see this whole machine's load average, which the bench drives past the default
# account-creation limit (max_load_1m) on purpose; the bench creates accounts between runs.
noload=(--set max_load_1m=1000)
venv/bin/cmdeploy lab relay relay1 --workdir "$work" --set "rate_limit_exempt=$exempt" "${noload[@]}" >/dev/null
venv/bin/cmdeploy lab relay relay2 --workdir "$work" "${noload[@]}" >/dev/null
# The throughput floor: stock Postfix + Dovecot on two more lab hosts, same bench accounts.
venv/bin/python -m cmdeploy.lab.stock relay3 relay4 --password-file "$work/relay1/bench-password"
lab=(--config "$work/relay1/chatmail.ini" --ssh-config /var/lib/chatmail-lab/ssh_config)
online=(--relay2 _relay2.lab --ssh-host2 relay2 --netns cmlab-client)
set +e
venv/bin/cmdeploy "${lab[@]}" test "${online[@]}"
rc=$?
venv/bin/cmdeploy "${lab[@]}" bench --floor _relay3.lab,_relay4.lab "${online[@]}" | sed -n '/benchmark results/,$p'
set -e
exit "$rc"
