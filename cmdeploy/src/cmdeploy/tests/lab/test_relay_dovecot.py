"""The patched Dovecot on a deployed lab relay: installed from the cached build, pinned, no
build leftovers, and IDLE clients told of new mail without the stock 500 ms delay.

The first-ever deploy on a machine builds the packages on the relay (~15 min) and caches
them (``~/.cache/cmdeploy/dovecot``); every later deploy, this test's included, uploads them.
"""

from __future__ import annotations

import json
import re

import pytest

from cmdeploy.dovecot import build
from cmdeploy.lab.relay import deploy, lab_relay, write_config
from cmdeploy.tests.lab.probes import call
from cmdeploy.tests.lab.test_relay_deploy import changed_operations

pytestmark = pytest.mark.lab

# Build leftovers a purge must have removed: the compiler, the packaging tools, one -dev.
BUILD_ONLY = ["gcc", "dpkg-dev", "libssl-dev", "debhelper"]


@pytest.fixture(scope="module")
def relay(lab, tmp_path_factory):
    r = lab_relay(lab, "relay1", tmp_path_factory.mktemp("dovecot-relays"))
    built = re.search(r"dovecot: built (\S+) in (\d+)s", r.deploy_logs[0])
    if built:
        print(f"\nbuilt Dovecot {built.group(1)} on the relay in {built.group(2)} s")
    return r


def installed(lab, relay) -> dict[str, str]:
    out = lab.ssh_run(relay.name, "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' "
                      + " ".join(build.PACKAGES), check=False).stdout  # fmt: skip
    return {f[0]: f[1] for f in (x.split() for x in out.splitlines()) if f[2].startswith("ii")}


def idle_latency_ms(lab, relay, n: int = 10) -> list[float]:
    """SMTP 250 -> ``* N EXISTS`` for ``n`` messages to a client in IDLE (lab client ns)."""
    code = f"""
import json
from cmdeploy import idleclients, loadgen
d = {relay.domain!r}
senders = loadgen.accounts(d, 2, prefix="dvs")
rcpt = loadgen.accounts(d, 1, prefix="dvr")[0]
errors = loadgen.create_accounts(d, senders + [rcpt])
assert not errors, errors
print(json.dumps(idleclients.measure_latency(d, d, senders, rcpt, n={n}, per_sender=5)))
"""
    proc = lab.client_ns_python(code, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(s * 1000 for s in json.loads(proc.stdout.splitlines()[-1]))


def median(values: list[float]) -> float:
    return values[len(values) // 2]


def test_the_four_packages_are_the_patched_build(lab, relay):
    versions = installed(lab, relay)
    assert sorted(versions) == sorted(build.PACKAGES)
    (version,) = set(versions.values())
    print(f"\ninstalled Dovecot {version}")
    assert version.endswith(build.SUFFIX)


def test_pinned_against_apt_upgrade(lab, relay):
    pin = lab.ssh_run(relay.name, f"cat {build.PIN_PATH}").stdout
    assert pin == build.pin_text()
    sim = lab.ssh_run(relay.name, "apt-get -s -o Debug::NoLocking=1 upgrade").stdout
    assert not [x for x in sim.splitlines() if re.match(r"(Inst|Conf|Remv) dovecot-", x)], sim


def test_no_build_leftovers(lab, relay):
    out = lab.ssh_run(relay.name, "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' "
                      + " ".join(BUILD_ONLY) + " 2>/dev/null; true").stdout  # fmt: skip
    left = [x.split()[0] for x in out.splitlines() if len(x.split()) > 1 and x.split()[1] == "ii"]
    assert left == [], f"build dependencies still installed: {left}"
    assert lab.ssh_run(relay.name, f"test -e {build.BUILD_DIR}", check=False).returncode == 1


def test_doveconf_ok_and_imap_answers(lab, relay):
    lab.ssh_run(relay.name, "doveconf -n > /dev/null")
    out = call(lab, "imap_login", host=relay.domain, user=f"dvlogin01@{relay.domain}",
               password="password123")  # fmt: skip
    assert out.get("ok"), out


# Runs on the relay: holds an IMAP session and an LMTP connection open, then tells for each
# imap and lmtp process whether TZ=:/etc/localtime is in its environment. Dovecot zeroes its
# processes' original environment area (it becomes room for the process title) after
# copying the variables elsewhere, so /proc/PID/environ of every Dovecot process reads as
# NULs; the copy is found in the process's own memory, as a NUL-terminated string.
TZ_SCAN = r"""
import imaplib, json, socket, ssl, subprocess, sys
domain = sys.argv[1]
entry = b"\0TZ=:/etc/localtime\0"

def has_entry(pid):
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            f = line.split()
            path = f[5] if len(f) > 5 else ""
            if f[1][0] != "r" or path in ("[vvar]", "[vsyscall]") or path.startswith("/"):
                continue  # only anonymous memory, heap and stack hold the environment
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            mem.seek(lo)
            try:
                if entry in mem.read(hi - lo):
                    return True
            except OSError:
                continue
    return False

imap = imaplib.IMAP4_SSL("127.0.0.1", 993, ssl_context=ssl._create_unverified_context())
imap.login(f"dvtzcheck@{domain}", "password123")
lmtp = socket.socket(socket.AF_UNIX)
lmtp.connect("/var/spool/postfix/private/dovecot-lmtp")
lmtp.recv(200)
found = {}
for name in ("imap", "lmtp"):
    pids = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    found[name] = {pid: has_entry(pid) for pid in pids}
print(json.dumps(found))
imap.logout()
"""


def test_imap_and_lmtp_processes_have_tz(lab, relay):
    """TZ=:/etc/localtime reaches Dovecot's imap and lmtp processes (import_environment)."""
    out = lab.ssh_run(relay.name, f"python3 - {relay.domain}", input=TZ_SCAN).stdout
    found = json.loads(out)
    print(f"\nTZ in Dovecot processes: {found}")
    assert found["imap"] and found["lmtp"], found
    assert all(found["imap"].values()) and all(found["lmtp"].values()), found


def test_second_deploy_changes_nothing(lab, relay):
    proc = deploy(lab, relay)
    log = proc.stdout + proc.stderr
    assert "building Dovecot" not in log
    assert changed_operations(log) == []


def test_idle_exists_without_the_delay_then_stock_then_back(lab, relay):
    fast = idle_latency_ms(lab, relay)
    print(
        f"\npatched Dovecot: SMTP 250 -> IDLE EXISTS median {median(fast):.1f} ms, "
        f"max {fast[-1]:.1f} ms (n={len(fast)})"
    )
    assert median(fast) < 250

    write_config(lab, relay, {"dovecot_package": "stock"})
    deploy(lab, relay)
    try:
        versions = installed(lab, relay)
        assert not any(build.is_patched(v) for v in versions.values()), versions
        assert lab.ssh_run(relay.name, f"test -e {build.PIN_PATH}", check=False).returncode == 1
        slow = idle_latency_ms(lab, relay)
        print(
            f"stock Dovecot {versions['dovecot-core']}: median {median(slow):.1f} ms, "
            f"max {slow[-1]:.1f} ms (n={len(slow)})"
        )
        # Not >= 500: the 500 ms timer is often already running when the message lands
        # (armed by an earlier change of the watched files); the bench's stock hosts show a
        # median of ~395 ms too. Patched: ~6-20 ms.
        assert median(slow) >= 300 and median(slow) > 10 * median(fast)
    finally:
        write_config(lab, relay)
        proc = deploy(lab, relay)
    assert "building Dovecot" not in proc.stdout, "back to patched from the cache"
    assert all(v.endswith(build.SUFFIX) for v in installed(lab, relay).values())
    again = idle_latency_ms(lab, relay, n=5)
    print(f"patched again: median {median(again):.1f} ms")
    assert median(again) < 250
