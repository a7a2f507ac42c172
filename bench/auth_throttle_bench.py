"""How fast a password guesser from one IP gets answers, with and without Dovecot's penalty.

Run: ``venv/bin/python bench/auth_throttle_bench.py [--attempts N]``.
Starts Debian's Dovecot with doveauth on loopback (chatmaild.testkit.dovecot_instance) once
as the relay was before (auth penalty off) and once as it is now (penalty on), both with the
relay's ``auth_failure_delay = 2s``. Clients claim their IP through the PROXY protocol
listener, as clients on port 443 do on the relay. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from chatmaild.testkit.dovecot_instance import DOMAIN, DovecotInstance

GUESSER = "203.0.113.66"
PASSWORD = "password123"


def timed_login(dovecot: DovecotInstance, ip: str, addr: str, password: str) -> float:
    start = time.perf_counter()
    dovecot.login_from(ip, addr, password)
    return time.perf_counter() - start


def sequential_guesses(dovecot: DovecotInstance, victim: str, n: int) -> list[float]:
    """One wrong password per connection, one after another (distinct passwords: Dovecot
    does not raise the penalty for a repeated one)."""
    return [timed_login(dovecot, GUESSER, victim, f"guess-{i:05d}") for i in range(n)]


def parallel_guesses(dovecot: DovecotInstance, victim: str, n: int) -> float:
    """``n`` wrong passwords on ``n`` connections at once; seconds until all are answered."""
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda i: dovecot.login_from(GUESSER, victim, f"par-{i:05d}"), range(n)))
    return time.perf_counter() - start


def bystanders(dovecot: DovecotInstance, addrs: list[str], stop: threading.Event) -> list[float]:
    """Correct logins of other accounts from other IPs while the guesser runs."""
    latencies = []
    i = 0
    while not stop.is_set():
        addr = addrs[i % len(addrs)]
        latencies.append(timed_login(dovecot, f"198.51.100.{i % len(addrs) + 1}", addr, PASSWORD))
        i += 1
        time.sleep(0.05)
    return latencies


def run(penalty: bool, attempts: int) -> dict:
    with DovecotInstance(auth_penalty=penalty, auth_failure_delay="2s") as dovecot:
        victim = f"victim123@{DOMAIN}"
        others = [f"other{i:04d}@{DOMAIN}" for i in range(20)]
        for i, addr in enumerate([victim, *others]):
            assert dovecot.login_from(f"192.0.2.{i + 1}", addr, PASSWORD), addr
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            side = pool.submit(bystanders, dovecot, others, stop)
            seq = sequential_guesses(dovecot, victim, attempts)
            stop.set()
            side_lat = side.result()
        # A correct login from the guesser's IP (a NAT neighbour) right after the guessing.
        neighbour = timed_login(dovecot, GUESSER, others[0], PASSWORD)
        par = parallel_guesses(dovecot, victim, attempts)
    return {"seq": seq, "par": par, "side": side_lat, "neighbour": neighbour}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=50, help="wrong passwords per run")
    args = parser.parse_args()
    n = args.attempts
    print(f"{n} wrong-password IMAP LOGINs from one IP, auth_failure_delay = 2s")
    header = (
        f"{'auth penalty':14} {'seq att/s':>9} {'1st s':>6} {'5th s':>6} {'nth s':>6}"
        f" {'par att/s':>9} {'others p50 ms':>13} {'others max ms':>13} {'same-IP ok s':>12}"
    )
    rows = []
    for penalty in (False, True):
        r = run(penalty, n)
        seq = r["seq"]
        rows.append(
            f"{'on' if penalty else 'off':14} {n / sum(seq):9.2f} {seq[0]:6.2f} {seq[4]:6.2f}"
            f" {seq[-1]:6.2f} {n / r['par']:9.2f} {statistics.median(r['side']) * 1000:13.1f}"
            f" {max(r['side']) * 1000:13.1f} {r['neighbour']:12.2f}"
        )
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
