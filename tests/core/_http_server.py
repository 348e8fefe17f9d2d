"""A tiny threaded HTTP server on 127.0.0.1 for download tests (never the real network).

Usage::

    with FileServer({"/w.pt": payload}) as server:
        url = server.url("/w.pt")
        ...
        assert server.requests == ["/w.pt"]

``truncate={"/w.pt": 100}`` announces the full ``Content-Length`` but sends only the
first 100 bytes and then closes the connection. ``broken={"/w.pt": "hangup"}`` closes
the connection without answering; ``"chunked_cut"`` sends half the file with chunked
transfer encoding and closes before the final chunk. Unknown paths answer 404.
:func:`closed_port_url` gives a URL on a port where nothing listens.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serve ``files`` (path -> bytes) on a random free port of 127.0.0.1."""

    def __init__(
        self,
        files: dict[str, bytes],
        truncate: dict[str, int] | None = None,
        broken: dict[str, str] | None = None,
    ):
        self.files = dict(files)
        self.truncate = dict(truncate or {})
        self.broken = dict(broken or {})
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                owner.requests.append(self.path)
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                failure = owner.broken.get(self.path)
                if failure == "hangup":
                    self.close_connection = True
                    return
                if failure == "chunked_cut":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = body[: len(body) // 2]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = owner.truncate.get(self.path)
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def closed_port_url(path: str = "/weights.pt") -> str:
    """A URL on 127.0.0.1 whose port was just freed, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
