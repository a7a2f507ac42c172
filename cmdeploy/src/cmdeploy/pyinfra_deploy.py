"""What pyinfra executes for ``cmdeploy run`` (``pyinfra HOST pyinfra_deploy.py``).

``cmdeploy run`` (cmd_run.py) hands its inputs over in CHATMAIL_* environment variables;
this is the only module that reads them (:func:`options_from_env`), and the deployers get
them as a :class:`DeployOptions`. Importing the module runs nothing, so tests can check
the component order (:func:`deployers`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from chatmaild.config import Config, read_config
from pyinfra import state
from pyinfra.context import ctx_state
from pyinfra.operations import files

from cmdeploy.deployer_base import STAGES, Deployer, DeployError, DeployOptions, as_file
from cmdeploy.dovecot.deployer import DovecotDeployer
from cmdeploy.echobot.deployer import EchobotDeployer
from cmdeploy.mtail.deployer import MtailDeployer
from cmdeploy.nginx.deployer import NginxDeployer
from cmdeploy.opendkim.deployer import OpenDKIMDeployer
from cmdeploy.postfix.deployer import PostfixDeployer
from cmdeploy.services.deployer import ServicesDeployer
from cmdeploy.system.deployer import SystemDeployer
from cmdeploy.tls.deployer import TLSDeployer
from cmdeploy.turn.deployer import TurnDeployer
from cmdeploy.unbound.deployer import UnboundDeployer
from cmdeploy.website.deployer import WebsiteDeployer

# Order matters for activation: resolver and certificate first, chatmaild's sockets before
# Dovecot, OpenDKIM and Dovecot (auth socket) before Postfix, the echobot after the
# Postfix and Dovecot it logs in to.
COMPONENTS: list[type[Deployer]] = [
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


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "") not in ("", "0", "false")


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "")
    return Path(value) if value else None


def options_from_env(env: Mapping[str, str]) -> DeployOptions:
    """The options ``cmdeploy run`` set: CHATMAIL_DISABLE_MAIL, CHATMAIL_WEBSITE_ONLY,
    CHATMAIL_WHEEL, CHATMAIL_CONSTRAINTS, CHATMAIL_VERSION, CHATMAIL_STAGES (e.g.
    "install,configure"; all stages if unset) and the CHATMAIL_DOVECOT_* of
    ``dovecot.build.Plan.env``."""
    wanted = env.get("CHATMAIL_STAGES", ",".join(STAGES)).split(",")
    return DeployOptions(
        disable_mail=_flag(env, "CHATMAIL_DISABLE_MAIL"),
        website_only=_flag(env, "CHATMAIL_WEBSITE_ONLY"),
        wheel=_path(env, "CHATMAIL_WHEEL"),
        constraints=_path(env, "CHATMAIL_CONSTRAINTS"),
        version=env.get("CHATMAIL_VERSION", "unknown"),
        stages=tuple(stage for stage in STAGES if stage in wanted),
        dovecot_version=env.get("CHATMAIL_DOVECOT_VERSION", ""),
        dovecot_debs=_path(env, "CHATMAIL_DOVECOT_DEBS"),
        dovecot_pending=bool(env.get("CHATMAIL_DOVECOT_PENDING")),
    )


def deployers(config: Config, options: DeployOptions) -> list[Deployer]:
    """The components this run deploys, in the order their stages run."""
    components = [WebsiteDeployer] if options.website_only else COMPONENTS
    result = [cls(config, options) for cls in components]
    by_type = {type(d): d for d in result}
    if EchobotDeployer in by_type:
        # The bot runs the chatmaild code: a new install restarts it too.
        by_type[EchobotDeployer].follows(by_type[ServicesDeployer])
    return result


def deploy(env: Mapping[str, str]) -> None:
    """Every stage of every component, as pyinfra operations."""
    if not env.get("CHATMAIL_INI"):
        raise DeployError("CHATMAIL_INI is not set: deploy with 'cmdeploy run'")
    config = read_config(env["CHATMAIL_INI"])
    options = options_from_env(env)
    components = deployers(config, options)
    for stage in options.stages:
        for deployer in components:
            getattr(deployer, stage)()
    if not options.website_only and "configure" in options.stages:
        files.put(
            name="version stamp /etc/chatmail-version",
            src=as_file(options.version + "\n"),
            dest="/etc/chatmail-version",
        )


def run_by_pyinfra(filename: str) -> bool:
    """Whether pyinfra is executing ``filename`` as its deploy file. pyinfra 3 does not
    import a deploy file: it runs the file's code with exec() (pyinfra_cli.util.exec_file,
    globals without ``__name__``) and names it in ``state.current_exec_filename`` meanwhile.
    An import (a test's) has no pyinfra state."""
    return ctx_state.isset() and state.current_exec_filename == filename


if run_by_pyinfra(__file__):
    deploy(os.environ)
