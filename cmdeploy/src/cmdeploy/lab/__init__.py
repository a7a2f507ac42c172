"""The local lab: Debian 12 relay hosts as systemd-nspawn containers."""

from .host import LabHost
from .lab import Lab
from .util import LabError

__all__ = ["Lab", "LabError", "LabHost"]
