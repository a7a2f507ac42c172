"""The web page build: markdown pages inside a Jinja layout, plus the invite QR code.

``www/src`` holds ``*.md`` pages, ``page-layout.html`` and assets. A build renders each page
with values from the Config, wraps it in the layout, writes ``<stem>.html``, copies every
other file unchanged and draws ``qr-chatmail-invite-<domain>.png`` (:mod:`.qr`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import jinja2
import markdown
from chatmaild.config import Config
from markupsafe import Markup, escape

from cmdeploy.website.privacy import is_test_domain
from cmdeploy.website.qr import invite_uri, make_qr_png, qr_filename

REPO_WWW = Path(__file__).resolve().parents[4] / "www"
LAYOUT = "page-layout.html"
# Messages above this size expire after delete_large_after days (chatmail-expire).
LARGE_MESSAGE_BYTES = 200_000

_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
# "=======" alone is also a markdown heading underline, so only the outer markers count.
_CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ")


class WebsiteError(Exception):
    """The web page cannot be built or deployed; the message says why and what to do."""


def number_word(n: int) -> str:
    """English word for 0..12, digits for 13..50, "more" above (as the reference pages do)."""
    if 0 <= n < len(_WORDS):
        return _WORDS[n]
    if n <= 50:
        return str(n)
    return "more"


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
