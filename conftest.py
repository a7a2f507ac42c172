"""Registers the test kit's fixtures for every test tree (chatmaild, cmdeploy, the lab)."""

pytest_plugins = ["chatmaild.testkit.plugin"]
