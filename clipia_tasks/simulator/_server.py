"""The HTTP layer: a loopback ``ThreadingHTTPServer`` in front of a :class:`Simulator`.

Built for many small calls from pooled clients: HTTP/1.1 keep-alive with an exact
``Content-Length`` on every answer, ``TCP_NODELAY``, one daemon thread per connection,
a deep accept backlog and no per-request logging. :meth:`SimulatorServer.stop` also
closes idle keep-alive connections, so a pooled client cannot keep talking to a stopped
server.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from ._simulator import Reply, Simulator

logger = logging.getLogger("clipia_tasks.simulator")

#: Seconds between background webhook checks.
TICK_INTERVAL_S = 0.2
#: Largest request body accepted.
MAX_BODY_BYTES = 16 * 1024 * 1024


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive handler threads wait for the client's next request; never join them.
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, *, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is normal under load; keep stderr quiet.
        logger.debug("simulator: error while serving %s", client_address, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClipiaSimulator/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: benchmarks make thousands of calls."""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._send(Reply.error(400, "invalid_request", str(exc)))
            return
        try:
            reply = self.server.simulator.handle(
                self.command, self.path, dict(self.headers.items()), body
            )
        except Exception:
            logger.exception("simulator: unexpected error answering %s", self.command)
            reply = Reply.error(500, "internal_error", "Simulator error.")
        self._send(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def do_HEAD(self) -> None:
        self._send(Reply.error(404, "not_found", "No such endpoint."), head=True)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if not raw_length:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            raise ValueError("Invalid Content-Length.") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise ValueError("Request body too large.")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ValueError("Invalid chunked body.") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("Request body too large.")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, reply: Reply, *, head: bool = False) -> None:
        try:
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if not head and reply.body:
                self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True


class SimulatorServer:
    """A :class:`Simulator` served over HTTP on loopback, in a daemon thread.

    The socket is bound at construction, so ``port`` and ``url`` are known at once
    (``port=0`` picks a free port)::

        with SimulatorServer() as server:
            httpx.get(f"{server.url}/_sim/health")
    """

    def __init__(
        self, simulator: Simulator | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = simulator if simulator is not None else Simulator()
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        self._httpd = server_class((host, port), self.simulator)
        self.port: int = int(self._httpd.server_address[1])
        shown = host
        if host in ("0.0.0.0", ""):
            shown = "127.0.0.1"
        elif host == "::":
            shown = "::1"
        if ":" in shown:
            shown = f"[{shown}]"
        self.url: str = f"http://{shown}:{self.port}"
        self.simulator.base_url = self.url
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"SimulatorServer(url={self.url!r})"

    def start(self) -> SimulatorServer:
        """Serve in background daemon threads; returns self."""
        if self._closed:
            raise RuntimeError("this SimulatorServer was stopped; create a new one")
        if self._threads:
            return self
        self._threads = [
            threading.Thread(
                target=self._httpd.serve_forever,
                # stop() waits up to one poll interval; tests start and stop many servers.
                kwargs={"poll_interval": 0.02},
                name=f"clipia-sim-http-{self.port}",
                daemon=True,
            ),
            threading.Thread(target=self._tick, name=f"clipia-sim-tick-{self.port}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and every open connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._threads:
            self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI), then stop."""
        if self._closed:
            raise RuntimeError("this SimulatorServer was stopped; create a new one")
        ticker = threading.Thread(target=self._tick, name="clipia-sim-tick", daemon=True)
        ticker.start()
        self._threads = [ticker]
        try:
            self._httpd.serve_forever(poll_interval=0.5)
        finally:
            self._threads = [ticker]  # shutdown() must not wait for a loop that has ended
            self._closed = True
            self._stop.set()
            self._httpd.server_close()
            self._httpd.close_connections()
            ticker.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_INTERVAL_S):
            try:
                self.simulator.tick()
            except Exception:
                logger.exception("simulator: webhook tick failed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's command-line options (also ``clipia-tasks simulator``'s)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port to bind (8787; 0 = any)")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accept only this key (repeatable); default: any clipia_live_/clipia_test_ key",
    )
    parser.add_argument(
        "--webhook-secret", default=None, help="sign and send webhooks with this secret"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m clipia_tasks.simulator``: serve the simulator until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m clipia_tasks.simulator",
        description="Offline stand-in for the Clipia queue API (loopback HTTP).",
    )
    add_arguments(parser)
    return serve(parser.parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Serve the simulator as :func:`add_arguments`' options say, until Ctrl-C."""
    simulator = Simulator(
        api_keys=set(args.api_keys) if args.api_keys else None,
        webhook_secret=args.webhook_secret,
    )
    try:
        server = SimulatorServer(simulator, host=args.host, port=args.port)
    except OSError as exc:
        print(f"clipia simulator: cannot listen on {args.host}:{args.port}: {exc}", flush=True)
        return 1
    print(f"Clipia simulator listening on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
