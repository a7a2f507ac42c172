"""The one error type of the lab."""

from __future__ import annotations


class LabError(Exception):
    """A lab step failed; the message tells the operator what to do."""
