"""One way in for deploy inputs, one place for relay paths (issue 16 item 3).

pyinfra_deploy.py is the only reader of the CHATMAIL_* environment, importing it deploys
nothing, and the paths the deployers start services with are the ones Dovecot's and
Postfix's configs name.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from chatmaild.config import parse_config, render_initial_config

from cmdeploy import pyinfra_deploy, relaypaths
from cmdeploy.deployer_base import STAGES, DeployError, DeployOptions
from cmdeploy.dovecot.deployer import DovecotDeployer
from cmdeploy.echobot.deployer import EchobotDeployer
from cmdeploy.mtail.deployer import MtailDeployer
from cmdeploy.nginx.deployer import NginxDeployer
from cmdeploy.opendkim.deployer import OpenDKIMDeployer
from cmdeploy.postfix.deployer import PostfixDeployer
from cmdeploy.services.deployer import DAEMONS, SOCKETS, ServicesDeployer
from cmdeploy.system.deployer import SystemDeployer
from cmdeploy.tls.deployer import TLSDeployer
from cmdeploy.turn.deployer import TurnDeployer
from cmdeploy.unbound.deployer import UnboundDeployer
from cmdeploy.website.deployer import WebsiteDeployer

PACKAGE = Path(pyinfra_deploy.__file__).parent


def config():
    return parse_config(render_initial_config("chat.example.org", {}))


def without_chatmail_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHATMAIL_")}


# The deploy file: imported, it runs nothing; executed by pyinfra, it deploys.


def test_importing_the_deploy_file_deploys_nothing():
    # Before the guard, the import itself ran deploy() and failed on the missing CHATMAIL_INI.
    out = subprocess.run([sys.executable, "-c", "import cmdeploy.pyinfra_deploy"],
                         env=without_chatmail_env(), capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_pyinfra_executing_the_deploy_file_deploys():
    # The way pyinfra 3 runs a deploy file (pyinfra_cli.util.exec_file), in a process of
    # its own: deploy() runs and stops at the first input it needs.
    script = (
        "from pyinfra.api import State\n"
        "from pyinfra.context import ctx_state\n"
        "from pyinfra_cli.util import exec_file\n"
        "import cmdeploy.pyinfra_deploy as m\n"
        "ctx_state.set(State())\n"
        "try:\n"
        "    exec_file(m.__file__)\n"
        "except Exception as e:\n"
        "    print(type(e.__context__).__name__, e.__context__)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=without_chatmail_env(),
                         capture_output=True, text=True)  # fmt: skip
    assert "CHATMAIL_INI is not set" in out.stdout, out.stdout + out.stderr


def test_deploy_without_an_ini_says_how_to_deploy():
    with pytest.raises(DeployError, match="cmdeploy run"):
        pyinfra_deploy.deploy({})


# Component order.


def test_components_deploy_in_activation_order():
    order = [type(d) for d in pyinfra_deploy.deployers(config(), DeployOptions())]
    assert order == [
        SystemDeployer,
        UnboundDeployer,
        TLSDeployer,
        ServicesDeployer,
        OpenDKIMDeployer,
        DovecotDeployer,
        PostfixDeployer,
        TurnDeployer,
        NginxDeployer,
        EchobotDeployer,
        WebsiteDeployer,
        MtailDeployer,
    ]
    # Why that order: chatmaild's sockets before the Dovecot that asks them, OpenDKIM and
    # Dovecot before the Postfix that uses them, the echobot after what it logs in to.
    assert order.index(ServicesDeployer) < order.index(DovecotDeployer)
    assert max(order.index(OpenDKIMDeployer), order.index(DovecotDeployer)) < order.index(
        PostfixDeployer
    )
    assert order.index(EchobotDeployer) > order.index(PostfixDeployer)


def test_website_only_deploys_only_the_website():
    options = DeployOptions(website_only=True)
    assert [type(d) for d in pyinfra_deploy.deployers(config(), options)] == [WebsiteDeployer]


class Op:
    """A pyinfra operation's outcome, as Deployer.changed reads it."""

    def __init__(self, changed: bool):
        self.changed = changed

    def did_change(self) -> bool:
        return self.changed


def test_a_new_chatmaild_restarts_the_echobot():
    components = pyinfra_deploy.deployers(config(), DeployOptions())
    services, bot = (next(d for d in components if isinstance(d, cls))
                     for cls in (ServicesDeployer, EchobotDeployer))  # fmt: skip
    services.track(Op(False))
    assert not bot.changed()
    services.track(Op(True))
    assert bot.changed()


# The CHATMAIL_* environment, read once.


def test_options_carry_every_input_of_cmdeploy_run(tmp_path):
    env = {
        "CHATMAIL_INI": str(tmp_path / "chatmail.ini"),
        "CHATMAIL_WHEEL": str(tmp_path / "chatmaild-1-py3-none-any.whl"),
        "CHATMAIL_CONSTRAINTS": str(tmp_path / "constraints.txt"),
        "CHATMAIL_VERSION": "abc123",
        "CHATMAIL_DISABLE_MAIL": "1",
        "CHATMAIL_WEBSITE_ONLY": "",
        "CHATMAIL_STAGES": "configure,install",
        "CHATMAIL_DOVECOT_VERSION": "1:2.3.19.1+dfsg1-2.1+deb12u1+chatmail1",
        "CHATMAIL_DOVECOT_DEBS": str(tmp_path / "debs/amd64"),
        "CHATMAIL_DOVECOT_PENDING": "",
    }
    assert pyinfra_deploy.options_from_env(env) == DeployOptions(
        disable_mail=True,
        website_only=False,
        wheel=tmp_path / "chatmaild-1-py3-none-any.whl",
        constraints=tmp_path / "constraints.txt",
        version="abc123",
        stages=("install", "configure"),  # always in stage order
        dovecot_version="1:2.3.19.1+dfsg1-2.1+deb12u1+chatmail1",
        dovecot_debs=tmp_path / "debs/amd64",
        dovecot_pending=False,
    )


def test_options_of_an_empty_environment_are_the_defaults():
    options = pyinfra_deploy.options_from_env({})
    assert options == DeployOptions()
    assert options.stages == STAGES and options.wheel is None and options.dovecot_debs is None


@pytest.mark.parametrize(("value", "on"), [("", False), ("0", False), ("false", False),
                                           ("1", True), ("yes", True)])  # fmt: skip
def test_flags(value, on):
    env = {"CHATMAIL_DISABLE_MAIL": value, "CHATMAIL_WEBSITE_ONLY": value}
    options = pyinfra_deploy.options_from_env(env)
    assert (options.disable_mail, options.website_only) == (on, on)


def test_no_deployer_reads_the_environment():
    sources = [PACKAGE / "deployer_base.py", PACKAGE / "relaypaths.py",
               *sorted(PACKAGE.glob("*/deployer.py"))]  # fmt: skip
    assert len(sources) >= 14
    readers = [str(p.relative_to(PACKAGE)) for p in sources
               if re.search(r"\b(environ|getenv)\b", p.read_text())]  # fmt: skip
    assert readers == []


def test_services_deployer_without_a_wheel_says_how_to_deploy():
    with pytest.raises(DeployError, match="cmdeploy run"):
        ServicesDeployer(config(), DeployOptions()).configure()


# Relay paths: one module, and both ends of every socket agree.


@pytest.mark.parametrize("tool", ["echobot", "expire", "metrics", "newemail"])
def test_chatmaild_tools_default_to_the_deployed_ini(tool):
    # chatmaild's Config names no socket; its tools' default config is the deployed one.
    assert importlib.import_module(f"chatmaild.{tool}").DEFAULT_INI == relaypaths.INI


def test_dovecot_asks_the_sockets_the_dict_services_listen_on():
    dovecot = DovecotDeployer(config(), DeployOptions())
    text = dovecot.render("dovecot.conf.j2") + dovecot.render("auth.conf.j2")
    asked = set(re.findall(r"= proxy:(\S+):\w+$", text, re.M))
    assert asked == set(SOCKETS.values())
    for name, path in SOCKETS.items():
        assert DAEMONS[name][0].split()[1] == path  # the service's own argument


def test_postfix_and_dovecot_name_the_same_lmtp_and_sasl_sockets():
    dovecot = DovecotDeployer(config(), DeployOptions()).render("dovecot.conf.j2")
    postfix = PostfixDeployer(config(), DeployOptions())
    main, master = postfix.render("main.cf.j2"), postfix.render("master.cf.j2")
    queue = relaypaths.POSTFIX_QUEUE_DIR
    (lmtp,) = re.findall(r"^local_transport = lmtp:unix:(\S+)$", main, re.M)
    assert f"unix_listener {queue}/{lmtp} {{" in dovecot
    # smtpd -> chatmail-saslproxy -> Dovecot's auth listener (in Dovecot's /run/dovecot).
    (sasl,) = set(re.findall(r"-o smtpd_sasl_path=(\S+)$", master, re.M))
    _, listen, target = DAEMONS["chatmail-saslproxy"][0].split()
    assert f"{queue}/{sasl}" == listen == relaypaths.SASL_SOCKET
    (listener,) = re.findall(r"^  unix_listener (\S+) \{\n    mode = 0600\n    user = vmail",
                             dovecot, re.M)  # fmt: skip
    assert f"/run/dovecot/{listener}" == target


def test_templates_name_the_venv_and_ini_of_relaypaths():
    bot = EchobotDeployer(config(), DeployOptions()).render(
        "echobot.service.j2", memory_high="1M", memory_max="2M", tasks_max=3
    )
    assert f"ExecStart={relaypaths.VENV}/bin/echobot {relaypaths.INI} " in bot
    dovecot = DovecotDeployer(config(), DeployOptions()).render("dovecot.conf.j2")
    assert f"executable = script {relaypaths.VENV}/bin/chatmail-quota-expire" in dovecot
    # No template spells a path of relaypaths out itself.
    literals = [relaypaths.BASE, *SOCKETS.values(), "chatmail-sasl", "dovecot-lmtp"]
    pattern = re.compile("|".join(re.escape(lit) + r"(?![\w-])" for lit in literals))
    templates = sorted(PACKAGE.glob("*/*.j2"))
    spelled = [(str(t.relative_to(PACKAGE)), line) for t in templates
               for line in t.read_text().splitlines() if pattern.search(line)]  # fmt: skip
    assert spelled == []


def test_in_postfix_queue_refuses_a_path_outside_it():
    assert relaypaths.in_postfix_queue("/var/spool/postfix/private/x") == "private/x"
    with pytest.raises(ValueError):
        relaypaths.in_postfix_queue("/run/x")
