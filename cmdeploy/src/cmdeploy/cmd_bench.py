"""``cmdeploy bench``: the online benchmarks (pytest, real clients) against a deployed relay."""

from __future__ import annotations

import argparse

from cmdeploy.cmd_tests import TESTS, add_suite_options, run_pytest


def bench_cmd(args: argparse.Namespace) -> int:
    return run_pytest(args, [str(TESTS / "benchmark.py"), "-s"])


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure the relay (and two relays) with real clients")
    p.add_argument(
        "--floor",
        metavar="HOST[,HOST2]",
        help="stock Postfix + Dovecot hosts to measure the same throughput against "
        "(the lab: python -m cmdeploy.lab.stock relay3 relay4, with this relay's bench-password)",
    )
    add_suite_options(p)
    p.set_defaults(func=bench_cmd)
