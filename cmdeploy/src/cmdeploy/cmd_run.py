"""``cmdeploy run``: checks that nothing is in the way, then pyinfra deploys the relay."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatmaild.config import Config

from cmdeploy.cmdline import add_ssh_host, fail, load_config, remote_for
from cmdeploy.remote import Remote, RemoteError
from cmdeploy.website.build import WebsiteError
from cmdeploy.website.privacy import PrivacyContactError, check_privacy

REPO = Path(__file__).resolve().parents[3]

POSTFIX = {"master", "smtpd"}
DOVECOT = {"dovecot", "imap-login"}
NGINX = {"nginx"}
# Ports the relay listens on -> the programs (process names) allowed to hold them already.
PORTS = {
    25: POSTFIX, 587: POSTFIX, 465: POSTFIX, 143: DOVECOT, 993: DOVECOT,
    80: NGINX, 443: NGINX, 8443: NGINX, 8465: POSTFIX, 8993: DOVECOT, 53: {"unbound"},
}  # fmt: skip


class PrecheckError(Exception):
    """The relay host is not ready; nothing was changed. The message says what to fix."""


def port_conflicts(remote: Remote, config: Config) -> list[str]:
    """Listening ports of the relay held by a program that is not ours."""
    wanted = dict(PORTS)
    for port in (config.filtermail_smtp_port, config.filtermail_smtp_port_incoming,
                 config.filtermail_http_port_incoming):  # fmt: skip
        wanted[port] = {"filtermail"}
    for port in (config.postfix_reinject_port, config.postfix_reinject_port_incoming,
                 config.postfix_reinject_port_local):  # fmt: skip
        wanted[port] = POSTFIX
    # ss shows the kernel's process name, cut to 15 characters.
    wanted[config.mxdeliv_transport_port] = {"chatmail-mxtransport"[:15]}
    out = remote.run("ss -Hltnp", check=False).stdout
    problems = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[3].rsplit(":", 1)[-1].isdigit():
            continue
        port = int(fields[3].rsplit(":", 1)[-1])
        owners = set(re.findall(r'\(\("([^"]+)"', line)) or {"?"}
        expected = wanted.get(port)
        if expected and not owners <= expected:
            other = ", ".join(sorted(owners - expected))
            problems.add(f"port {port} is used by {other} (expected {'/'.join(sorted(expected))})")
    return sorted(problems)


def precheck(remote: Remote, config: Config, skip_dns: bool) -> None:
    try:
        os_release = remote.run("cat /etc/os-release").stdout
    except RemoteError as e:
        raise PrecheckError(f"{e}\nMake sure 'ssh root@{remote.host}' works with a key.") from None
    if "bookworm" not in os_release:
        raise PrecheckError(f"{remote.host} is not Debian 12 (bookworm); the relay needs it")
    conflicts = port_conflicts(remote, config)
    if conflicts:
        raise PrecheckError(
            "ports needed by the relay are taken: " + "; ".join(conflicts)
            + ". Stop or remove those programs, then run again."
        )  # fmt: skip
    if not skip_dns:
        check = f"getent ahosts {config.mail_domain} >/dev/null"
        if remote.run(check, check=False).returncode != 0:
            raise PrecheckError(
                f"{config.mail_domain} has no A/AAAA record: point it at the server "
                "(or use --skip-dns-check to deploy anyway)"
            )


def build_wheel(out_dir: Path) -> Path:
    """Build chatmaild reproducibly, so that an unchanged package uploads nothing."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    # Deploys of several relays at once (an inventory) share chatmaild/build/: one at a time.
    with open(REPO / "chatmaild" / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_wheel_locked(out_dir, env)


def _build_wheel_locked(out_dir: Path, env: dict) -> Path:
    # setuptools reuses build/: a module deleted from the source could ship from there.
    shutil.rmtree(REPO / "chatmaild" / "build", ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out_dir),
         str(REPO / "chatmaild")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise PrecheckError(
            f"building chatmaild failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    (wheel,) = out_dir.glob("chatmaild-*.whl")
    return wheel


def constraints() -> str:
    """Exact versions of what chatmaild needs, as installed here (pins for the relay)."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return "".join(line + "\n" for line in sorted(out.splitlines()) if "==" in line)


def version() -> str:
    def git(*args):
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True
            ).stdout
        except OSError:  # no git here (a tree copied without it): the version is unknown
            return ""

    rev = git("rev-parse", "HEAD").strip() or "unknown"
    return rev + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")


def prepare_dovecot(args, remote: Remote, config: Config) -> dict[str, str] | None:
    """Pick (and build once, if needed) the Dovecot packages; None if that failed."""
    from cmdeploy.dovecot.build import BuildError, SSHShell, prepare

    try:
        plan = prepare(config, SSHShell(remote), dry_run=args.dry_run,
                       log=lambda m: print(m, flush=True))  # fmt: skip
    except (BuildError, OSError, subprocess.SubprocessError) as e:
        print(f"dovecot: {e}", file=sys.stderr)
        return None
    return plan.env()


def run_deploy(args, config: Config) -> int:
    """Everything ``cmdeploy run`` does after parsing its arguments."""
    check_privacy(config)
    remote = remote_for(args, config)
    print(f"checking {remote.host} ...", flush=True)
    precheck(remote, config, skip_dns=args.skip_dns_check)
    started = time.monotonic()
    dovecot_env = {} if args.website_only else prepare_dovecot(args, remote, config)
    if dovecot_env is None:
        return 1
    with tempfile.TemporaryDirectory(prefix="cmdeploy-") as tmp:
        tmp = Path(tmp)
        print("building chatmaild ...", flush=True)
        wheel = build_wheel(tmp / "dist")
        (tmp / "constraints.txt").write_text(constraints())
        env = {
            **os.environ,
            "CHATMAIL_INI": str(config.config_path.resolve()),
            "CHATMAIL_WHEEL": str(wheel),
            "CHATMAIL_CONSTRAINTS": str(tmp / "constraints.txt"),
            "CHATMAIL_VERSION": version(),
            "CHATMAIL_DISABLE_MAIL": "1" if args.disable_mail else "",
            "CHATMAIL_WEBSITE_ONLY": "1" if args.website_only else "",
            **dovecot_env,
        }
        argv = [
            str(Path(sys.executable).parent / "pyinfra"), "-y",
            str(remote.pyinfra_inventory(tmp)), str(Path(__file__).parent / "pyinfra_deploy.py"),
        ]  # fmt: skip
        if args.dry_run:
            argv.insert(2, "--dry")
        if args.verbose:
            argv.insert(2, "-vv")
        proc = subprocess.run(argv, env=env)
    if proc.returncode != 0:
        print(f"deploy failed (pyinfra exit {proc.returncode}); fix the error above and run again",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"deploy of {config.mail_domain} completed in {time.monotonic() - started:.0f}s")
    if not args.dry_run:
        print("next: 'cmdeploy dns' shows the DNS records to set, 'cmdeploy status' the services")
    return 0


def run_cmd(args) -> int:
    config = load_config(args)
    try:
        return run_deploy(args, config)
    except (PrecheckError, RemoteError, PrivacyContactError, WebsiteError) as e:
        return fail(f"nothing was changed: {e}")


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="deploy or update the relay over SSH")
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.add_argument(
        "--disable-mail",
        action="store_true",
        help="install everything but keep Postfix and Dovecot stopped (migration)",
    )
    p.add_argument(
        "--website-only", action="store_true", help="only rebuild and upload the web page"
    )
    p.add_argument("--skip-dns-check", action="store_true", help="deploy even without an A record")
    add_ssh_host(p)
    p.set_defaults(func=run_cmd)
