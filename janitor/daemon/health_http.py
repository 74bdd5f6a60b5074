"""A tiny HTTP endpoint for supervisors: `/metrics` for Prometheus and `/healthz` for liveness.

It runs on a daemon thread beside the reconcile loop and only reads: the metrics registry and a
`health()` callable. What counts as healthy is decided by `Liveness`, a pure helper fed by the loop.
"""

from __future__ import annotations

import ipaddress
import re
import selectors
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from janitor.daemon.metrics import Metrics

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
# Liveness tolerates this many missed reconcile intervals before it reports the daemon dead.
MISSED_INTERVALS = 3

HealthCheck = Callable[[], tuple[bool, str]]


class Liveness:
    """Decides whether the daemon is alive, from facts the reconcile loop reports.

    Unhealthy when no reconcile pass finished within `MISSED_INTERVALS` intervals (counted from
    the last pass, or from start before the first) or when the observer died. Transient filesystem
    errors are deliberately not an input: a pass that met an unreadable marker still finished, and
    restarting the daemon would not fix the filesystem. All times are monotonic seconds.
    """

    def __init__(self, interval_s: float, started_at: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"liveness interval must be positive, got {interval_s}")
        self._interval_s = interval_s
        self._last_progress = started_at
        self._passes = 0
        self._observer_error: str | None = None
        self._note: str | None = None
        # check() runs on HTTP threads while the loop reports; keep each read consistent.
        self._lock = threading.Lock()

    def pass_finished(self, now: float) -> None:
        """A reconcile pass finished, even if some directories met transient errors."""
        with self._lock:
            self._last_progress = now
            self._passes += 1

    def observer_died(self, reason: str) -> None:
        """The file watcher or one of its emitters stopped; unhealthy until `observer_recovered`."""
        with self._lock:
            self._observer_error = reason

    def observer_recovered(self) -> None:
        """The loop re-armed the file watcher after `observer_died`."""
        with self._lock:
            self._observer_error = None

    def note(self, text: str | None) -> None:
        """Something true of a live daemon that an operator must see (it keeps nothing): the
        healthy reply says "ok; <text>"."""
        with self._lock:
            self._note = text

    def check(self, now: float) -> tuple[bool, str]:
        """(healthy, one-line reason) at monotonic time `now`."""
        with self._lock:
            if self._observer_error is not None:
                return False, f"file watcher died: {self._observer_error}"
            silent_s = now - self._last_progress
            deadline_s = MISSED_INTERVALS * self._interval_s
            if silent_s > deadline_s:
                what = "last reconcile pass" if self._passes else "start without a reconcile pass"
                return False, f"{what} {silent_s:.1f} s ago, more than {deadline_s:g} s"
            return True, "ok" if self._note is None else f"ok; {self._note}"


def parse_addr(text: str) -> tuple[str, int]:
    """Parse `--metrics-addr`: "PORT", "HOST:PORT" or "[IPV6]:PORT"; the host defaults to 127.0.0.1.

    Port 0 asks the kernel for a free port (tests). Raises ValueError with one line on bad input.
    """
    hint = 'expected PORT, HOST:PORT or [IPV6]:PORT, e.g. "9464" or "0.0.0.0:9464"'
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad metrics address {text!r}: {host!r} is not IPv6") from None
    elif ":" in host:
        raise ValueError(f"bad metrics address {text!r}: put an IPv6 host in brackets, {hint}")
    if not host:
        raise ValueError(f"bad metrics address {text!r}: empty host, {hint}")
    if not _is_host(host):
        raise ValueError(f"bad metrics address {text!r}: {host!r} is neither an IP address nor "
                         f"a host name, {hint}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"bad metrics address {text!r}: port must be 0-65535, {hint}")
    return host, int(port_text)


# A DNS host name (RFC 1123 labels): letters, digits and inner hyphens, dot-separated.
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", re.ASCII)


def _is_host(host: str) -> bool:
    """An IPv4 or IPv6 literal, or a host name; `+127.0.0.1` or `a"b` is neither."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_NAME.fullmatch(host) is not None and not host.replace(".", "").isdigit()
    return True


class HealthServer:
    """The running endpoint; `port` is the bound port (useful when 0 was asked for)."""

    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self._httpd = httpd
        # For AF_INET6 the address is a 4-tuple; host and port come first either way.
        self.host: str = str(httpd.server_address[0])
        self.port: int = httpd.server_address[1]
        # serve_forever() notices shutdown() only every poll_interval (0.5 s), a quarter of the
        # 2 s SIGTERM budget; a wake-up socket lets close() return at once without busy polling.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="janitor-http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._httpd, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while all(key.fileobj is not self._wake_reader for key, _ in selector.select()):
                self._httpd.handle_request()  # the listener is readable: accept() won't block

    def close(self) -> None:
        """Stop accepting, close the listening socket and wait for the serving thread."""
        if self._closed:
            return
        self._closed = True
        self._wake_writer.send(b"\0")
        self._thread.join()
        self._httpd.server_close()
        self._wake_reader.close()
        self._wake_writer.close()


def start_server(addr: tuple[str, int], metrics: Metrics, health: HealthCheck) -> HealthServer:
    """Listen on `addr` and serve `/metrics` and `/healthz` on a daemon thread.

    Raises OSError with one line saying what failed (e.g. the port is in use), for the CLI to print.
    """
    host, port = addr
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        where = _show(host, port)
        raise OSError(f"cannot listen on {where}: unknown host ({exc.strerror})") from exc

    handler = _handler_class(metrics, health)

    class _Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True  # an open scrape connection must never hold up shutdown
        # Never share the port: a second janitor must fail to bind, not split the scrapes.
        allow_reuse_port = False

        def handle_error(self, request: Any, client_address: Any) -> None:
            # The default prints a traceback to stderr, outside the log pipeline.
            log.warning("http_request_failed", client=str(client_address), exc_info=True)

    try:
        httpd = _Server((host, port), handler)
    except OSError as exc:
        error = OSError(f"cannot listen on {_show(host, port)} for metrics: {exc.strerror}")
        error.errno = exc.errno
        raise error from exc
    server = HealthServer(httpd)
    log.info("http_listening", host=server.host, port=server.port)
    return server


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _handler_class(metrics: Metrics, health: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ckpt-janitor"
        protocol_version = "HTTP/1.1"  # keep-alive for scrapers; every reply has Content-Length
        timeout = 60  # seconds; an idle or stalled connection must not hold a thread forever

        def do_GET(self) -> None:
            self._respond(head=False)

        def do_HEAD(self) -> None:
            self._respond(head=True)

        def _respond(self, *, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            encoding = None
            if path == "/metrics":
                body, content_type, encoding = metrics.render(
                    self.headers.get("Accept"), self.headers.get("Accept-Encoding"))
                status = HTTPStatus.OK
            elif path == "/healthz":
                healthy, reason = health()
                status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
                text = " ".join(reason.splitlines())
                content_type, body = "text/plain; charset=utf-8", f"{text}\n".encode()
            else:
                status, content_type = HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8"
                body = b"not found: try /metrics or /healthz\n"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if encoding is not None:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Scrapes every few seconds would drown the log at info; keep them at debug.
            log.debug("http_request", client=self.client_address[0], line=format % args)

    return Handler
