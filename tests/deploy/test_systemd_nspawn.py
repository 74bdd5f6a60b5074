"""The shipped systemd unit under a real systemd: Debian bookworm booted with systemd-nspawn.

The unit file systemd/ckpt-janitor.service is installed unchanged; a drop-in only shortens the
watchdog and restart delays and sets the test-only fault switch. The checkpoint tree and a second
managed directory outside ReadWritePaths are host directories bound into the container, so the
test inspects them directly. The one-shot sweep template and its timer
(ckpt-janitor-sweep@.service/.timer) run on a third bound tree, which no daemon manages. Needs
root; skips only where nspawn cannot run at all.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nspawn_harness as harness
import pytest

pytestmark = pytest.mark.slow

UNIT = "ckpt-janitor.service"
TEMPLATE = "ckpt-janitor@.service"
TREE = "/srv/checkpoints"  # the unit's ReadWritePaths= and RequiresMountsFor=
OTHER = "/srv/other"  # a managed directory the unit may read but not write
SWEPT = "/srv/swept"  # the tree of the sweep timer's instance (no daemon runs on it)
SWEEP_SERVICE = "ckpt-janitor-sweep@.service"
SWEEP_TIMER = "ckpt-janitor-sweep@.timer"
HANG_FILE = "/run/ckpt-janitor-test/hang"
WATCHDOG_S = 4
VENV = "/opt/ckpt-janitor"  # where the unit's ExecStart points
REPO_IN_CONTAINER = "/src"
WHEELS_IN_CONTAINER = "/wheels"

DROP_IN = f"""\
# Test only: a short watchdog and restart delay, and the fault switch that hangs the loop.
[Service]
WatchdogSec={WATCHDOG_S}s
RestartSec=3s
TimeoutStartSec=60s
Environment=JANITOR_TEST_HANG_FILE={HANG_FILE}
"""
ENV_FILE = f"""\
JANITOR_ROOTS={TREE} {OTHER}
JANITOR_METRICS_ADDR=9464
JANITOR_RESCAN_INTERVAL=2
"""


def make_stream(broadcasts: Path, steps: range, loaded: int, gid: int) -> None:
    """step_N dirs (a shard, STABLE last), group-writable by the trainer group, then LOADED_STEP.

    The marker is written last and strictly after every step's last change (ctime included: the
    chown and chmod count), or the janitor rightly keeps the steps as changed after the marker.
    """
    broadcasts.mkdir(parents=True)
    for n in steps:
        step = broadcasts / f"step_{n}"
        step.mkdir()
        (step / "model-00001.safetensors").write_bytes(b"x" * 4096)
        (step / "STABLE").write_bytes(b"")
    for path in [broadcasts.parent, *broadcasts.parent.rglob("*")]:
        os.chown(path, 0, gid)
        os.chmod(path, 0o2775 if path.is_dir() else 0o664)
    newest = max(p.stat().st_ctime for p in [broadcasts, *broadcasts.rglob("*")])
    harness.wait_for("the clock to pass the steps' last change",
                     lambda: time.time() > newest + 0.1, 5)
    marker = broadcasts / "LOADED_STEP"
    marker.write_text(f"{loaded}\n")
    os.chown(marker, 0, gid)
    marker.chmod(0o664)


@dataclass
class Service:
    container: harness.Container
    tree: Path  # host side of TREE
    other: Path  # host side of OTHER
    swept: Path  # host side of SWEPT
    start_seconds: float = 0.0
    state_after_start: dict[str, str] = field(default_factory=dict)
    steps_after_start: set[str] = field(default_factory=set)

    def show(self, *props: str) -> dict[str, str]:
        out = self.container.run("systemctl", "show", UNIT, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> list[str]:
        """What the daemon itself wrote (stdout/stderr), not systemd's lines about the unit."""
        out = self.container.run("journalctl", "--no-pager", "-o", "cat",
                                 f"_SYSTEMD_UNIT={UNIT}", "_TRANSPORT=stdout").stdout
        return [line for line in out.splitlines() if line.strip()]

    def wait(self, what: str, condition: Callable[[], object], timeout: float,
             interval: float = 0.2) -> object:
        """harness.wait_for, failing with the unit's status and journal on a timeout."""
        try:
            return harness.wait_for(what, condition, timeout, interval)
        except TimeoutError as timeout_error:
            pytest.fail(f"{timeout_error}\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        status = self.container.run("systemctl", "status", "--no-pager", "-l", UNIT,
                                    check=False).stdout
        journal = self.container.run("journalctl", "--no-pager", "-u", UNIT, "-n", "60",
                                     check=False).stdout
        return f"{status}\n--- journal ---\n{journal}"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    try:
        harness.check_host()
    except harness.NspawnUnavailableError as why:
        pytest.skip(f"systemd-nspawn cannot run here: {why}")
    work = tmp_path_factory.mktemp("nspawn")
    wheels, tree, other, swept = (work / name for name in ("wheels", "tree", "other", "swept"))
    for path in (wheels, tree, other, swept):
        path.mkdir()
        path.chmod(0o755)
    started = time.monotonic()
    harness.build_wheels(wheels)
    binds = [(harness.REPO, REPO_IN_CONTAINER, True), (wheels, WHEELS_IN_CONTAINER, True),
             (tree, TREE, False), (other, OTHER, False), (swept, SWEPT, False)]
    with harness.booted(binds, work) as container:
        harness.log(f"booted in {time.monotonic() - started:.0f} s (wheels included)")
        run = container.run
        run("python3", "-m", "venv", VENV)
        run(f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links",
            WHEELS_IN_CONTAINER, "ckpt-janitor", timeout=300)
        help_text = run(f"{VENV}/bin/janitor", "run", "--help", check=False)
        if help_text.returncode != 0:
            pytest.fail(f"`janitor run` is not there: {help_text.stderr.strip()[-500:]}")
        # The user and group come from the shipped sysusers snippet.
        container.write("/etc/sysusers.d/ckpt-janitor.conf",
                        (harness.REPO / "systemd" / "ckpt-janitor.sysusers.conf").read_text())
        run("systemd-sysusers")
        gid = int(run("getent", "group", "trainer").stdout.split(":")[2])
        make_stream(tree / "run1" / "broadcasts", range(1, 7), loaded=5, gid=gid)
        make_stream(other / "broadcasts", range(1, 4), loaded=3, gid=gid)
        os.chown(tree, 0, gid)
        tree.chmod(0o2775)
        for unit in (UNIT, TEMPLATE, SWEEP_SERVICE, SWEEP_TIMER):
            run("cp", f"{REPO_IN_CONTAINER}/systemd/{unit}", f"/etc/systemd/system/{unit}")
        container.write(f"/etc/systemd/system/{UNIT}.d/test.conf", DROP_IN)
        container.write("/etc/ckpt-janitor/ckpt-janitor.env", ENV_FILE)
        run("mkdir", "-p", str(Path(HANG_FILE).parent))
        run("systemctl", "daemon-reload")
        harness.log(f"installed in {time.monotonic() - started:.0f} s; starting {UNIT}")
        svc = Service(container, tree, other, swept)
        before = time.monotonic()
        result = run("systemctl", "start", UNIT, check=False, timeout=90)
        svc.start_seconds = time.monotonic() - before
        # Read right away: a notify unit is active only once READY=1 arrived.
        svc.state_after_start = svc.show("ActiveState", "SubState", "MainPID", "NRestarts")
        svc.steps_after_start = {p.name for p in (tree / "run1" / "broadcasts").iterdir()
                                 if p.name.startswith("step_")}
        if result.returncode != 0:
            pytest.fail(f"systemctl start failed: {result.stderr}\n{svc.diagnostics()}")
        yield svc


def test_start_returns_after_ready_as_unprivileged_user(service: Service) -> None:
    state = service.state_after_start
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), \
        service.diagnostics()
    status = service.container.run("cat", f"/proc/{state['MainPID']}/status").stdout
    uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
    assert uid is not None
    assert uid.group(1) != "0"
    user = service.container.run("getent", "passwd", uid.group(1)).stdout
    assert user.startswith("ckpt-janitor:")
    harness.log(f"systemctl start returned after {service.start_seconds:.1f} s")
    # READY=1 comes after the first full reconcile, whose renames into the trash are done by then.
    assert service.steps_after_start == {"step_5", "step_6"}


def test_deletes_below_loaded_step_inside_its_tree(service: Service) -> None:
    broadcasts = service.tree / "run1" / "broadcasts"

    def steps() -> set[str]:
        return {p.name for p in broadcasts.iterdir() if p.name.startswith("step_")}

    service.wait("steps 1-4 to leave the tree", lambda: steps() == {"step_5", "step_6"}, 30)
    trash = broadcasts / ".janitor-trash"
    service.wait("the trash to be reclaimed",
                     lambda: not trash.exists() or not any(trash.iterdir()), 30)
    for kept in ("step_5", "step_6"):
        assert sorted(p.name for p in (broadcasts / kept).iterdir()) == \
            ["STABLE", "model-00001.safetensors"]
    # Each deletion is in the audit log, in the unit's StateDirectory (its other writable path).
    audit = service.container.run("cat", "/var/lib/ckpt-janitor/audit.jsonl").stdout
    assert len([line for line in audit.splitlines() if line.strip()]) >= 4, audit


def test_cannot_delete_outside_read_write_paths(service: Service) -> None:
    broadcasts = service.other / "broadcasts"

    def refused() -> list[str]:
        return [line for line in service.journal()
                if OTHER in line and re.search(r"read-only|EROFS|errno 30|permission|EACCES",
                                               line, re.IGNORECASE)]

    lines = service.wait(f"a read-only error about {OTHER} in the journal", refused, 30)
    assert lines
    assert {p.name for p in broadcasts.iterdir() if p.name.startswith("step_")} == \
        {"step_1", "step_2", "step_3"}
    assert not (broadcasts / ".janitor-trash").exists()


def test_health_endpoint_answers_inside_the_sandbox(service: Service) -> None:
    probe = ("import urllib.request as u; r = u.urlopen('http://127.0.0.1:9464/healthz', "
             "timeout=5); print(r.status)")
    out = service.wait(
        "/healthz to answer 200",
        lambda: service.container.run(f"{VENV}/bin/python", "-c", probe,
                                      check=False).stdout.strip() == "200", 20)
    assert out


def test_journal_holds_json_lines(service: Service) -> None:
    lines = service.journal()
    assert len(lines) >= 3, service.diagnostics()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"journal line is not JSON: {line!r}")
        assert isinstance(record, dict), line


def test_only_the_reclaim_thread_is_idle_under_the_unit(service: Service) -> None:
    """The unit's syscall filter lets the reclaim thread lower itself (SCHED_IDLE, idle I/O
    class) and lowers nothing process-wide: the loop and the other threads stay normal."""
    run = service.container.run
    pid = service.show("MainPID")["MainPID"]
    listing = run("sh", "-c", f'for t in /proc/{pid}/task/*; do echo "${{t##*/}} $(cat $t/comm)"; '
                  "done").stdout
    comms = dict(line.split(" ", 1) for line in listing.splitlines())
    reclaim = [tid for tid, comm in comms.items() if comm == "janitor-reclaim"]
    assert len(reclaim) == 1, comms
    for tid, comm in comms.items():
        stat = run("cat", f"/proc/{pid}/task/{tid}/stat").stdout
        policy = int(stat[stat.rindex(")") + 2:].split()[41 - 3])  # field 41: 5 is SCHED_IDLE
        io_class = run("ionice", "-p", tid).stdout.split(":")[0].strip()
        if tid in reclaim:
            assert (policy, io_class) == (5, "idle"), (tid, comm)
        else:
            assert policy == 0 and io_class != "idle", (tid, comm, policy, io_class)
    assert not [line for line in service.journal() if "priority_not_lowered" in line]


def test_hung_loop_trips_watchdog_and_systemd_restarts(service: Service) -> None:
    container = service.container
    before = service.show("NRestarts", "MainPID")
    assert before["NRestarts"] == "0", "restarted before the fault: " + service.diagnostics()
    container.run("touch", HANG_FILE)
    tripped_at = time.monotonic()

    def killed() -> dict[str, str] | None:
        state = service.show("Result", "SubState", "NRestarts")
        return state if state["Result"] == "watchdog" or state["NRestarts"] != "0" else None

    try:
        state = service.wait("systemd to kill the hung service for its watchdog", killed,
                                 WATCHDOG_S * 5, interval=0.1)
    finally:
        container.run("rm", "-f", HANG_FILE)
    harness.log(f"watchdog tripped {time.monotonic() - tripped_at:.1f} s after the hang: {state}")

    def running_again() -> dict[str, str] | None:
        state = service.show("ActiveState", "SubState", "NRestarts", "MainPID")
        return state if state["SubState"] == "running" and state["NRestarts"] != "0" else None

    after = service.wait("the service to be active (running) again", running_again, 60)
    assert isinstance(after, dict)
    assert after["NRestarts"] == "1", service.diagnostics()
    assert after["MainPID"] != before["MainPID"]
    systemd_lines = container.run("journalctl", "--no-pager", "-o", "cat", "-u", UNIT).stdout
    assert "Watchdog timeout" in systemd_lines, systemd_lines[-3000:]


def test_stop_is_clean(service: Service) -> None:
    before = time.monotonic()
    service.container.run("systemctl", "stop", UNIT, timeout=30)
    took = time.monotonic() - before
    state = service.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert state["ActiveState"] == "inactive", service.diagnostics()
    assert state["Result"] == "success", service.diagnostics()
    assert state["ExecMainStatus"] == "0", service.diagnostics()
    assert took < 3, f"systemctl stop took {took:.1f} s"


def test_template_instance_takes_its_tree_from_the_instance_name(service: Service) -> None:
    """After the plain unit stopped (one janitor per tree): the template, instance = the tree."""
    run = service.container.run
    instance = run("systemd-escape", "--path", TREE).stdout.strip()
    unit = f"ckpt-janitor@{instance}.service"
    service.container.write(f"/etc/ckpt-janitor/{instance}.env", "JANITOR_RESCAN_INTERVAL=2\n")
    result = run("systemctl", "start", unit, check=False, timeout=90)
    journal = run("journalctl", "--no-pager", "-u", unit, check=False).stdout
    assert result.returncode == 0, f"{result.stderr}\n{journal}"
    show = run("systemctl", "show", unit, "-p", "ActiveState,SubState,MainPID").stdout
    state = dict(line.split("=", 1) for line in show.splitlines())
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), journal
    cmdline = run("cat", f"/proc/{state['MainPID']}/cmdline").stdout.split("\0")
    assert cmdline[-2:] == [TREE, ""] or cmdline[-1] == TREE, cmdline
    run("test", "-d", f"/var/lib/ckpt-janitor/{instance}")  # its own StateDirectory
    run("systemctl", "stop", unit, timeout=30)
    show = run("systemctl", "show", unit, "-p", "ActiveState,Result,ExecMainStatus").stdout
    assert dict(line.split("=", 1) for line in show.splitlines()) == \
        {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, journal


SWEEP_DROP_IN = """\
# Test only: log how the sweep ended as systemd saw it (its exit code and the unit's result).
[Service]
ExecStopPost=/bin/sh -c 'echo "sweep-exit: $$EXIT_CODE $$EXIT_STATUS $$SERVICE_RESULT"'
"""


def sweep_exits(container: harness.Container, unit: str) -> list[str]:
    """What SWEEP_DROP_IN logged for each run of `unit`, oldest first."""
    out = container.run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout
    return [line.split(": ", 1)[1] for line in out.splitlines()
            if line.startswith("sweep-exit: ")]


def unit_state(container: harness.Container, unit: str, *props: str) -> dict[str, str]:
    out = container.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_sweep_service_runs_once_and_accepts_exit_3(service: Service) -> None:
    """The oneshot sweep template on a tree with deletable steps: `systemctl start` returns after
    the sweep, which exited 3 (it deleted); SuccessExitStatus=3 makes that a success."""
    container = service.container
    run = container.run
    gid = int(run("getent", "group", "trainer").stdout.split(":")[2])
    os.chown(service.swept, 0, gid)
    service.swept.chmod(0o2775)
    broadcasts = service.swept / "run1" / "broadcasts"
    make_stream(broadcasts, range(1, 7), loaded=5, gid=gid)
    instance = run("systemd-escape", "--path", SWEPT).stdout.strip()
    unit = f"ckpt-janitor-sweep@{instance}.service"
    container.write(f"/etc/ckpt-janitor/{instance}.env", "JANITOR_KEEP_LAST=1\n")
    # systemd forgets a oneshot's exit status once it is inactive (ExecMainStatus reads 0), so a
    # test-only drop-in logs the status systemd saw, from ExecStopPost's environment.
    container.write(f"/etc/systemd/system/{SWEEP_SERVICE}.d/test.conf", SWEEP_DROP_IN)
    run("systemctl", "daemon-reload")
    result = run("systemctl", "start", unit, check=False, timeout=120)
    journal = run("journalctl", "--no-pager", "-u", unit, check=False).stdout
    assert result.returncode == 0, f"{result.stderr}\n{journal}"
    state = unit_state(container, unit, "ActiveState", "Result", "Type")
    assert state == {"ActiveState": "inactive", "Result": "success", "Type": "oneshot"}, journal
    assert sweep_exits(container, unit) == ["exited 3 success"], journal
    assert {p.name for p in broadcasts.iterdir() if p.name.startswith("step_")} == \
        {"step_5", "step_6"}, journal
    trash = broadcasts / ".janitor-trash"
    assert not trash.exists() or not any(trash.iterdir()), "a sweep frees what it deleted"
    # Its audit log is the instance's StateDirectory, the one the daemon instance would use.
    audit = run("cat", f"/var/lib/ckpt-janitor/{instance}/audit.jsonl").stdout
    assert len([line for line in audit.splitlines() if line.strip()]) == 4, audit
    # A second run has nothing to delete: exit 0, a success too.
    run("systemctl", "start", unit, timeout=120)
    state = unit_state(container, unit, "ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}, state
    assert sweep_exits(container, unit) == ["exited 3 success", "exited 0 success"], \
        run("journalctl", "--no-pager", "-u", unit, check=False).stdout


def test_sweep_timer_is_loaded_with_a_next_elapse(service: Service) -> None:
    run = service.container.run
    instance = run("systemd-escape", "--path", SWEPT).stdout.strip()
    timer = f"ckpt-janitor-sweep@{instance}.timer"
    # The env file the service reads when the timer fires (the timer itself reads none).
    service.container.write(f"/etc/ckpt-janitor/{instance}.env", "JANITOR_KEEP_LAST=1\n")
    run("systemctl", "enable", "--now", timer, timeout=60)
    state = unit_state(service.container, timer, "LoadState", "ActiveState", "Triggers",
                       "NextElapseUSecRealtime", "Persistent", "RandomizedDelayUSec")
    assert (state["LoadState"], state["ActiveState"]) == ("loaded", "active"), state
    assert state["Triggers"] == f"ckpt-janitor-sweep@{instance}.service", state
    assert state["Persistent"] == "yes", state
    # OnCalendar=*:0/10 plus up to RandomizedDelaySec=1min: within the next 11 minutes.
    next_elapse, now = (int(run("date", "+%s", *when).stdout)
                        for when in (("-d", state["NextElapseUSecRealtime"]), ()))
    assert now < next_elapse <= now + 11 * 60, (state, now)
    listed = run("systemctl", "list-timers", "--all", "--no-pager", timer).stdout
    assert timer in listed, listed
