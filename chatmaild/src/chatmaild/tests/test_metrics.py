import subprocess
import sys

from chatmaild.metrics import count_accounts, main
from chatmaild.testkit.config import write_ini

DOMAIN = "chat.example.org"


def populate(mailboxes):
    for name in ("abcdefghi", "zyxwvutsr", "echo", "ci-abcdef", "ac_123456"):
        (mailboxes / f"{name}@{DOMAIN}").mkdir(parents=True)
    (mailboxes / "pending_notifications").mkdir()
    (mailboxes / "stray-file@x").write_text("not a directory")


def test_only_account_directories_are_counted(tmp_path):
    populate(tmp_path)
    assert count_accounts(tmp_path) == (5, 2)


def test_prometheus_text_from_ini(tmp_path, capsys):
    mailboxes = tmp_path / "mail"
    populate(mailboxes)
    ini = write_ini(tmp_path, DOMAIN)
    main([str(ini)])
    assert capsys.readouterr().out == (
        "# HELP accounts total number of accounts\n"
        "# TYPE accounts gauge\n"
        "accounts 5\n"
        "# HELP ci_accounts number of CI accounts\n"
        "# TYPE ci_accounts gauge\n"
        "ci_accounts 2\n"
        "# HELP nonci_accounts number of non-CI accounts\n"
        "# TYPE nonci_accounts gauge\n"
        "nonci_accounts 3\n"
    )


def test_mailboxes_dir_argument_and_output_file(tmp_path):
    mailboxes = tmp_path / "mail"
    populate(mailboxes)
    out = tmp_path / "www" / "metrics"
    out.parent.mkdir()
    out.write_text("old")
    result = subprocess.run(
        [sys.executable, "-m", "chatmaild.metrics", str(mailboxes), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "\naccounts 5\n" in out.read_text()
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics"]


def test_output_file_as_second_argument(tmp_path):
    mailboxes = tmp_path / "mail"
    populate(mailboxes)
    ini = write_ini(tmp_path, DOMAIN)
    out = tmp_path / "metrics"
    main([str(ini), str(out)])
    assert "\nnonci_accounts 3\n" in out.read_text()
