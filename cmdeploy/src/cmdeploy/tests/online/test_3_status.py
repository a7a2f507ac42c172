"""``cmdeploy status`` against the relay under test."""

import os
import subprocess
import sys


def test_status_command_reports_all_services_active(config):
    argv = [sys.executable, "-m", "cmdeploy.cli", "--config", os.environ["CHATMAIL_INI"]]
    if os.environ.get("CHATMAIL_SSH_CONFIG"):
        argv += ["--ssh-config", os.environ["CHATMAIL_SSH_CONFIG"]]
    argv += ["status"]
    if os.environ.get("CHATMAIL_SSH"):
        argv += ["--ssh-host", os.environ["CHATMAIL_SSH"]]
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) > 5
    assert lines[0] == f"chatmail domain: {config.mail_domain}"
