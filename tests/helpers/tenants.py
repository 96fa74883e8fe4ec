"""Two tenants' lake with authentication on: their records, API keys made by the real CLI, servers over it.

    acme   service shop, host acmehost, attr acme_attr, messages "ACMEMARK ...", ids A1..A4
    beta   service bank, host betahost, attr beta_attr, messages "BETAMARK ...", ids B1..B3

Each tenant also has a saved query (``SAVED``). tests/test_auth.py and tests/test_admin_api.py
each build one for their module.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loglake.core.config import load_config
from query.store import SavedQueryRow, SavedQueryStore
from query.timerange import parse_time_us
from storage.catalog import Catalog
from tests.helpers.lake import Segment, record, write_lake
from tests.helpers.processes import free_port
from tests.helpers.server import Server, serve

DAY = "2024-03-01"
ALL = {"start": f"{DAY}T09:00:00Z", "end": f"{DAY}T12:00:00Z"}
KEY_RE = re.compile(r"llk_([0-9a-f]{12})_([A-Za-z0-9_-]+)")


def rec(tenant_tag: str, rid: str, clock: str, service: str, host: str, level: str, text: str,
        **attrs: str) -> dict[str, Any]:
    """A record of ``DAY`` whose message starts with its tenant's marker."""
    return record(parse_time_us(f"{DAY}T{clock}Z"), service, level, f"{tenant_tag} {text}",
                  attrs=[("id", rid), *attrs.items()], host=host)


TENANTS: dict[str, list[dict[str, Any]]] = {
    "acme": [
        rec("ACMEMARK", "A1", "10:00:00", "shop", "acmehost", "info", "order placed", acme_attr="x"),
        rec("ACMEMARK", "A2", "10:05:00", "shop", "acmehost", "error", "payment gateway timeout", acme_attr="y"),
        rec("ACMEMARK", "A3", "10:10:00", "shop", "acmehost", "info", "order shipped", acme_attr="x"),
        rec("ACMEMARK", "A4", "10:20:00", "shop", "acmehost", "error", "stock sync failed", acme_attr="z"),
    ],
    "beta": [
        rec("BETAMARK", "B1", "10:01:00", "bank", "betahost", "info", "transfer booked", beta_attr="p"),
        rec("BETAMARK", "B2", "10:06:00", "bank", "betahost", "error", "ledger mismatch", beta_attr="q"),
        rec("BETAMARK", "B3", "10:15:00", "bank", "betahost", "info", "statement sent", beta_attr="p"),
    ],
}
IDS = {t: [r["attrs"][0][1] for r in rows] for t, rows in TENANTS.items()}
#: A saved query per tenant (made straight in the catalog), named after that tenant's service.
SAVED = {"acme": "shop-errors", "beta": "bank-errors"}


def build_lake(data_root: Path, catalog: Catalog) -> None:
    write_lake(data_root, catalog, [Segment(t, f"{t}.parquet", rows) for t, rows in TENANTS.items()])
    now = time.time_ns() // 1000
    for tenant, name in SAVED.items():
        window = {"start": ALL["start"], "end": ALL["end"]}
        SavedQueryStore(catalog).create_saved_query(
            SavedQueryRow(tenant, name, "search", "level:error", window, "", "", now, now))


# -- the CLI ------------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    env.update(extra)
    return env


def cli_args(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "loglake", "--config", str(config), *args]


def cli(config: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_args(config, *args), env=cli_env(**env), cwd=config.parent, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


@dataclass(frozen=True)
class Key:
    whole: str
    id: str
    secret: str
    stderr: str


def parse_key(out: subprocess.CompletedProcess[str]) -> Key:
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1, f"stdout should be the key alone, got {out.stdout!r}"
    m = KEY_RE.fullmatch(lines[0])
    assert m, f"not a key: {lines[0]!r}"
    return Key(lines[0], m[1], m[2], out.stderr)


def create_keys(config: Path, specs: dict[str, list[str]]) -> dict[str, Key]:
    """``loglake keys create`` once per spec, the processes running side by side."""
    procs = {name: subprocess.Popen(cli_args(config, "keys", "create", *args), env=cli_env(), cwd=config.parent,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL)
             for name, args in specs.items()}
    keys = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        keys[name] = parse_key(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return keys


# -- the lake and its servers ----------------------------------------------------------------


@dataclass
class Lake:
    root: Path
    config: Path
    catalog: Catalog
    keys: dict[str, Key]

    @property
    def catalog_file(self) -> Path:
        return self.root / "data" / "catalog.sqlite"


KEY_SPECS = {
    "reader": ["--tenant", "acme", "--role", "reader"],
    "writer": ["--tenant", "acme", "--role", "writer"],
    "admin": ["--tenant", "acme", "--role", "admin"],
    "ingest": ["--tenant", "acme", "--role", "ingest"],               # pushes to `loglake receive` only
    "both": ["--tenant", "acme,beta", "--role", "reader"],          # default tenant: acme
    "beta_first": ["--tenant", "beta", "--tenant", "acme", "--role", "reader"],
    "beta_writer": ["--tenant", "beta", "--role", "writer"],
    "revokee": ["--tenant", "acme", "--role", "reader", "--description", "to be revoked"],
}


@contextlib.contextmanager
def tenant_lake(root: Path) -> Iterator[Lake]:
    """The two tenants' lake under ``root``, auth on, and a key per ``KEY_SPECS`` entry."""
    config = root / "loglake.toml"
    config.write_text(f'[storage]\ndata_root = "{root / "data"}"\n\n[auth]\nenabled = true\n')
    cfg = load_config(config, environ={})
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    build_lake(cfg.storage.data_root, catalog)
    try:
        yield Lake(root, config, catalog, create_keys(config, KEY_SPECS))
    finally:
        catalog.close()


@contextlib.contextmanager
def serving(lake: Lake, **env: str) -> Iterator[Server]:
    """A server over ``lake`` with authentication on; ``env`` overrides settings (``LOGLAKE_...``)."""
    cfg = load_config(lake.config, environ=env)
    assert cfg.auth.enabled, "these tests need authentication on"
    with serve(cfg, port=free_port()) as server:
        yield server


def search_ids(server: Server, key: str, tenant: str | None = None) -> list[str]:
    resp = server.get("/api/v1/search", key, tenant, params=ALL)
    assert resp.status_code == 200, resp.text
    return sorted(r["attrs"]["id"] for r in resp.json()["rows"])
