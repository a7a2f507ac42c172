"""The relay's web page: markdown pages inside a Jinja layout, the invite QR code, ``webdev``.

``www/src`` holds ``*.md`` pages, ``page-layout.html`` and assets. A build renders each page
with values from the Config, wraps it in the layout, writes ``<stem>.html``, copies every
other file unchanged and draws ``qr-chatmail-invite-<domain>.png``.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import webbrowser
from pathlib import Path

import jinja2
import markdown
import qrcode
from chatmaild.config import Config, ConfigError, read_config
from markupsafe import Markup, escape
from PIL import Image, ImageDraw

REPO_WWW = Path(__file__).resolve().parents[3] / "www"
LAYOUT = "page-layout.html"
# Messages above this size expire after delete_large_after days (chatmail-expire).
LARGE_MESSAGE_BYTES = 200_000
# `dcaccount:<domain>` makes Delta Chat core pick the address and password itself: a
# 9-character local part and a 22-character password (core 2.65, real-clients.md §2.3).
CORE_LOCALPART_LENGTH = 9
CORE_PASSWORD_LENGTH = 22

_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
# "=======" alone is also a markdown heading underline, so only the outer markers count.
_CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ")


class WebsiteError(Exception):
    """The web page cannot be built or deployed; the message says why and what to do."""


class PrivacyContactError(ConfigError):
    """A public relay without the contacts its privacy page must name."""


def number_word(n: int) -> str:
    """English word for 0..12, digits for 13..50, "more" above (as the reference pages do)."""
    if 0 <= n < len(_WORDS):
        return _WORDS[n]
    if n <= 50:
        return str(n)
    return "more"


def is_test_domain(domain: str) -> bool:
    """Lab and test relays use underscore domains, which no public DNS name can have."""
    return domain.startswith("_")


def check_privacy(config: Config) -> None:
    """Raise PrivacyContactError when a public relay lacks privacy contacts.

    A privacy page must name who runs the relay (``privacy_postal``) and how to reach them
    (``privacy_mail``); ``cmdeploy run`` calls this before changing anything.
    """
    if is_test_domain(config.mail_domain):
        return
    missing = [key for key in ("privacy_mail", "privacy_postal") if not getattr(config, key)]
    where = config.config_path or "chatmail.ini"
    if missing:
        raise PrivacyContactError(
            f"{where}: set {' and '.join(missing)} so the privacy page of "
            f"{config.mail_domain} names who runs it and how to reach them "
            "(only test domains starting with '_' may leave them empty)"
        )
    if "@" not in config.privacy_mail:
        raise PrivacyContactError(
            f"{where}: privacy_mail = {config.privacy_mail!r} is not a mail address, "
            "set it to the address visitors should write to about their data"
        )


def invite_uri(config: Config) -> str:
    """The URI behind the join button and the QR code.

    Public relays: ``DCACCOUNT:https://<domain>/new``; the app POSTs there and gets a fresh
    address and password. Underscore (self-signed) relays: ``dcaccount:<domain>``, so the
    app invents the credentials and no HTTPS request is needed at all; core accepts the
    self-signed certificate of a ``_`` host for the logins that follow. That only works if
    the relay allows core's 9-character local parts and 22-character passwords; otherwise
    the ``/new`` form is used, which core also accepts over a self-signed ``_`` host.
    """
    domain = config.mail_domain
    if (
        config.tls_cert_mode == "self"
        and config.username_min_length <= CORE_LOCALPART_LENGTH <= config.username_max_length
        and config.password_min_length <= CORE_PASSWORD_LENGTH
    ):
        return f"dcaccount:{domain}"
    return f"DCACCOUNT:https://{domain}/new"


def qr_filename(config: Config) -> str:
    return f"qr-chatmail-invite-{config.mail_domain}.png"


@functools.cache
def _logo(size: int) -> Image.Image:
    """A speech bubble holding a delta, in the spirit of the Delta Chat logo."""
    scale = 8  # draw large, then shrink: Pillow has no anti-aliased shapes
    s = size * scale
    img = Image.new("RGBA", (s, s), "white")
    draw = ImageDraw.Draw(img)
    pad = s // 10
    draw.ellipse((pad, pad, s - pad, s - pad - s // 14), fill="black")
    # the bubble's tail, bottom left
    draw.polygon(
        [(s * 0.22, s * 0.68), (s * 0.12, s * 0.9), (s * 0.42, s * 0.8)],
        fill="black",
    )
    top, left, right, bottom = (s * 0.28, s * 0.3, s * 0.7, s * 0.64)
    draw.polygon([(s / 2, top), (left, bottom), (right, bottom)], fill="white")
    inset = s * 0.07
    draw.polygon(
        [
            (s / 2, top + inset * 1.9),
            (left + inset * 1.7, bottom - inset),
            (right - inset * 1.7, bottom - inset),
        ],
        fill="black",
    )
    return img.resize((size, size), Image.Resampling.LANCZOS)


def make_qr_png(uri: str, size: int = 384) -> bytes:
    """A scannable QR code PNG of ``uri`` with the logo in its centre.

    Error correction H survives the ~3 % of modules the logo covers; modules are scaled with
    nearest-neighbour so their edges stay sharp for cameras.
    """
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_H, box_size=1, border=1)
    qr.add_data(uri)
    qr.make(fit=True)
    code = qr.make_image(fill_color="black", back_color="white").get_image().convert("RGBA")
    # whole pixels per module: uneven module widths make cameras work harder
    module = (size - 2 * (size // 64)) // code.size[0]
    code = code.resize((module * code.size[0],) * 2, Image.Resampling.NEAREST)
    canvas = Image.new("RGBA", (size, size), "white")
    offset = (size - code.size[0]) // 2
    canvas.paste(code, (offset, offset))
    logo_size = size // 6
    offset = (size - logo_size) // 2
    canvas.paste(_logo(logo_size), (offset, offset))
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()


def size_text(n_bytes: int) -> str:
    """Bytes as a short text in binary units, as the config counts them: ``30 MiB``."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n_bytes >= factor:
            value = n_bytes / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n_bytes} bytes"


def _lines(text: str) -> Markup:
    """Multi-line ini values (a postal address) as HTML lines."""
    return Markup("<br>\n").join(escape(line.strip()) for line in str(text).splitlines())


def page_variables(config: Config) -> dict:
    """Everything the pages may use besides ``pagename``."""
    return {
        "config": config,
        "domain": config.mail_domain,
        "username_min_length": number_word(config.username_min_length),
        "username_max_length": number_word(config.username_max_length),
        "password_min_length": number_word(config.password_min_length),
        "max_message_size": size_text(config.max_message_size),
        "max_mailbox_size": size_text(config.max_mailbox_size),
        "large_message_size": f"{LARGE_MESSAGE_BYTES // 1000} kB",
        "invite_uri": invite_uri(config),
        "qr_image": qr_filename(config),
        "is_test_domain": is_test_domain(config.mail_domain),
    }


def _environment(src_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(src_dir),
        autoescape=True,
        # a misspelled variable must stop the build, not leave a gap on the page
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["lines"] = _lines
    return env


def _check_conflicts(path: Path) -> None:
    if path.suffix not in (".md", ".html", ".css"):
        return
    for number, line in enumerate(path.read_text("utf-8").splitlines(keepends=True), 1):
        if line.startswith(_CONFLICT_MARKERS):
            raise WebsiteError(f"{path}:{number}: merge conflict marker, resolve it first")


def render_page(env: jinja2.Environment, md_path: Path, variables: dict) -> str:
    """One markdown page as a full HTML document."""
    pagename = "home" if md_path.stem == "index" else md_path.stem
    values = {**variables, "pagename": pagename}
    # Jinja runs on the markdown source first, so pages can use variables and conditions
    # anywhere; config values are escaped once and never evaluated as templates.
    body_md = env.from_string(md_path.read_text("utf-8")).render(values)
    body = markdown.markdown(body_md, extensions=["extra", "sane_lists"], output_format="html")
    layout = env.get_template(LAYOUT)
    return layout.render({**values, "markdown_html": Markup(body)})


def build_webpage(
    config: Config, src_dir: Path, build_dir: Path, webdev_build_id: str | None = None
) -> Path:
    """Build ``src_dir`` into ``build_dir`` (replaced as a whole) and return ``build_dir``.

    ``webdev_build_id`` makes pages reload themselves when the dev server has a newer build.
    On any error the previous build stays untouched.
    """
    src_dir, build_dir = Path(src_dir), Path(build_dir)
    if not (src_dir / LAYOUT).is_file():
        raise WebsiteError(f"{src_dir} has no {LAYOUT}; is it a web page source folder?")
    env = _environment(src_dir)
    variables = {**page_variables(config), "webdev_build_id": webdev_build_id}
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=build_dir.parent))
    try:
        for path in sorted(src_dir.rglob("*")):
            rel = path.relative_to(src_dir)
            if path.is_dir() or any(part.startswith(".") for part in rel.parts):
                continue
            _check_conflicts(path)
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel == Path(LAYOUT):
                continue
            if path.suffix == ".md":
                try:
                    html = render_page(env, path, variables)
                except jinja2.TemplateError as e:
                    where = getattr(e, "filename", None) or path
                    line = getattr(e, "lineno", None)
                    raise WebsiteError(
                        f"{where}{f':{line}' if line else ''}: {type(e).__name__}: {e}"
                    ) from None
                target.with_suffix(".html").write_text(html, "utf-8")
            else:
                shutil.copyfile(path, target)
        (staging / qr_filename(config)).write_bytes(make_qr_png(invite_uri(config)))
        os.chmod(staging, 0o755)
        _swap_in(staging, build_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return build_dir


def _swap_in(new: Path, build_dir: Path) -> None:
    # Two renames keep the window in which a server finds no build to a few microseconds.
    old = None
    if build_dir.exists():
        old = build_dir.with_name(f".old-{build_dir.name}-{os.getpid()}-{time.monotonic_ns()}")
        build_dir.rename(old)
    new.rename(build_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def www_paths(config: Config) -> tuple[Path | None, Path] | None:
    """``(src, build)`` for the configured ``www_folder``, or None when the site is disabled.

    An empty ``www_folder`` means this repository's ``www/``. A folder with a ``src/`` is
    built into its ``build/``; a folder without one is a finished site used as it is
    (``src`` is None). A folder that does not exist (e.g. ``disabled``) turns the site off.
    """
    if not config.www_folder:
        folder = REPO_WWW
    else:
        folder = Path(config.www_folder).expanduser()
        if not folder.is_absolute() and config.config_path is not None:
            folder = Path(config.config_path).parent / folder
    if not folder.is_dir():
        return None
    if (folder / "src").is_dir():
        return folder / "src", folder / "build"
    return None, folder


def prepare_website(config: Config) -> Path | None:
    """The folder to upload for this config: freshly built, as provided, or None if disabled.

    The deployer calls this (after :func:`check_privacy`); build errors raise WebsiteError.
    """
    paths = www_paths(config)
    if paths is None:
        return None
    src_dir, build_dir = paths
    if src_dir is None:
        return build_dir
    return build_webpage(config, src_dir, build_dir)


# ---- webdev ---------------------------------------------------------------------------

VERSION_PATH = "/__webdev/version"


def _snapshot(paths: list[Path]) -> tuple:
    state = []
    for root in paths:
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for path in files:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            state.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(state)


class DevSite:
    """Rebuilds the page when a source file or the config changes."""

    def __init__(self, config_path: Path, src_dir: Path, build_dir: Path, log=None):
        self.config_path, self.src_dir, self.build_dir = config_path, src_dir, build_dir
        self.build_id = "none"
        # flushed, so the author sees each build at once even when stdout is a pipe
        self.log = log or functools.partial(print, flush=True)
        self._state: tuple | None = None

    def rebuild_if_changed(self) -> bool:
        """Build when anything changed since the last look; errors are reported, not raised."""
        state = _snapshot([self.src_dir, self.config_path])
        if state == self._state:
            return False
        self._state = state
        started = time.monotonic()
        build_id = str(time.time_ns())
        try:
            config = read_config(self.config_path)
            build_webpage(config, self.src_dir, self.build_dir, webdev_build_id=build_id)
        except (WebsiteError, ConfigError, OSError, UnicodeDecodeError) as e:
            # keep serving the last good build while the author fixes the source
            self.log(f"build failed: {e}")
            return False
        self.build_id = build_id
        self.log(f"built {self.build_dir} in {time.monotonic() - started:.2f}s")
        return True


def make_server(site: DevSite, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``site.build_dir`` that also answers the reload poll."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site.build_dir), **kwargs)

        def do_GET(self):
            if self.path.split("?")[0] == VERSION_PATH:
                body = site.build_id.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

        def end_headers(self):
            # the browser must fetch every rebuild, never a cached page
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def log_message(self, format, *args):
            pass

    return http.server.ThreadingHTTPServer((host, port), Handler)


def _can_show_browser() -> bool:
    # Without a desktop, webbrowser may start a text browser that takes over the terminal.
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def webdev_cmd(args) -> int:
    """Build, serve on localhost, rebuild on every change; pages reload themselves."""
    from cmdeploy.cli import fail, load_config

    config = load_config(args)
    if args.src:
        src_dir, build_dir = args.src, args.build or args.src.parent / "build"
    else:
        paths = www_paths(config)
        if paths is None or paths[0] is None:
            return fail(f"www_folder = {config.www_folder!r} has no src/ folder to build")
        src_dir, build_dir = paths[0], args.build or paths[1]

    site = DevSite(Path(args.config), Path(src_dir), Path(build_dir))
    site.rebuild_if_changed()
    try:
        server = make_server(site, args.host, args.port)
    except OSError as e:
        return fail(f"cannot listen on {args.host}:{args.port}: {e}; pick another --port")
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}/"
    print(f"serving {build_dir} at {url} (Ctrl-C stops)", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if not args.no_open and _can_show_browser():
        webbrowser.open(url)
    try:
        while True:
            time.sleep(0.2)
            site.rebuild_if_changed()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0


def register(subparsers) -> None:
    """Add the ``webdev`` subcommand."""
    p = subparsers.add_parser(
        "webdev",
        help="build the web page, serve it on localhost and rebuild it on every change",
        description="Build the web page, serve it on localhost and rebuild it within a "
        "second of any change to its sources or to chatmail.ini; open pages reload themselves.",
    )
    p.add_argument("--src", type=Path, help="page sources (default: from www_folder)")
    p.add_argument("--build", type=Path, help="output folder (default: build/ next to src)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port, 0 for any free one (default: %(default)s)"
    )
    p.add_argument("--no-open", action="store_true", help="do not open a browser")
    p.set_defaults(func=webdev_cmd)
