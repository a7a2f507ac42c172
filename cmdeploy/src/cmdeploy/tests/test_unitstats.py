"""unitstats: per-unit counters of a relay, grouped into components."""

import json
import subprocess
import sys

from cmdeploy import unitstats


def test_sampler_runs_and_reports_units_as_json():
    # The same script the relay runs; on any Linux it reads /proc and prints a dict.
    out = subprocess.run([sys.executable, "-c", unitstats.SAMPLER], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    sample = json.loads(out)
    assert all(isinstance(v, float) for v in sample["processes"].values())
    for rec in sample["units"].values():
        assert rec["rss_kb"] >= rec["pss_kb"] >= 0


def test_postfix_instances_are_one_component():
    assert unitstats.group_name("postfix@-.service") == "postfix"
    assert unitstats.group_name("postfix.service") == "postfix"
    assert unitstats.group_name("filtermail-incoming.service") == "filtermail"
    assert unitstats.group_name("doveauth.service") == "doveauth"


def test_cpu_seconds_are_deltas_per_component_busiest_first():
    before = {
        "postfix@-.service": {"cpu_usec": 1_000_000},
        "filtermail.service": {"cpu_usec": 0},
        "cron.service": {"cpu_usec": 5},
    }
    after = {
        "postfix@-.service": {"cpu_usec": 1_500_000},
        "postfix.service": {"cpu_usec": 250_000},
        "filtermail.service": {"cpu_usec": 2_000_000},
        "cron.service": {"cpu_usec": 5},
    }
    used = unitstats.cpu_seconds(before, after)
    assert list(used) == ["filtermail", "postfix"]
    assert used == {"filtermail": 2.0, "postfix": 0.75}


def test_process_cpu_counts_only_what_was_used_in_between():
    before = {"postfix@-.service smtpd": 1.0, "dovecot.service auth": 2.0}
    after = {
        "postfix@-.service smtpd": 3.5,
        "dovecot.service auth": 2.0,
        "nginx.service nginx": 0.5,
    }
    assert unitstats.process_cpu(before, after) == {
        "postfix@-.service smtpd": 2.5,
        "nginx.service nginx": 0.5,
    }
