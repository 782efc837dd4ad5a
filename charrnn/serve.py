"""`charrnn serve`: the model in a web page (charrnn/web/, docs/WEB.md) over HTTP, standard
library only.

    charrnn serve                 # http://127.0.0.1:8000/ until Ctrl-C
    charrnn serve --port 0        # any free port; the address is printed

The page is static: it runs the model in JavaScript and fetches the shipped model by a
relative path (`../pretrained/tinyshakespeare.safetensors`), so this server only hands out
files, the same ones any static host of the repository or the installed package would.
"""

from __future__ import annotations

import argparse
import http.server
import posixpath
import sys
import urllib.parse

from charrnn.common.paths import PACKAGE

# The package's folders the page needs: the page itself and the shipped model. Nothing
# else of the package (its Python files) is served.
SERVED = ("web", "pretrained")
DEFAULT_PORT = 8000
PAGE = "/web/"


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """Files under charrnn/web/ and charrnn/pretrained/; `/` redirects to the page."""

    # ES modules must come as JavaScript whatever the system's mime.types says.
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".safetensors": "application/octet-stream"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(PACKAGE), **kwargs)

    def send_head(self):
        path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        if path in ("/", "."):
            self.send_response(http.HTTPStatus.FOUND)
            self.send_header("Location", PAGE)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path.lstrip("/").split("/")[0] not in SERVED:
            self.send_error(http.HTTPStatus.NOT_FOUND, f"only {PAGE} and the shipped model here")
            return None
        return super().send_head()

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")  # an edited page shows on reload
        super().end_headers()


class QuietPageHandler(PageHandler):
    """PageHandler without a stderr line per request (the tests' and the speed script's)."""

    def log_message(self, format, *args):
        pass


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, quiet: bool = False
                ) -> http.server.ThreadingHTTPServer:
    """A server of the page bound to (host, port); port 0 takes any free port."""
    return http.server.ThreadingHTTPServer((host, port), QuietPageHandler if quiet else PageHandler)


def page_url(server: http.server.ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}{PAGE}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="charrnn serve",
        description="Serve the model's web page (docs/WEB.md) and the shipped model.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)")
    args = parser.parse_args(argv)
    try:
        server = make_server(args.host, args.port)
    except OSError as exc:
        print(f"charrnn serve: error: cannot listen on {args.host}:{args.port} ({exc.strerror})",
              file=sys.stderr)
        sys.exit(2)
    print(f"serving the char-rnn page at {page_url(server)} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
