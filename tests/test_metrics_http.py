"""Metrics exposition, liveness rules and the HTTP endpoint, served for real on a free port."""

from __future__ import annotations

import errno
import gzip
import math
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from janitor.daemon.health_http import HealthServer, Liveness, parse_addr, start_server
from janitor.daemon.metrics import Metrics

CLASSIC_TEXT = "text/plain; version=0.0.4; charset=utf-8"

EXPECTED_TYPES = {
    "ckpt_janitor_build_info": "gauge",
    "ckpt_janitor_deletions": "counter",
    "ckpt_janitor_would_delete": "counter",
    "ckpt_janitor_reclaimed_bytes": "counter",
    "ckpt_janitor_reclaimed_files": "counter",
    "ckpt_janitor_errors": "counter",
    "ckpt_janitor_refusals": "counter",
    "ckpt_janitor_inotify_overflows": "counter",
    "ckpt_janitor_index_mismatches": "counter",
    "ckpt_janitor_reconcile_duration_seconds": "histogram",
    "ckpt_janitor_last_reconcile_timestamp_seconds": "gauge",
    "ckpt_janitor_managed_directories": "gauge",
    "ckpt_janitor_loaded_step_lag_steps_max": "gauge",
    "ckpt_janitor_directories_without_valid_marker": "gauge",
    "ckpt_janitor_trash_pending_bytes": "gauge",
    "ckpt_janitor_filesystem_free_bytes": "gauge",
    "ckpt_janitor_filesystem_avail_bytes": "gauge",
    "ckpt_janitor_directory_loaded_step": "gauge",
    "ckpt_janitor_directory_newest_complete_step": "gauge",
    "ckpt_janitor_directory_lag_steps": "gauge",
    "ckpt_janitor_directory_marker_age_seconds": "gauge",
    "ckpt_janitor_filesystem_size_bytes": "gauge",
    "ckpt_janitor_directory_bytes": "gauge",
    "ckpt_janitor_directory_trash_bytes": "gauge",
    "ckpt_janitor_standby_directories": "gauge",
    "ckpt_janitor_directory_over_budget_bytes": "gauge",
    "ckpt_janitor_filesystem_short_bytes": "gauge",
    "ckpt_janitor_filesystem_seconds_to_full": "gauge",
    "ckpt_janitor_directories_watched": "gauge",
    "ckpt_janitor_watch_mode": "gauge",
    "ckpt_janitor_watches": "gauge",
}


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by name and sorted labels, as Prometheus parses it."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render()[0].decode())
        for sample in family.samples if family.name.startswith("ckpt_janitor_")
    }


def own_families(body: bytes) -> dict[str, str]:
    """The janitor's own families and their types (not process_* and python_*)."""
    return {family.name: family.type for family in text_string_to_metric_families(body.decode())
            if family.name.startswith("ckpt_janitor_")}


def exercised_metrics() -> Metrics:
    metrics = Metrics(version="1.2.3")
    metrics.deleted("below_loaded_step", steps=3)
    metrics.deleted("below_loaded_step")
    metrics.would_delete("superseded")
    metrics.set_directory("run1/broadcasts", 7, 10, time.time() - 30)
    metrics.reclaimed(bytes_=4096, files=2)
    metrics.error("scan")
    metrics.refused("marker_missing")
    metrics.inotify_overflow()
    metrics.index_mismatch(2)
    metrics.reconcile_finished(duration_s=0.0003, unix_time=1_700_000_000.0)
    metrics.set_directory_lags([4, None, 1])
    metrics.set_trash_pending_bytes(10**12)
    metrics.set_directory_bytes("run1/broadcasts", 3 * 10**9)
    metrics.set_directory_trash_bytes("run1/broadcasts", 10**9)
    metrics.set_standby(2)
    metrics.set_directory_pressure("run1/broadcasts", 5 * 10**8)
    metrics.set_filesystem_pressure("/data", 10**9)
    metrics.set_filesystem_forecast("/data", 3600.0)
    metrics.set_filesystems({"/data": (5 * 10**9, 8 * 10**9), "/scratch": (2 * 10**9, 4 * 10**9)})
    metrics.set_watching({"inotify": 2, "poll": 1}, watches=7)
    return metrics


def test_every_metric_is_exposed_with_its_type() -> None:
    assert own_families(exercised_metrics().render()[0]) == EXPECTED_TYPES


def test_values_are_what_the_loop_reported() -> None:
    got = samples(exercised_metrics())
    assert got["ckpt_janitor_build_info", (("version", "1.2.3"),)] == 1
    assert got["ckpt_janitor_deletions_total", (("reason", "below_loaded_step"),)] == 4
    assert got["ckpt_janitor_would_delete_total", (("reason", "superseded"),)] == 1
    assert got["ckpt_janitor_reclaimed_bytes_total", ()] == 4096
    assert got["ckpt_janitor_reclaimed_files_total", ()] == 2
    assert got["ckpt_janitor_errors_total", (("kind", "scan"),)] == 1
    assert got["ckpt_janitor_refusals_total", (("reason", "marker_missing"),)] == 1
    assert got["ckpt_janitor_inotify_overflows_total", ()] == 1
    assert got["ckpt_janitor_index_mismatches_total", ()] == 2
    assert got["ckpt_janitor_reconcile_duration_seconds_bucket", (("le", "0.00025"),)] == 0
    assert got["ckpt_janitor_reconcile_duration_seconds_bucket", (("le", "0.0005"),)] == 1
    assert got["ckpt_janitor_last_reconcile_timestamp_seconds", ()] == 1_700_000_000
    assert got["ckpt_janitor_managed_directories", ()] == 3
    assert got["ckpt_janitor_loaded_step_lag_steps_max", ()] == 4
    assert got["ckpt_janitor_directories_without_valid_marker", ()] == 1
    assert got["ckpt_janitor_trash_pending_bytes", ()] == 10**12
    assert got["ckpt_janitor_filesystem_free_bytes", ()] == 2 * 10**9
    assert got["ckpt_janitor_filesystem_avail_bytes", (("mountpoint", "/data"),)] == 5 * 10**9
    assert got["ckpt_janitor_filesystem_size_bytes", (("mountpoint", "/scratch"),)] == 4 * 10**9
    assert got["ckpt_janitor_directories_watched", (("mode", "inotify"),)] == 2
    assert got["ckpt_janitor_directories_watched", (("mode", "poll"),)] == 1
    # The deprecated name carries the same count for one release.
    assert got["ckpt_janitor_watch_mode", (("mode", "poll"),)] == 1
    assert got["ckpt_janitor_directory_bytes", (("stream", "run1/broadcasts"),)] == 3 * 10**9
    assert got["ckpt_janitor_directory_trash_bytes", (("stream", "run1/broadcasts"),)] == 10**9
    assert got["ckpt_janitor_standby_directories", ()] == 2
    assert got["ckpt_janitor_directory_over_budget_bytes", (("stream", "run1/broadcasts"),)] == \
        5 * 10**8
    assert got["ckpt_janitor_filesystem_short_bytes", (("mountpoint", "/data"),)] == 10**9
    assert got["ckpt_janitor_filesystem_seconds_to_full", (("mountpoint", "/data"),)] == 3600
    assert got["ckpt_janitor_watches", ()] == 7


def test_no_label_names_a_step_or_a_path() -> None:
    label_names = {name for _, labels in samples(exercised_metrics()) for name, _ in labels}
    assert label_names == {"version", "reason", "kind", "le", "mode", "mountpoint", "stream"}


def test_unknown_values_do_not_look_like_alarms() -> None:
    metrics = Metrics()
    got = samples(metrics)
    # NaN free space: "unknown", never "disk full" before the first measurement.
    assert math.isnan(got["ckpt_janitor_filesystem_free_bytes", ()])
    metrics.set_directory_lags([None, None])
    metrics.set_watching({"poll": 2}, watches=0)
    got = samples(metrics)
    assert got["ckpt_janitor_loaded_step_lag_steps_max", ()] == 0
    assert got["ckpt_janitor_directories_without_valid_marker", ()] == 2
    assert got["ckpt_janitor_directories_watched", (("mode", "inotify"),)] == 0


def test_each_instance_has_a_private_registry() -> None:
    # A second instance would raise "Duplicated timeseries" on the global registry.
    first, second = Metrics(), Metrics()
    first.deleted("below_loaded_step")
    assert ("ckpt_janitor_deletions_total", (("reason", "below_loaded_step"),)) not in samples(
        second
    )


# Liveness: pure, driven with explicit monotonic times.


def test_liveness_deadline_is_three_intervals_from_start_then_from_each_pass() -> None:
    liveness = Liveness(interval_s=30, started_at=1000.0)
    assert liveness.check(1090.0) == (True, "ok")
    healthy, reason = liveness.check(1090.5)
    assert not healthy
    assert reason == "start without a reconcile pass 90.5 s ago, more than 90 s"
    liveness.pass_finished(1100.0)
    assert liveness.check(1190.0) == (True, "ok")
    assert liveness.check(1191.0) == (False, "last reconcile pass 91.0 s ago, more than 90 s")


def test_liveness_dead_observer_is_unhealthy_until_recovered() -> None:
    liveness = Liveness(interval_s=30, started_at=0.0)
    liveness.observer_died("inotify emitter thread exited")
    assert liveness.check(1.0) == (False, "file watcher died: inotify emitter thread exited")
    liveness.observer_recovered()
    assert liveness.check(1.0) == (True, "ok")


def test_liveness_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Liveness(interval_s=0, started_at=0.0)


# parse_addr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9464", ("127.0.0.1", 9464)),
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),  # noqa: S104 (parsing, not binding)
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_addr_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "port must be 0-65535"),
        ("http", "port must be 0-65535"),
        ("65536", "port must be 0-65535"),
        ("127.0.0.1:", "port must be 0-65535"),
        ("127.0.0.1:-1", "port must be 0-65535"),
        ("127.0.0.1:٩٤", "port must be 0-65535"),
        (":9464", "empty host"),
        ("::1:9464", "put an IPv6 host in brackets"),
        ("[nope]:9464", "is not IPv6"),
    ],
)
def test_parse_addr_rejects_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        parse_addr(text)
    assert "\n" not in str(excinfo.value)


# The real server


class Clock:
    """A monotonic time the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def liveness(clock: Clock) -> Liveness:
    return Liveness(interval_s=10, started_at=clock.now)


@pytest.fixture
def server(clock: Clock, liveness: Liveness) -> Iterator[HealthServer]:
    srv = start_server(("127.0.0.1", 0), exercised_metrics(), lambda: liveness.check(clock.now))
    yield srv
    srv.close()


def request(server: HealthServer, path: str, method: str = "GET") -> tuple[int, Message, bytes]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def test_metrics_endpoint_serves_the_exposition(server: HealthServer) -> None:
    status, headers, body = request(server, "/metrics")
    assert status == 200
    # No Accept header: the classic text format, as prometheus_client's negotiation says.
    assert headers["Content-Type"] == CLASSIC_TEXT
    assert own_families(body) == EXPECTED_TYPES
    every = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"process_cpu_seconds", "process_open_fds", "python_info"} <= every


def test_metrics_negotiates_openmetrics_and_gzip(server: HealthServer) -> None:
    url = f"http://127.0.0.1:{server.port}/metrics"
    asked = urllib.request.Request(url, headers={
        "Accept": "application/openmetrics-text; version=1.0.0",
        "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(asked, timeout=5) as resp:  # noqa: S310 (http, localhost)
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(resp.read()).decode()
    assert text.rstrip().endswith("# EOF")
    families = {f.name for f in openmetrics_families(text)}
    assert "ckpt_janitor_deletions" in families and "ckpt_janitor_reclaimed_bytes" in families


def test_every_labelled_counter_has_its_series_from_the_start() -> None:
    got = samples(Metrics())
    for reason in ("superseded", "abandoned-partial", "abandoned-staging"):
        assert got["ckpt_janitor_deletions_total", (("reason", reason),)] == 0
        assert got["ckpt_janitor_would_delete_total", (("reason", reason),)] == 0
    for kind in ("open", "lock", "reconcile", "reclaim"):
        assert got["ckpt_janitor_errors_total", (("kind", kind),)] == 0
    assert got["ckpt_janitor_refusals_total", (("reason", "no_valid_marker"),)] == 0


def test_per_directory_gauges_and_their_removal() -> None:
    metrics = Metrics()
    metrics.set_directory("a", 7, 10, time.time() - 30)
    metrics.set_directory("b", None, 4, None)
    metrics.set_directory_bytes("b", 10)
    metrics.set_directory_trash_bytes("b", 5)
    got = samples(metrics)
    assert got["ckpt_janitor_directory_lag_steps", (("stream", "a"),)] == 3
    assert 30 <= got["ckpt_janitor_directory_marker_age_seconds", (("stream", "a"),)] < 60
    assert math.isnan(got["ckpt_janitor_directory_loaded_step", (("stream", "b"),)])
    assert math.isnan(got["ckpt_janitor_directory_lag_steps", (("stream", "b"),)])
    metrics.drop_directory("b")
    assert not any(labels == (("stream", "b"),) for _, labels in samples(metrics))


def test_a_filesystem_no_longer_managed_loses_its_series() -> None:
    metrics = Metrics()
    metrics.set_filesystems({"/a": (1, 2), "/b": (3, 4)})
    metrics.set_filesystems({"/b": (5, 6)})
    got = samples(metrics)
    assert ("ckpt_janitor_filesystem_avail_bytes", (("mountpoint", "/a"),)) not in got
    assert got["ckpt_janitor_filesystem_avail_bytes", (("mountpoint", "/b"),)] == 5


def test_healthz_turns_503_once_the_deadline_passes(
    server: HealthServer, clock: Clock, liveness: Liveness
) -> None:
    assert request(server, "/healthz")[::2] == (200, b"ok\n")
    clock.now += 25
    liveness.pass_finished(clock.now)
    clock.now += 30
    assert request(server, "/healthz")[::2] == (200, b"ok\n")
    clock.now += 0.5
    status, headers, body = request(server, "/healthz")
    assert status == 503
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body == b"last reconcile pass 30.5 s ago, more than 30 s\n"


def test_head_sends_headers_without_a_body(server: HealthServer) -> None:
    status, headers, body = request(server, "/metrics", method="HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) > 0
    assert body == b""


def test_unknown_paths_are_404(server: HealthServer) -> None:
    assert request(server, "/")[0] == 404
    assert request(server, "/metrics/extra")[0] == 404
    assert request(server, "/healthz?verbose=1")[0] == 200  # a query string is not a new path


def test_requests_are_logged_at_debug_not_on_stderr(
    server: HealthServer, capfd: pytest.CaptureFixture[str]
) -> None:
    with capture_logs() as logs:
        request(server, "/healthz")
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [("http_request", "debug")]
    assert '"GET /healthz HTTP/1.1" 200' in logs[0]["line"]
    assert capfd.readouterr().err == ""


def test_a_failing_health_check_is_logged_not_printed(capfd: pytest.CaptureFixture[str]) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("bug in health()")

    srv = start_server(("127.0.0.1", 0), Metrics(), broken)
    try:
        with capture_logs() as logs:
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                request(srv, "/healthz")  # no answer at all: a probe counts that as a failure
            # The server logs on its worker thread, possibly after the client saw the drop.
            deadline = time.monotonic() + 5
            while not any(e["event"] == "http_request_failed" for e in logs):
                assert time.monotonic() < deadline, logs
                time.sleep(0.005)  # polling a condition, not synchronising on a guess
    finally:
        srv.close()
    failed = next(e for e in logs if e["event"] == "http_request_failed")
    assert failed["log_level"] == "warning"
    assert capfd.readouterr().err == ""


def test_close_frees_the_port_and_is_idempotent() -> None:
    srv = start_server(("127.0.0.1", 0), Metrics(), lambda: (True, "ok"))
    srv.close()
    srv.close()
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", srv.port))


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use") as excinfo:
            start_server(("127.0.0.1", port), Metrics(), lambda: (True, "ok"))
    assert str(excinfo.value) == (
        f"cannot listen on 127.0.0.1:{port} for metrics: Address already in use"
    )
    assert excinfo.value.errno == errno.EADDRINUSE


def test_unknown_host_is_one_clear_line() -> None:
    with pytest.raises(OSError, match=r"^cannot listen on no-such-host\.invalid:0: unknown host"):
        start_server(("no-such-host.invalid", 0), Metrics(), lambda: (True, "ok"))


def test_ipv6_loopback(liveness: Liveness) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        srv = start_server(parse_addr("[::1]:0"), Metrics(), lambda: (True, "ok"))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{srv.port}/healthz", timeout=5) as resp:
            assert resp.read() == b"ok\n"
    finally:
        srv.close()
