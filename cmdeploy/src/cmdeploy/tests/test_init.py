from chatmaild.config import read_config

from cmdeploy.cli import main


def test_init_writes_a_readable_commented_ini(tmp_path, capsys):
    ini = tmp_path / "chatmail.ini"
    assert main(["--config", str(ini), "init", "Chat.Example.org"]) == 0
    config = read_config(ini)
    assert config.mail_domain == "chat.example.org"
    assert "#max_mailbox_size = 500M" in ini.read_text()
    assert "wrote" in capsys.readouterr().out


def test_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    ini = tmp_path / "chatmail.ini"
    ini.write_text("keep me")
    assert main(["--config", str(ini), "init", "chat.example.org"]) == 1
    assert ini.read_text() == "keep me"
    assert "--force" in capsys.readouterr().err
    assert main(["--config", str(ini), "init", "--force", "chat.example.org"]) == 0
    assert read_config(ini).mail_domain == "chat.example.org"


def test_init_rejects_invalid_domain(tmp_path, capsys):
    ini = tmp_path / "chatmail.ini"
    assert main(["--config", str(ini), "init", "not a domain"]) == 1
    assert not ini.exists()
    assert "not a valid domain name" in capsys.readouterr().err
