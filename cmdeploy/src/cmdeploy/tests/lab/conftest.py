"""The lab fixtures, shared with the deploy and online tests that run in the lab."""

from cmdeploy.lab.fixtures import lab  # noqa: F401
