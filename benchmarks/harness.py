"""Timing, interleaved baselines, and the fixed shape of a result file.

A result is ``{"suite", "lines", "machine": {"cpu", "cores", "memory_gb"},
"started", "metrics", "baselines", "ratios"}``; metric names are dotted and
carry their unit, and a ratio is ours divided by the baseline's for the same
quantity, named ``<metric>.vs_<baseline>``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
console = Console()


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "memory_gb": round(mem_kb / 1024 / 1024, 1)}


@dataclass
class Samples:
    """Repeated measurements of one quantity."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """Half the range, relative to the median (0.05 = +-5%)."""
        if len(self.values) < 2 or not self.median:
            return 0.0
        return (max(self.values) - min(self.values)) / 2 / abs(self.median)


def interleaved(ours: Callable[[], float], baselines: dict[str, Callable[[], float]], *,
                repetitions: int, warmup: int = 1) -> tuple[Samples, dict[str, Samples], dict[str, Samples]]:
    """Run ours and each baseline in turn, ``repetitions`` times after ``warmup`` rounds.

    Each callable returns the measured quantity. Ratios are taken pair by pair
    (ours / baseline within one round), since the machine is shared and noisy.
    """
    for _ in range(warmup):
        ours()
        for b in baselines.values():
            b()
    mine, theirs = Samples(), {k: Samples() for k in baselines}
    ratios = {k: Samples() for k in baselines}
    for _ in range(repetitions):
        v = ours()
        mine.values.append(v)
        for name, b in baselines.items():
            w = b()
            theirs[name].values.append(w)
            ratios[name].values.append(v / w if w else float("inf"))
    return mine, theirs, ratios


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@dataclass
class Result:
    suite: str
    lines: int
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        """Record whether an answer was right; a wrong answer is printed loudly."""
        self.checks[name] = bool(ok)
        if not ok:
            console.print(f"[bold red]ANSWER WRONG[/bold red] {name}: {detail}")

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite, "lines": self.lines, "machine": machine(), "started": self.started,
                "metrics": _round(self.metrics), "baselines": _round(self.baselines),
                "ratios": _round(self.ratios), "checks": self.checks, "notes": self.notes}

    def write(self, directory: Path = RESULTS_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.suite}.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def print(self) -> None:
        table = Table(title=f"{self.suite} - {self.lines:,} lines", show_lines=False)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in self.metrics.items():
            table.add_row(k, _fmt(v))
        for k, v in self.baselines.items():
            table.add_row(f"[dim]baseline[/dim] {k}", _fmt(v))
        for k, v in self.ratios.items():
            table.add_row(f"[bold]ratio[/bold] {k}", _fmt(v))
        for k, ok in self.checks.items():
            table.add_row(f"check {k}", "[green]ok[/green]" if ok else "[red]WRONG[/red]")
        console.print(table)
        for n in self.notes:
            console.print(f"  [dim]{n}[/dim]")


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def _fmt(v: float) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
    return f"{v:,}"
