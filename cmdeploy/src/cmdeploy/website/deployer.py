"""The relay's web page: built locally from www/ and uploaded to /var/www/html."""

from __future__ import annotations

from pyinfra.operations import files

from cmdeploy.deployer_base import Deployer
from cmdeploy.website.build import prepare_website


class WebsiteDeployer(Deployer):
    name = "website"

    def configure(self) -> None:
        build = prepare_website(self.config)
        if build is None:
            return  # www_folder names a folder that does not exist: the operator's choice
        files.sync(
            name="website: upload pages",
            src=str(build),
            dest="/var/www/html",
            # Files written on the server (autoconfig, MTA-STS, metrics) stay.
            delete=False,
        )
