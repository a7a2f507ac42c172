"""What pyinfra executes for ``cmdeploy run`` (``pyinfra HOST pyinfra_deploy.py``).

Settings arrive in environment variables set by ``cmdeploy run``: CHATMAIL_INI,
CHATMAIL_WHEEL, CHATMAIL_CONSTRAINTS, CHATMAIL_VERSION, CHATMAIL_DISABLE_MAIL,
CHATMAIL_WEBSITE_ONLY and optionally CHATMAIL_STAGES (e.g. "install,configure").
"""

from __future__ import annotations

import os

from chatmaild.config import read_config
from pyinfra.operations import files

from cmdeploy.deployer_base import DeployOptions, as_file
from cmdeploy.dovecot.deployer import DovecotDeployer
from cmdeploy.mtail.deployer import MtailDeployer
from cmdeploy.nginx.deployer import NginxDeployer
from cmdeploy.opendkim.deployer import OpenDKIMDeployer
from cmdeploy.postfix.deployer import PostfixDeployer
from cmdeploy.services.deployer import EchobotDeployer, ServicesDeployer
from cmdeploy.system.deployer import SystemDeployer
from cmdeploy.tls.deployer import TLSDeployer
from cmdeploy.turn.deployer import TurnDeployer
from cmdeploy.unbound.deployer import UnboundDeployer
from cmdeploy.website.deployer import WebsiteDeployer

STAGES = ("install", "configure", "activate")

# Order matters for activation: resolver and certificate first, chatmaild's sockets before
# Dovecot, OpenDKIM and Dovecot (auth socket) before Postfix.
COMPONENTS = [
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


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")


def deploy() -> None:
    config = read_config(os.environ["CHATMAIL_INI"])
    options = DeployOptions(
        disable_mail=_flag("CHATMAIL_DISABLE_MAIL"),
        website_only=_flag("CHATMAIL_WEBSITE_ONLY"),
    )
    components = [WebsiteDeployer] if options.website_only else COMPONENTS
    deployers = [cls(config, options) for cls in components]
    by_type = {type(d): d for d in deployers}
    if EchobotDeployer in by_type:
        # The bot runs the chatmaild code: a new install restarts it too.
        by_type[EchobotDeployer].follows(by_type[ServicesDeployer])
    stages = os.environ.get("CHATMAIL_STAGES", ",".join(STAGES)).split(",")
    for stage in STAGES:
        if stage in stages:
            for deployer in deployers:
                getattr(deployer, stage)()
    if not options.website_only and "configure" in stages:
        files.put(
            name="version stamp /etc/chatmail-version",
            src=as_file(os.environ.get("CHATMAIL_VERSION", "unknown") + "\n"),
            dest="/etc/chatmail-version",
        )


deploy()
