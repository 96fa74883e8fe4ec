"""The shipper against the real broker: appends, rotation, truncation, partial lines, restarts."""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from loglake.broker import start_broker, stop_process
from tests.helpers.corpus import append, make_lines, now_utc, uids_in
from tests.helpers.processes import Stack, free_port, wait_until


def _write(path: os.PathLike[str], lines: list) -> None:
    with open(path, "a") as f:
        f.write("".join(ln.text + "\n" for ln in lines))


def _stored(stack: Stack) -> collections.Counter[int]:
    rows = stack.search("", start="now-2h", end="now+1h", limit=10_000)["rows"]
    return collections.Counter(uids_in(rows))


def _wait_stored(stack: Stack, n: int, timeout_s: float = 30) -> collections.Counter[int]:
    wait_until(lambda: sum(_stored(stack).values()) >= n, timeout_s, interval_s=0.3, what=f"{n} rows")
    time.sleep(1.0)   # a late duplicate would arrive within a flush interval
    return _stored(stack)


def _lines(n: int, start_uid: int) -> list:
    return make_lines(n, now_utc() - timedelta(minutes=30) + timedelta(seconds=start_uid), timedelta(milliseconds=10),
                      start_uid=start_uid)


def _start(stack: Stack, **ship_env: str) -> None:
    stack.start("ingest")
    stack.start("serve")
    stack.start("ship", **ship_env)
    stack.wait_ready()


def test_rename_and_create_reads_the_old_file_to_its_end(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    _write(log, _lines(300, 0))
    _start(stack)
    _wait_stored(stack, 300)
    # The application keeps writing to the renamed file for a moment, then reopens.
    os.rename(log, stack.input_dir / "app.log.1")
    _write(stack.input_dir / "app.log.1", _lines(200, 300))
    _write(log, _lines(300, 500))
    counts = _wait_stored(stack, 800)
    assert sorted(counts) == list(range(800)) and max(counts.values()) == 1
    wait_until(lambda: "released file" in stack.log_text("ship"), 10, what="the rotated file released")


def test_copytruncate_reads_the_truncated_file_again_from_the_start(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    _write(log, _lines(400, 0))
    _start(stack)
    _wait_stored(stack, 400)
    with open(log, "r+") as f:
        f.truncate(0)
    _write(log, _lines(100, 400))
    counts = _wait_stored(stack, 500)
    assert sorted(counts) == list(range(500)) and max(counts.values()) == 1


def test_partial_last_line_waits_for_its_newline(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    first, second = _lines(2, 0)
    _write(log, [first])
    with open(log, "a") as f:
        f.write(second.text[:20])
    _start(stack, LOGLAKE_SHIPPER__PARTIAL_LINE_TIMEOUT_S="60")
    _wait_stored(stack, 1)
    with open(log, "a") as f:
        f.write(second.text[20:] + "\n")
    counts = _wait_stored(stack, 2)
    assert sorted(counts) == [0, 1]
    rows = stack.search(second.token, start="now-2h", end="now+1h")["rows"]
    assert len(rows) == 1 and "uid000001x" in rows[0]["message"]


def test_partial_line_is_shipped_after_the_timeout(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    line = _lines(1, 0)[0]
    with open(log, "a") as f:
        f.write(line.text)     # never completed
    _start(stack)
    counts = _wait_stored(stack, 1, timeout_s=30)
    assert counts == {0: 1}


def test_restarted_shipper_resumes_from_its_checkpoint(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    _write(log, _lines(300, 0))
    _start(stack)
    _wait_stored(stack, 300)
    stack.kill("ship", 2)       # SIGINT: a clean stop that saves the checkpoint
    _write(log, _lines(300, 300))
    stack.start("ship", name="ship-2")
    counts = _wait_stored(stack, 600)
    assert sorted(counts) == list(range(600)) and max(counts.values()) == 1
    # It resumed where it stopped: the second run read only the new lines.
    assert '"offset":0' not in stack.log_text("ship-2")


def test_ship_once_reads_to_the_end_and_exits(stack: Stack) -> None:
    _write(stack.input_dir / "app.log", _lines(500, 0))
    stack.start("ingest")
    stack.start("serve")
    stack.wait_ready()
    proc = stack.start("ship", "--once")
    assert proc.wait(60) == 0
    counts = _wait_stored(stack, 500)
    assert sorted(counts) == list(range(500))


def test_delete_and_recreate_stores_both_files_lines_once(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    _write(log, _lines(200, 0))
    _start(stack)
    _wait_stored(stack, 200)
    log.unlink()
    _write(log, _lines(100, 200))
    counts = _wait_stored(stack, 300)
    assert sorted(counts) == list(range(300)) and max(counts.values()) == 1


def _open_inputs(pid: int, directory: Path) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(directory)):
            out.append(target)
    return out


def test_many_rotations_in_a_second_lose_nothing_and_leak_no_descriptor(stack: Stack) -> None:
    # Rotated names stay in the glob (app.log*), as in most production setups: a
    # file renamed and replaced between two scans is still found, and its
    # fingerprint keeps it from being read twice.
    log = stack.input_dir / "app.log"
    _write(log, _lines(20, 0))
    _start(stack, LOGLAKE_SHIPPER__INCLUDE=f'["{stack.input_dir}/app.log*"]')
    _wait_stored(stack, 20)
    uid = 20
    for k in range(30, 0, -1):                   # thirty rotations, as fast as the disk allows
        _write(log, _lines(10, uid))
        uid += 10
        os.rename(log, stack.input_dir / f"app.log.{k}")
        _write(log, _lines(10, uid))
        uid += 10
    counts = _wait_stored(stack, uid, timeout_s=60)
    assert sorted(counts) == list(range(uid)) and max(counts.values()) == 1
    # logrotate then deletes the old ones: each is let go, only app.log stays open.
    for k in range(1, 31):
        (stack.input_dir / f"app.log.{k}").unlink()
    pid = stack.procs["ship"].pid
    wait_until(lambda: _open_inputs(pid, stack.input_dir) == [str(log)], 20, what="rotated files released")
    assert sorted(_stored(stack)) == list(range(uid))


def test_broker_paused_20s_while_files_grow_and_rotate_loses_nothing(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    broker = start_broker(address)
    stack = Stack(root=tmp_path, bootstrap=address, topic="pause.test")
    try:
        log = stack.input_dir / "app.log"
        _write(log, _lines(200, 0))
        _start(stack)
        _wait_stored(stack, 200)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            uid = 200
            for second in range(20):             # the files keep growing while the broker is away
                _write(log, _lines(50, uid))
                uid += 50
                if second == 10:
                    os.rename(log, stack.input_dir / "app.log.1")
                time.sleep(1)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        counts = _wait_stored(stack, uid, timeout_s=90)
        assert sorted(counts) == list(range(uid)) and max(counts.values()) == 1
        assert "cannot deliver to the broker" in stack.log_text("ship")
        assert "broker reachable again" in stack.log_text("ship")
    finally:
        stack.stop_all()
        stop_process(broker)


def test_metrics_and_healthz_report_what_the_shipper_did(stack: Stack) -> None:
    port = free_port()
    _write(stack.input_dir / "app.log", _lines(300, 0))
    _start(stack, LOGLAKE_SHIPPER__METRICS_LISTEN=f"127.0.0.1:{port}")
    _wait_stored(stack, 300)

    def scrape() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return ""

    text = wait_until(lambda: "loglake_shipper_lines_read_total 300.0" in scrape() and scrape(), 10,
                      what="metrics")
    assert "loglake_shipper_files_watched 1.0" in text
    assert 'loglake_shipper_file_lag_bytes{path="' in text
    assert "loglake_shipper_send_errors_total 0.0" in text
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_kubernetes_cri_logs_join_partials_and_carry_pod_metadata(stack: Stack) -> None:
    pod_dir = stack.root / "var/log/pods/shop_checkout-5d8f_0f6b1c2e-aaaa-bbbb-cccc-1234567890ab/checkout"
    pod_dir.mkdir(parents=True)
    with open(pod_dir / "0.log", "w") as f:
        f.write('2026-11-26T10:00:00.000000001Z stdout F {"level":"error","msg":"uid000000x payment failed"}\n')
        f.write("2026-11-26T10:00:01Z stderr P uid000001x first part of a long line, \n")
        f.write("2026-11-26T10:00:01Z stderr F and its end\n")
    include = f'["{stack.root}/var/log/pods/*/*/*.log"]'
    stack.start("ingest")
    stack.start("serve")
    stack.start("ship", LOGLAKE_SHIPPER__INCLUDE=include)
    stack.wait_ready()
    rows = wait_until(lambda: len(r := stack.search("", start="2026-11-26T09:00:00Z", end="2026-11-26T11:00:00Z")
                                  ["rows"]) >= 2 and r, 30, what="pod lines")
    by_uid = {uids_in([r])[0]: r for r in rows}
    assert len(rows) == 2
    assert by_uid[0]["service"] == "checkout" and by_uid[0]["level"] == "error"
    assert by_uid[0]["message"] == "uid000000x payment failed"
    assert by_uid[1]["message"] == "uid000001x first part of a long line, and its end"
    attrs = by_uid[1]["attrs"]
    assert attrs["k8s.namespace.name"] == "shop" and attrs["k8s.pod.name"] == "checkout-5d8f"
    assert attrs["k8s.container.name"] == "checkout" and attrs["stream"] == "stderr"


def test_overlong_line_is_truncated_and_flagged_never_dropped(stack: Stack) -> None:
    log = stack.input_dir / "app.log"
    before, after = _lines(2, 0)
    long_line = "uid000009x " + "x" * 3_000_000
    _write(log, [before])
    with open(log, "a") as f:
        f.write(long_line + "\n")
    _write(log, [after])
    _start(stack, LOGLAKE_SHIPPER__MAX_LINE_BYTES="4096")
    counts = _wait_stored(stack, 3)
    assert counts == {0: 1, 1: 1, 9: 1}
    rows = stack.search("uid000009x", start="now-2h", end="now+1h")["rows"]
    assert len(rows) == 1
    assert len(rows[0]["message"]) == 4096
    assert rows[0]["attrs"]["truncated"] == "true"
    assert rows[0]["attrs"]["original_length"] == str(len(long_line) + 1)
    assert "truncated" in stack.log_text("ship")


@pytest.mark.slow
def test_crash_loop_twenty_sigkills_while_200k_lines_are_written(stack: Stack) -> None:
    n = 200_000
    base = now_utc() - timedelta(hours=3)
    lines = make_lines(n, base, timedelta(milliseconds=50))
    stack.start("ingest")
    stack.start("serve")
    stack.start("ship")
    stack.wait_ready()
    done = threading.Event()

    def writer() -> None:
        for i in range(0, n, 2_000):
            append(stack.input_dir, lines[i:i + 2_000])
            time.sleep(0.25)
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    rng = random.Random(5)
    name = "ship"
    for k in range(20):
        time.sleep(rng.uniform(0.5, 2.5))
        stack.kill(name)
        name = f"ship-{k + 1}"
        stack.start("ship", name=name)
    done.wait(120)

    def stored() -> collections.Counter[int]:
        counts: collections.Counter[int] = collections.Counter()
        for i in range(0, n, 8_000):
            lo = lines[i].ts - timedelta(seconds=1) if i else base - timedelta(minutes=1)
            hi = lines[i + 8_000].ts - timedelta(seconds=1) if i + 8_000 < n else now_utc() + timedelta(minutes=1)
            counts.update(uids_in(stack.search("", start=lo.isoformat(), end=hi.isoformat(), limit=10_000)["rows"]))
        return counts

    wait_until(lambda: sum(stored().values()) >= n, 180, interval_s=3, what=f"{n} lines stored")
    time.sleep(2)
    counts = stored()
    assert sorted(counts) == list(range(n))
    assert max(counts.values()) == 1, [u for u, c in counts.items() if c > 1][:10]


def test_input_labels_env_and_service_from_path_reach_every_row(stack: Stack) -> None:
    svc_dir = stack.input_dir / "billing"
    svc_dir.mkdir()
    _write(svc_dir / "app.log", _lines(50, 0))
    stack.start("ingest")
    stack.start("serve")
    stack.start("ship", LOGLAKE_SHIPPER__INCLUDE=f'["{stack.input_dir}/**/*.log"]',
                LOGLAKE_SHIPPER__SERVICE_FROM_PATH=r"/in/(?P<service>[^/]+)/", LOGLAKE_SHIPPER__ENV="prod",
                LOGLAKE_SHIPPER__LABELS='{team = "payments", region = "eu"}')
    stack.wait_ready()
    _wait_stored(stack, 50)
    rows = stack.search("", start="now-2h", end="now+1h", limit=100)["rows"]
    assert {r["service"] for r in rows if r["service"] != "app"} == {"billing"}
    for r in rows:
        assert {k: r["attrs"].get(k) for k in ("env", "team", "region")} == \
            {"env": "prod", "team": "payments", "region": "eu"}
        assert r["host"] == "testhost"
