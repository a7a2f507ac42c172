"""The built pages in headless Chromium: no errors, working links, readable on a phone.

Screenshots land in test-artifacts/www/ for a human to look at.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
from chatmaild.config import parse_config
from PIL import Image

from cmdeploy.tests.www_browser import (
    ARTIFACTS,
    CHROMIUM,
    ZBARIMG,
    Chromium,
    StaticServer,
    decode_qr,
)
from cmdeploy.website.build import REPO_WWW, build_webpage

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or ZBARIMG is None,
    reason="needs the Debian packages chromium and zbar-tools (scripts/test-packages.txt)",
)

PAGES = ["index", "info", "privacy"]
# name -> (width, height, mobile, device pixel ratio)
VIEWPORTS = {
    "desktop": (1280, 800, False, 1),
    "phone": (390, 844, True, 2),
    "small-phone": (320, 640, True, 2),
}
INVITE = "DCACCOUNT:https://chat.example.org/new"

CONFIG = """\
[params]
mail_domain = chat.example.org
privacy_mail = privacy@example.org
privacy_postal = Example Relay e.V.
    Hauptstraße 1
    12345 Musterstadt
privacy_supervisor = Die Landesbeauftragte für den Datenschutz
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    build = tmp_path_factory.mktemp("www") / "build"
    build_webpage(parse_config(CONFIG), REPO_WWW / "src", build)
    server = StaticServer(build)
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Chromium(tmp_path_factory.mktemp("chromium"))
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser):
    tab = browser.new_page()
    yield tab
    tab.close()


def open_page(page, url: str, viewport: str = "desktop", scheme: str = "light"):
    width, height, mobile, scale = VIEWPORTS[viewport]
    page.set_viewport(width, height, mobile, scale)
    page.send(
        "Emulation.setEmulatedMedia",
        features=[{"name": "prefers-color-scheme", "value": scheme}],
    )
    page.navigate(url)
    # pages are done only when their images are, the QR code included
    page.evaluate(
        "Promise.all([...document.images].map(i => i.complete ? 0 :"
        " new Promise(r => { i.onload = i.onerror = r; })))"
    )


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
@pytest.mark.parametrize("name", PAGES)
def test_page_loads_cleanly_and_fits_the_screen(site, page, name, viewport):
    open_page(page, f"{site.url}{name}.html", viewport)
    assert page.errors == []
    assert page.evaluate("document.title").startswith("chat.example.org · ")
    assert page.evaluate("document.querySelector('h1').innerText")
    # nothing sticks out sideways, so no horizontal scrolling on a phone
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    images = page.evaluate(
        "[...document.images].map(i => ({src: i.src, alt: i.getAttribute('alt'),"
        " loaded: i.complete && i.naturalWidth > 0}))"
    )
    assert images, "every page shows at least the logo"
    for image in images:
        assert image["loaded"], image
        assert image["alt"] is not None, f"{image['src']} needs an alt text (empty if decorative)"
    shot = page.screenshot(ARTIFACTS / f"{name}-{viewport}.png")
    width, _, _, scale = VIEWPORTS[viewport]
    assert Image.open(shot).size[0] == width * scale


def test_dark_colour_scheme_loads_cleanly(site, page):
    open_page(page, f"{site.url}index.html", "phone", scheme="dark")
    assert page.errors == []
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != "rgb(251, 251, 249)", "the dark scheme must change the colours"
    page.screenshot(ARTIFACTS / "index-phone-dark.png")


def test_links_between_pages_lead_to_existing_pages(site, page):
    seen = set()
    for name in PAGES:
        open_page(page, f"{site.url}{name}.html")
        hrefs = page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)")
        internal = {h.split("#")[0] for h in hrefs if h.startswith(site.url)}
        assert {f"{site.url}{p}.html" for p in PAGES} <= internal, f"{name} must link every page"
        for url in internal - seen:
            status = page.evaluate(f"fetch({json.dumps(url)}).then(r => r.status)")
            assert status == 200, url
        seen |= internal
        for anchor in {h.split("#")[1] for h in hrefs if "#" in h}:
            assert page.evaluate(f"!!document.getElementById({json.dumps(anchor)})"), anchor
    assert page.errors == []


@pytest.mark.parametrize(("link", "target"), [("info.html", "info"), ("privacy.html", "privacy")])
def test_clicking_the_menu_opens_the_page(site, page, link, target):
    open_page(page, f"{site.url}index.html", "phone")
    page.evaluate(f"document.querySelector('nav a[href=\"{link}\"]').click()")
    page.wait_event("Page.loadEventFired")
    assert page.evaluate("location.pathname") == f"/{link}"
    assert page.evaluate("document.title") == f"chat.example.org · {target}"
    current = page.evaluate("document.querySelector('nav a[aria-current=page]').textContent")
    assert current in ("How it works", "Privacy")
    assert page.errors == []


def test_qr_code_on_page_scans_as_the_join_button_link(site, page, tmp_path):
    open_page(page, f"{site.url}index.html", "phone")
    button = page.evaluate("document.querySelector('a.button').getAttribute('href')")
    assert button == INVITE
    src = page.evaluate("document.querySelector('img.qr').src")
    png = tmp_path / "qr.png"
    with urllib.request.urlopen(src, timeout=10) as r:
        png.write_bytes(r.read())
    assert decode_qr(png) == [INVITE]
    # and as a visitor's camera would see it: from the rendered page
    shot = page.screenshot(tmp_path / "index-phone.png")
    assert INVITE in decode_qr(shot)


def contrast_failures(page) -> list:
    """Text whose contrast to its background is below WCAG AA (4.5:1) on the current page."""
    return page.evaluate(
        """(() => {
        const rgb = s => s.match(/[\\d.]+/g).map(Number);
        const lum = c => {
          const [r, g, b] = c.slice(0, 3).map(v => {
            v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
          return 0.2126 * r + 0.7152 * g + 0.0722 * b;
        };
        const background = el => {
          for (; el; el = el.parentElement) {
            const c = rgb(getComputedStyle(el).backgroundColor);
            if (c.length < 4 || c[3] > 0) return c;
          }
          return [255, 255, 255];
        };
        const failures = [];
        for (const el of document.body.querySelectorAll('*')) {
          const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
          if (!own || !el.getClientRects().length) continue;
          const fg = lum(rgb(getComputedStyle(el).color)), bg = lum(background(el));
          const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
          if (ratio < 4.5) failures.push([el.tagName, el.textContent.trim().slice(0, 40), ratio]);
        }
        return failures;
        })()"""
    )


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("name", PAGES)
def test_all_text_has_enough_contrast(site, page, name, scheme):
    open_page(page, f"{site.url}{name}.html", scheme=scheme)
    assert contrast_failures(page) == []


def test_keyboard_users_can_skip_straight_to_the_content(site, page):
    open_page(page, f"{site.url}info.html")
    for kind in ("rawKeyDown", "keyUp"):
        page.send(
            "Input.dispatchKeyEvent", type=kind, key="Tab", code="Tab", windowsVirtualKeyCode=9
        )
    focused = page.evaluate("document.activeElement.getAttribute('href')")
    assert focused == "#content"
    # the skip link becomes visible when focused
    top = page.evaluate("document.activeElement.getBoundingClientRect().top")
    assert top >= 0


def test_privacy_page_shows_contacts_as_written_in_config(site, page):
    open_page(page, f"{site.url}privacy.html", "phone")
    address = page.evaluate("document.querySelector('main address').innerText")
    assert address.splitlines()[:3] == ["Example Relay e.V.", "Hauptstraße 1", "12345 Musterstadt"]
    mail = page.evaluate("document.querySelector('main address a').href")
    assert urllib.parse.unquote(mail) == "mailto:privacy@example.org"
    assert "Die Landesbeauftragte für den Datenschutz" in page.evaluate("document.body.innerText")


def test_test_relay_page_offers_the_plain_domain_invite(tmp_path, page):
    build = build_webpage(
        parse_config("[params]\nmail_domain = _relay1.lab\n"), REPO_WWW / "src", tmp_path / "b"
    )
    server = StaticServer(build)
    try:
        open_page(page, f"{server.url}index.html", "phone")
        assert page.errors == []
        assert page.evaluate("document.querySelector('a.button').getAttribute('href')") == (
            "dcaccount:_relay1.lab"
        )
        assert "certificate is self-signed" in page.evaluate("document.body.innerText")
        shot = page.screenshot(ARTIFACTS / "index-phone-test-relay.png")
        assert "dcaccount:_relay1.lab" in decode_qr(shot)
        open_page(page, f"{server.url}privacy.html", "phone")
        assert "has not published contact details" in page.evaluate("document.body.innerText")
        assert page.errors == []
    finally:
        server.close()
