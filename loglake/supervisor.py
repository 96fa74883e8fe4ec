"""`loglake up`: the embedded broker and every stage (and the alert evaluator) as child processes of one supervisor.

Children run in their own process groups, so Ctrl-C reaches only the
supervisor, which then stops them in dependency order (demo writer, shipper,
push receiver, query server, ingest, broker). Each child also gets SIGTERM if the supervisor
dies, so no broker is ever left running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loglake.broker import die_with_parent, start_broker, stop_process
from loglake.core.addresses import is_loopback
from loglake.core.config import Config
from loglake.core.topics import ensure_topic

log = logging.getLogger("loglake.up")


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started: float = field(default=0.0)
    #: Settings of this child's own (LOGLAKE_* variables) over the environment all children share.
    env: dict[str, str] = field(default_factory=dict)

    def start(self, env: dict[str, str]) -> None:
        out = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**env, **self.env}, process_group=0, preexec_fn=die_with_parent)
        out.close()
        self.started = time.monotonic()

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def demo_auth_off(cfg: Config) -> bool:
    """Whether `up` turns authentication off: when the query server and the push receiver listen on
    loopback, and only when the configuration leaves ``auth.enabled`` unset (an explicit true, in
    the file or the environment, is kept)."""
    return is_loopback(cfg.query.host) and is_loopback(cfg.receive.host) and \
        "enabled" not in cfg.auth.model_fields_set


def _banner(cfg: Config, log_dir: Path, auth_off: bool) -> str:
    url = f"http://{cfg.query.host}:{cfg.query.port}"
    push = f"http://{cfg.receive.host}:{cfg.receive.port}"
    exe = sys.argv[0] if os.path.basename(sys.argv[0]) == "loglake" else "loglake"
    return f"""
  loglake is up.

    search page  {url}/
    search API   {url}/api/v1/search      (docs: {url}/docs)
    push         {push}/v1/logs (OTLP/HTTP)   {push}/loki/api/v1/push (Loki)
                 {push}/_bulk (Elasticsearch)   {push}/api/v1/ingest (NDJSON)
    demo logs    {cfg.demo.dir}/*.log  ->  topic {cfg.kafka.topic} @ {cfg.kafka.bootstrap_servers}
    data root    {cfg.storage.data_root}
    process logs {log_dir}/*.log

  Try:
    curl -s '{url}/api/v1/search?q=level:error&start=now-15m&limit=5'
    curl -s --data-binary '{{"msg": "hello", "level": "warn"}}' '{push}/api/v1/ingest?service=curl'
    {exe} search 'level:error service:api' --since 15m --url {url}

  {"Authentication is off: the server listens on loopback only (demo mode)." if auth_off
   else "API keys are required: create one with " + exe + " keys create --tenant default --role reader"}
  Ctrl-C stops everything.
"""


def run_up(cfg: Config, config_path: str | None) -> int:
    """Start everything, print where to look, and supervise until SIGINT/SIGTERM."""
    log_dir = cfg.log.dir
    log_dir.mkdir(parents=True, exist_ok=True)
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    broker = None
    children: list[Child] = []
    env = dict(os.environ)
    try:
        if cfg.broker.embedded:
            cfg, overrides = embedded_settings(cfg)
            env.update(overrides)
            broker = start_broker(cfg.broker.listen, log_file=log_dir / "broker.log")
            log.info("embedded broker started", extra={"listen": cfg.broker.listen, "pid": broker.pid})
        asyncio.run(ensure_topic(cfg.kafka))

        auth_off = demo_auth_off(cfg) or not cfg.auth.enabled
        if auth_off:
            # The demo: nothing but this machine can reach the server, so no keys are asked for
            # (the server still refuses key management and foreign Host names).
            env["LOGLAKE_AUTH__ENABLED"] = "false"
        base = [sys.executable, "-m", "loglake"]
        if config_path:
            base += ["--config", config_path]
        names = ["ingest", "serve", "receive", "ship", "maintain", "alert"] + (["demo"] if cfg.demo.enabled else [])
        children = [Child(n, [*base, n], log_dir / f"{n}.log") for n in names]
        children[1:1] = ingest_helpers(cfg, base, log_dir)
        for c in children:
            c.start(env)
        if _wait_ready(cfg, lambda: stopping):
            print(_banner(cfg, log_dir, auth_off), flush=True)
        elif not stopping:
            log.error("the query server is not answering; see its log",
                      extra={"url": f"http://{cfg.query.host}:{cfg.query.port}", "log": str(log_dir / "serve.log")})
        while not stopping:
            time.sleep(0.2)
            if broker is not None and broker.poll() is not None:
                log.error("embedded broker exited; stopping", extra={"status": broker.returncode})
                return 1
            for c in children:
                if c.proc is not None and c.proc.poll() is not None:
                    log.warning("child exited; restarting", extra={"child": c.name, "status": c.proc.returncode,
                                                                    "log": str(c.log_path)})
                    c.restarts += 1
                    c.next_start = time.monotonic() + min(30.0, 0.5 * 2 ** min(c.restarts, 6))
                    c.proc = None
                if c.proc is None and time.monotonic() >= c.next_start:
                    c.start(env)
        return 0
    finally:
        print("\n  stopping loglake ...", flush=True)
        for c in reversed(children):
            c.stop()
        if broker is not None:
            stop_process(broker)
        print("  stopped.", flush=True)


#: The ingest workers' group session on the embedded broker, unless `ingest.session_timeout_s` is
#: set. Kafka's brokers refuse less than 6 s; tansu takes it, and holds a new group's JoinGroup
#: for half of it (3 s at 6 s, before `up`'s first row). A worker heartbeats every third of it
#: from its event loop, which a flush (in a thread) does not block.
EMBEDDED_SESSION_S = 3.0


def embedded_settings(cfg: Config) -> tuple[Config, dict[str, str]]:
    """``cfg`` as `loglake up` runs it on its embedded broker, and the ``LOGLAKE_*`` variables that
    tell every child so: a partition count the workers share evenly, and a shorter group session
    unless one is configured. The broker's topics and groups live only as long as it does."""
    overrides: dict[str, str] = {}
    if (partitions := even_partitions(cfg)) != cfg.kafka.partitions:
        log.info("the embedded broker's topic gets a partition count the ingest workers share evenly",
                 extra={"partitions": partitions, "configured": cfg.kafka.partitions,
                        "workers": cfg.ingest.worker_count(cfg.kafka.partitions)})
        cfg = cfg.model_copy(update={"kafka": cfg.kafka.model_copy(update={"partitions": partitions})})
        overrides["LOGLAKE_KAFKA__PARTITIONS"] = str(partitions)
    if "session_timeout_s" not in cfg.ingest.model_fields_set:
        cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"session_timeout_s": EMBEDDED_SESSION_S})})
        overrides["LOGLAKE_INGEST__SESSION_TIMEOUT_S"] = str(EMBEDDED_SESSION_S)
    return cfg, overrides


def even_partitions(cfg: Config) -> int:
    """`kafka.partitions` rounded up to a multiple of the ingest workers `loglake up` starts.

    The shipper spreads bytes evenly over partitions (shippers/placement.py), so workers
    share the work evenly only if they hold as many partitions each. With three partitions
    and two workers, one worker held two and parsed two thirds of the lines. The embedded
    broker's topic lives only as long as `loglake up`, so its count can be chosen for them."""
    workers = cfg.ingest.worker_count(cfg.kafka.partitions)
    return -(-cfg.kafka.partitions // workers) * workers


def ingest_helpers(cfg: Config, base: list[str], log_dir: Path) -> list[Child]:
    """The ingest processes after the first (`ingest.workers`): one consumer group shares the
    topic's partitions among them. Each serves its metrics on the next port, if any."""
    n = cfg.ingest.worker_count(cfg.kafka.partitions)
    helpers = []
    for i in range(2, n + 1):
        env = {}
        if cfg.ingest.metrics_listen:
            host, _, port = cfg.ingest.metrics_listen.rpartition(":")
            env["LOGLAKE_INGEST__METRICS_LISTEN"] = f"{host}:{int(port) + i - 1}"
        helpers.append(Child(f"ingest-{i}", [*base, "ingest"], log_dir / f"ingest-{i}.log", env=env))
    return helpers


def _wait_ready(cfg: Config, stopping: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    url = f"http://{cfg.query.host}:{cfg.query.port}/readyz"
    deadline = time.monotonic() + timeout_s
    while not stopping() and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False
