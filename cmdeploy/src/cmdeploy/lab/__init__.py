"""The local lab: Debian 12 relay hosts as systemd-nspawn containers."""
