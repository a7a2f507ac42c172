"""Helpers of the lab relay kit that need no containers."""

from __future__ import annotations

from cmdeploy.lab.relay import LabRelay, repoint_zone


class ZoneRecorder:
    def __init__(self):
        self.zones: dict[str, str] = {}

    def load_zone(self, domain: str, text: str) -> None:
        self.zones[domain] = text


def test_repoint_zone_moves_every_address_record_and_keeps_the_rest(tmp_path):
    relay = LabRelay(name="relay1", domain="relay1.lab", ip="10.77.0.11", workdir=tmp_path)
    (tmp_path / "zone.txt").write_text(
        "; Required A 10.77.0.11\n"
        "relay1.lab.                              3600 IN A      10.77.0.11\n"
        "www.relay1.lab. IN A 10.77.0.11\n"
        "relay1.lab.                              3600 IN MX     10 relay1.lab.\n"
        'relay1.lab.                              3600 IN TXT    "v=spf1 a ~all"\n'
    )
    lab = ZoneRecorder()
    repoint_zone(lab, relay, "10.77.0.13")
    assert lab.zones["relay1.lab"].splitlines() == [
        "; Required A 10.77.0.11",
        "relay1.lab.                              3600 IN A      10.77.0.13",
        "www.relay1.lab. IN A 10.77.0.13",
        "relay1.lab.                              3600 IN MX     10 relay1.lab.",
        'relay1.lab.                              3600 IN TXT    "v=spf1 a ~all"',
    ]
