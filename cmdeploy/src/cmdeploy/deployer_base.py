"""The deployer base: each component installs, configures and activates itself.

``cmdeploy run`` runs every deployer's ``install`` (packages, users; needs no config), then
every ``configure`` (renders the component's templates beside its code), then every
``activate`` (validates the config and restarts a service only when one of its files
changed). Each stage is pyinfra operations, so a second run changes nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import jinja2
from chatmaild.config import Config
from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

from cmdeploy import relaypaths


class DeployError(Exception):
    """The deploy cannot go on; the message says what to fix."""


STAGES = ("install", "configure", "activate")


@dataclass(frozen=True)
class DeployOptions:
    """What ``cmdeploy run`` asked for and prepared on this machine. pyinfra_deploy.py fills
    it from the CHATMAIL_* environment (the only module that reads it); the defaults are
    those of a test that renders templates."""

    disable_mail: bool = False
    website_only: bool = False
    # The chatmaild wheel and its pip constraints, built by ``cmdeploy run``.
    wheel: Path | None = None
    constraints: Path | None = None
    # Written to /etc/chatmail-version.
    version: str = "unknown"
    # The stages to run, in STAGES order.
    stages: tuple[str, ...] = STAGES
    # Dovecot as dovecot.build.prepare decided: the patched version ("" = Debian's stock
    # packages), the folder of its .debs on this machine, or pending = a dry run before
    # the build.
    dovecot_version: str = ""
    dovecot_debs: Path | None = None
    dovecot_pending: bool = False


class Deployer:
    """One component of the relay; subclasses keep their templates in their own folder."""

    name = "component"
    # Folder that holds this component's templates (set by subclasses to Path(__file__).parent).
    templates: Path | None = None

    def __init__(self, config: Config, options: DeployOptions):
        self.config = config
        self.options = options
        self._changes: list = []
        self._paths: list[str] = []
        self._followed: list[Deployer] = []

    def follows(self, other: Deployer) -> None:
        """Restart this component's service whenever ``other`` changed too."""
        self._followed.append(other)

    # Stages; the default is to do nothing.

    def install(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def activate(self) -> None:
        pass

    # Helpers for subclasses.

    def render(self, template: str, **extra) -> str:
        """``template`` of this component with ``config``, ``paths`` (relaypaths) and ``extra``."""
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.templates)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
        return env.get_template(template).render(
            {"config": self.config, "paths": relaypaths, **extra}
        )

    def put_template(self, template: str, dest: str, mode: str = "644", user="root", group="root",
                     **extra):  # fmt: skip
        """Render ``template`` to ``dest``; a change marks this component for restart."""
        text = self.render(template, **extra)
        return self.put_text(text, dest, mode=mode, user=user, group=group)

    def put_text(self, text: str, dest: str, mode: str = "644", user="root", group="root"):
        op = files.put(
            name=f"{self.name}: {dest}",
            src=as_file(text),
            dest=dest,
            mode=mode,
            user=user,
            group=group,
        )
        self._changes.append(op)
        self._paths.append(dest)
        return op

    def track(self, op, path: str | None = None):
        """Count ``op`` (writing ``path``) among the changes that require a restart."""
        self._changes.append(op)
        if path:
            self._paths.append(path)
        return op

    def stale(self, service: str) -> bool:
        """Whether a file of this component is newer than the running ``service``: a file
        written by an earlier deploy that failed before it could restart the service."""
        if not self._paths:
            return False
        script = (
            f'start=$(date -d "$(systemctl show -P ActiveEnterTimestamp {service})" +%s'
            " 2>/dev/null || echo 0); for f in " + " ".join(self._paths) + "; do "
            '[ -e "$f" ] && [ "$(stat -c %Y "$f")" -gt "$start" ] && echo stale && break; done; true'
        )
        return host.get_fact(Command, script) == "stale"

    def changed(self) -> bool:
        """Whether any tracked operation changed something (callable for pyinfra ``_if``)."""
        return any(op.did_change() for op in self._changes) or any(
            other.changed() for other in self._followed
        )

    def stop_and_disable(self, service: str):
        """For ``--disable-mail``: installed and configured, but not running."""
        return systemd.service(name=f"{self.name}: stop and disable {service}", service=service,
                               running=False, enabled=False)  # fmt: skip

    def check_then_restart(self, service: str, check: str | None = None, enabled: bool = True):
        """Validate the config with ``check`` and restart ``service`` if a file changed;
        make sure it is running and enabled either way."""
        stale = self.stale(service)

        def needed() -> bool:
            return stale or self.changed()

        if check:
            server.shell(name=f"{self.name}: check config ({check})", commands=[check], _if=needed)
        systemd.service(
            name=f"{self.name}: restart {service}",
            service=service,
            running=True,
            restarted=True,
            enabled=enabled,
            daemon_reload=True,
            _if=needed,
        )
        systemd.service(
            name=f"{self.name}: {service} running",
            service=service,
            running=True,
            enabled=enabled,
        )


def as_file(text: str) -> io.BytesIO:
    """File-like content for ``files.put``."""
    return io.BytesIO(text.encode())
