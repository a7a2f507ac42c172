"""``/shared/vendor/deltachat/appversions``: the shipped file and the schema core reads."""

from __future__ import annotations

import copy
import json

import pytest

from chatmaild.config import parse_config
from chatmaild.metadata import (
    APPVERSIONS_PATH,
    MetadataDict,
    MetadataStore,
    appversions_problem,
)

KEY = "shared/0123456789abcdef/vendor/vendor.dovecot/pvt/server/vendor/deltachat/appversions"
GOOD = {
    "clients": [
        {"clientId": "a", "sources": [
            {"sourceId": "s1", "versionInteger": 4294967295, "versionString": "9.9",
             "downloadUrl": "https://github.com/deltachat/x"},
            {"sourceId": "s2", "versionInteger": 0, "versionString": "0",
             "downloadUrl": "https://download.delta.chat/y"},
        ]},
        {"clientId": "b", "sources": [
            {"sourceId": "s1", "versionInteger": 7, "versionString": "7",
             "downloadUrl": "https://download.delta.chat/z"},
        ]},
    ]
}  # fmt: skip


def test_shipped_file_fits_the_schema():
    data = json.loads(APPVERSIONS_PATH.read_text("utf-8"))
    assert appversions_problem(data) is None


def test_good_example_fits():
    assert appversions_problem(GOOD) is None


def _broken(change):
    data = copy.deepcopy(GOOD)
    change(data)
    return data


def _src(data):
    return data["clients"][0]["sources"][0]


BROKEN = {
    "not an object": lambda d: d.clear() or d.update(x=1),
    "extra top key": lambda d: d.update(extra=1),
    "empty clients": lambda d: d.update(clients=[]),
    "clients not a list": lambda d: d.update(clients={}),
    "client extra key": lambda d: d["clients"][0].update(x=1),
    "client without sources": lambda d: d["clients"][0].pop("sources"),
    "empty clientId": lambda d: d["clients"][0].update(clientId=""),
    "clientId not a string": lambda d: d["clients"][0].update(clientId=5),
    "duplicate clientId": lambda d: d["clients"][1].update(clientId="a"),
    "empty sources": lambda d: d["clients"][0].update(sources=[]),
    "duplicate sourceId in a client": lambda d: d["clients"][0]["sources"][1].update(sourceId="s1"),
    "source missing a key": lambda d: _src(d).pop("versionString"),
    "source extra key": lambda d: _src(d).update(x=1),
    "version a bool": lambda d: _src(d).update(versionInteger=True),
    "version a float": lambda d: _src(d).update(versionInteger=1.0),
    "version a string": lambda d: _src(d).update(versionInteger="1"),
    "version negative": lambda d: _src(d).update(versionInteger=-1),
    "version above u32": lambda d: _src(d).update(versionInteger=2**32),
    "versionString not a string": lambda d: _src(d).update(versionString=1),
    "url elsewhere": lambda d: _src(d).update(downloadUrl="https://evil.example/deltachat/"),
    "url http": lambda d: _src(d).update(downloadUrl="http://github.com/deltachat/x"),
    "url lookalike host": lambda d: _src(d).update(downloadUrl="https://github.com/deltachatx/"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_schema_violations_are_found(name):
    assert appversions_problem(_broken(BROKEN[name])) is not None


def lookup(tmp_path, path):
    (tmp_path / "mailboxes").mkdir(exist_ok=True)
    config = parse_config(f"[params]\nmail_domain = x.org\nmailboxes_dir = {tmp_path}/mailboxes\n")
    return MetadataDict(config, MetadataStore(config), None, appversions_path=path).lookup(
        KEY, None
    )


def test_lookup_serves_compact_json_on_one_line(tmp_path):
    path = tmp_path / "appversions.json"
    path.write_text(json.dumps(GOOD, indent=4))
    value = lookup(tmp_path, path)
    assert "\n" not in value and ": " not in value and ", " not in value
    assert json.loads(value) == GOOD


def test_lookup_of_the_shipped_file(tmp_path):
    value = lookup(tmp_path, APPVERSIONS_PATH)
    assert json.loads(value) == json.loads(APPVERSIONS_PATH.read_text())
    assert "\n" not in value


@pytest.mark.parametrize("content", [None, "", "{not json", json.dumps({"clients": []}),
                                     json.dumps(_broken(BROKEN["version a bool"]))])  # fmt: skip
def test_missing_or_invalid_file_gives_no_value(tmp_path, content):
    path = tmp_path / "appversions.json"
    if content is not None:
        path.write_text(content)
    assert lookup(tmp_path, path) is None
