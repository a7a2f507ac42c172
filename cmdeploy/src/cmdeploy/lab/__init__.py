"""The local lab: Debian 12 relay hosts as systemd-nspawn containers."""

from .errors import LabError
from .host import LabHost
from .lab import Lab

__all__ = ["Lab", "LabError", "LabHost"]
