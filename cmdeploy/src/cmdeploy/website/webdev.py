"""``cmdeploy webdev``: build the page, serve it on localhost, rebuild on every change."""

from __future__ import annotations

import functools
import http.server
import os
import sys
import threading
import time
import webbrowser
from pathlib import Path

from chatmaild.config import ConfigError, read_config

from cmdeploy.cmdline import fail, load_config
from cmdeploy.website.build import WebsiteError, build_webpage, www_paths

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
