"""Render benchmarks/results/*.json as the tables in benchmarks/README.md."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.harness import RESULTS_DIR

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SUITES = ("ship", "ingest", "storage", "query", "e2e", "web", "up")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def render(results_dir: Path = RESULTS_DIR) -> str:
    out: list[str] = []
    for suite in SUITES:
        path = results_dir / f"{suite}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        m = r["machine"]
        out += [f"### {suite}", "",
                f"{r['lines']:,} lines, started {r['started']}, {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB.",
                "", "| figure | value |", "| --- | ---: |"]
        out += [f"| `{k}` | {_fmt(v)} |" for k, v in r["metrics"].items()]
        out += [f"| baseline `{k}` | {_fmt(v)} |" for k, v in r["baselines"].items()]
        out += [f"| **ratio** `{k}` | {_fmt(v)} |" for k, v in r["ratios"].items()]
        checks = r.get("checks", {})
        if checks:
            bad = [k for k, ok in checks.items() if not ok]
            out.append(f"| answers checked | {len(checks) - len(bad)} of {len(checks)} right"
                       + (f" (wrong: {', '.join(bad)})" if bad else "") + " |")
        out += [""] + [f"_{n}_" for n in r.get("notes", [])] + [""]
    return "\n".join(out)


def update_readme(results_dir: Path = RESULTS_DIR) -> None:
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{BEGIN}\n{render(results_dir)}\n{END}{tail}")
