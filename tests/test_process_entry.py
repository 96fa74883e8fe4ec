"""loglake/__main__.py: a loglake process goes without pandas, whether or not it is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_loglake_process_makes_arrow_and_duckdb_results_without_importing_pandas(tmp_path: Path) -> None:
    # What every service does first, in the process `python -m loglake` sets up; pandas, when the
    # environment has it (chdb brings it to the benchmark's), must not be imported, and pyarrow and
    # DuckDB must work as if it were not installed.
    code = """
import sys
from loglake.__main__ import _WithoutPandas
sys.meta_path.insert(0, _WithoutPandas())
import duckdb
import pyarrow as pa
from ingest.normalise import Normaliser
from tests.helpers import normalising
from datetime import UTC, datetime
t = pa.table({"a": pa.array([1, 2])})
assert duckdb.connect().execute("SELECT sum(a) AS s FROM t").to_arrow_table().column("s").to_pylist() == [3]
out = Normaliser()(normalising.raw(['{"level": "info", "msg": "hi"}'], observed=datetime(2024, 5, 1, tzinfo=UTC)))
assert out.column("message").to_pylist() == ["hi"]
try:
    import pandas
except ModuleNotFoundError as e:
    assert "do without it" in str(e)
else:
    raise AssertionError("pandas was imported")
assert "pandas" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_loglake_command_runs_its_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "loglake", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "Log aggregation and search" in done.stdout
