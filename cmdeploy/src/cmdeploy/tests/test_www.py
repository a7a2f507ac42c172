"""The web page builder: pages, config values, the invite QR code, privacy contacts."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from chatmaild.config import ConfigError
from chatmaild.testkit.config import init_config
from PIL import Image

from cmdeploy.tests.www_browser import ZBARIMG, decode_qr
from cmdeploy.website.build import (
    REPO_WWW,
    WebsiteError,
    build_webpage,
    number_word,
    prepare_website,
    www_paths,
)
from cmdeploy.website.privacy import PrivacyContactError, check_privacy
from cmdeploy.website.qr import invite_uri

CONTACTS = {
    "privacy_mail": "privacy@example.org",
    "privacy_postal": "Example Relay e.V.\n  Hauptstraße 1\n  12345 Musterstadt",
}


@pytest.fixture
def src(tmp_path) -> Path:
    """A private copy of the real page sources, so tests may change them."""
    return Path(shutil.copytree(REPO_WWW / "src", tmp_path / "src"))


def build(src: Path, config, **kwargs) -> Path:
    return build_webpage(config, src, src.parent / "build", **kwargs)


def text_of(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


@pytest.mark.parametrize(
    ("n", "word"),
    [(0, "zero"), (1, "one"), (9, "nine"), (12, "twelve"), (13, "13"), (50, "50"), (51, "more")],
)
def test_number_word_follows_reference_pages(n, word):
    assert number_word(n) == word


def test_build_writes_pages_assets_and_qr_but_not_the_layout(src):
    config = init_config(**CONTACTS)
    out = build(src, config)
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "info.html", "privacy.html", "main.css", "logo.svg"} <= names
    assert "qr-chatmail-invite-chat.example.org.png" in names
    assert "page-layout.html" not in names
    assert not any(name.endswith(".md") for name in names)
    assert (out / "main.css").read_bytes() == (src / "main.css").read_bytes()
    index = (out / "index.html").read_text()
    assert "<title>chat.example.org · home</title>" in index
    assert '<html lang="en">' in index
    assert 'name="viewport"' in index


def test_robots_txt_keeps_search_engines_out(src):
    robots = (build(src, init_config()) / "robots.txt").read_text()
    assert "User-agent: *" in robots
    assert "Disallow: /" in robots


def test_limits_from_config_appear_on_info_page(src):
    config = init_config(
        max_message_size="10M",
        max_mailbox_size="1G",
        max_user_send_per_minute=30,
        max_user_send_burst_size=5,
        delete_mails_after=14,
        delete_large_after=3,
        delete_inactive_users_after=60,
    )
    info = text_of((build(src, config) / "info.html").read_text())
    assert "Largest message, attachments included 10 MiB" in info
    assert "Storage per address 1 GiB" in info
    assert "30 messages per minute on average, up to 5 at once" in info
    assert "Messages kept on the relay 14 days at most" in info
    assert "Messages larger than 200 kB 3 days at most" in info
    assert "removed 60 days after their last login" in info


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ({}, "exactly nine characters before the @"),
        ({"username_min_length": 13, "username_max_length": 20}, "13 to 20 characters before"),
        ({"username_min_length": 6, "username_max_length": 60}, "at least six characters before"),
        ({"username_max_length": 12}, "nine to twelve characters before"),
    ],
)
def test_username_lengths_are_written_as_words(src, lengths, expected):
    info = text_of((build(src, init_config(**lengths)) / "info.html").read_text())
    assert expected in info


def test_password_length_is_written_as_a_word(src):
    info = text_of((build(src, init_config(password_min_length=12)) / "info.html").read_text())
    assert "passwords need at least twelve characters" in info


def test_privacy_page_names_the_operator_contacts(src):
    config = init_config(
        **CONTACTS,
        privacy_pdo="Dr. Data <pdo@example.org>",
        privacy_supervisor="Landesbeauftragte für Datenschutz",
    )
    privacy = (build(src, config) / "privacy.html").read_text()
    assert "Example Relay e.V.<br>\nHauptstraße 1<br>\n12345 Musterstadt" in privacy
    assert '<a href="mailto:privacy@example.org">privacy@example.org</a>' in privacy
    # config text is shown, never interpreted as HTML
    assert "Dr. Data &lt;pdo@example.org&gt;" in privacy
    assert "Landesbeauftragte für Datenschutz" in privacy
    assert "has not published contact details" not in privacy


def test_privacy_page_of_test_relay_without_contacts_says_so(src):
    privacy = text_of((build(src, init_config("_relay1.lab")) / "privacy.html").read_text())
    assert "operator has not published contact details" in privacy
    assert "supervisory authority:" not in privacy


def test_check_privacy_stops_public_relay_without_contacts(tmp_path):
    ini = tmp_path / "chatmail.ini"
    with pytest.raises(PrivacyContactError) as e:
        check_privacy(init_config(path=ini))
    message = str(e.value)
    assert str(ini) in message
    assert "privacy_mail and privacy_postal" in message
    assert "chat.example.org" in message
    assert isinstance(e.value, ConfigError)


def test_check_privacy_names_the_one_missing_contact():
    with pytest.raises(PrivacyContactError, match=r"set privacy_postal so"):
        check_privacy(init_config(privacy_mail="privacy@example.org"))


def test_check_privacy_refuses_a_privacy_mail_that_is_no_address():
    with pytest.raises(PrivacyContactError, match="is not a mail address"):
        check_privacy(init_config(**{**CONTACTS, "privacy_mail": "call us"}))


def test_check_privacy_accepts_complete_contacts_and_test_domains():
    assert check_privacy(init_config(**CONTACTS)) is None
    assert check_privacy(init_config("_relay1.lab")) is None


@pytest.mark.skipif(ZBARIMG is None, reason="needs zbarimg (Debian package zbar-tools)")
def test_qr_code_scans_as_the_account_link_with_logo_in_the_middle(src):
    out = build(src, init_config(**CONTACTS))
    png = out / "qr-chatmail-invite-chat.example.org.png"
    assert decode_qr(png) == ["DCACCOUNT:https://chat.example.org/new"]
    image = Image.open(png).convert("RGB")
    assert image.size == (384, 384)
    # the logo's dark bubble sits where the code's centre would be
    centre = image.crop((160, 160, 224, 224))
    assert centre.getpixel((32, 10)) != (255, 255, 255)
    index = (out / "index.html").read_text()
    assert index.count('href="DCACCOUNT:https://chat.example.org/new"') == 2
    assert "Test relay" not in index


@pytest.mark.skipif(ZBARIMG is None, reason="needs zbarimg (Debian package zbar-tools)")
def test_underscore_relay_invites_with_plain_domain_so_the_app_picks_credentials(src):
    out = build(src, init_config("_relay1.lab"))
    assert decode_qr(out / "qr-chatmail-invite-_relay1.lab.png") == ["dcaccount:_relay1.lab"]
    index = (out / "index.html").read_text()
    assert 'href="dcaccount:_relay1.lab"' in index
    assert "certificate is self-signed" in index


def test_underscore_relay_falls_back_to_new_when_app_credentials_would_be_refused():
    # the app's own local parts have 9 characters; a relay demanding 12 must hand them out
    config = init_config("_relay1.lab", username_min_length=12, username_max_length=12)
    assert invite_uri(config) == "DCACCOUNT:https://_relay1.lab/new"
    config = init_config("_relay1.lab", password_min_length=30)
    assert invite_uri(config) == "DCACCOUNT:https://_relay1.lab/new"


def test_jinja_works_inside_markdown_pages(src):
    (src / "extra.md").write_text(
        "# Extra\n\n{% if config.max_user_send_per_minute > 50 %}*busy* {{ domain }}{% endif %}\n"
    )
    html = (build(src, init_config()) / "extra.html").read_text()
    assert "<em>busy</em> chat.example.org" in html
    assert "<title>chat.example.org · extra</title>" in html


def test_misspelled_variable_stops_build_naming_file_and_line(src):
    good = build(src, init_config())
    before = (good / "index.html").read_text()
    (src / "info.md").write_text("# Info\n\nsize {{ max_mesage_size }}\n")
    with pytest.raises(WebsiteError, match=r"info\.md.*max_mesage_size"):
        build(src, init_config())
    # the last good build is still there for the web server
    assert (good / "index.html").read_text() == before


def test_merge_conflict_marker_stops_the_build(src):
    css = src / "main.css"
    css.write_text(css.read_text() + "<<<<<<< HEAD\nbody {}\n=======\n>>>>>>> other\n")
    with pytest.raises(WebsiteError, match=r"main\.css:\d+: merge conflict marker"):
        build(src, init_config())


def test_setext_heading_is_not_mistaken_for_a_conflict_marker(src):
    (src / "extra.md").write_text("Extra page\n=======\n\ntext\n")
    assert "<h1>Extra page</h1>" in (build(src, init_config()) / "extra.html").read_text()


def test_only_webdev_builds_carry_the_reload_script(src):
    plain = (build(src, init_config()) / "index.html").read_text()
    assert "__webdev" not in plain
    dev = (build(src, init_config(), webdev_build_id="42") / "index.html").read_text()
    assert 'data-webdev-build="42"' in dev
    assert "/__webdev/version" in dev


def test_www_folder_selects_sources_prebuilt_site_or_nothing(tmp_path):
    ini = tmp_path / "chatmail.ini"
    assert www_paths(init_config()) == (REPO_WWW / "src", REPO_WWW / "build")
    (tmp_path / "own" / "src").mkdir(parents=True)
    assert www_paths(init_config(path=ini, www_folder="own")) == (
        tmp_path / "own" / "src",
        tmp_path / "own" / "build",
    )
    (tmp_path / "static").mkdir()
    assert www_paths(init_config(www_folder=str(tmp_path / "static"))) == (
        None,
        tmp_path / "static",
    )
    assert www_paths(init_config(path=ini, www_folder="disabled")) is None


def test_prepare_website_builds_the_configured_sources(tmp_path):
    own = tmp_path / "own"
    shutil.copytree(REPO_WWW / "src", own / "src")
    built = prepare_website(init_config(www_folder=str(own)))
    assert built == own / "build"
    assert (built / "index.html").is_file()
    assert prepare_website(init_config(www_folder=str(tmp_path / "disabled"))) is None
