"""The compiled modules (ingest/_native.c, storage/_trigrams.c) under AddressSanitizer and UBSan.

Both files are built again with ``-fsanitize=address,undefined`` and driven by
``tests/helpers/native_fuzz.py`` with mutated lines for a while: any out-of-bounds read
or write, use after free or undefined behaviour aborts that process, and the
test shows the sanitizer's report. It needs gcc and its sanitizer runtimes
(the machine that builds the package has the compiler); without them it is
skipped with the reason printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ_S = float(os.environ.get("LOGLAKE_NATIVE_FUZZ_S", "20"))
FLAGS = ["-shared", "-fPIC", "-O1", "-g", "-std=c11", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def _runtime(gcc: str, name: str) -> str | None:
    path = subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_compiled_modules_survive_mutated_input_under_sanitizers(tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    asan = gcc and _runtime(gcc, "libasan.so")
    ubsan = gcc and _runtime(gcc, "libubsan.so")
    if not (gcc and asan and ubsan):
        reason = "the sanitizer build needs gcc with libasan and libubsan"
        print(f"\nSKIP: {reason}", file=sys.__stderr__)
        pytest.skip(reason)
    built = {}
    for name, source in (("native", "ingest/_native.c"), ("trigrams", "storage/_trigrams.c")):
        out = tmp_path / f"{name}.so"
        subprocess.run([gcc, *FLAGS, f"-I{sysconfig.get_paths()['include']}", str(ROOT / source), "-o", str(out)],
                       check=True, capture_output=True)
        built[name] = str(out)
    seed = time.time_ns() % 2**32
    # PYTHONMALLOC=malloc: a bytes object the C fills is then a malloc block ASan can guard
    # (pymalloc's arenas are one big block to it, and an overflow inside one goes unseen).
    env = {**os.environ, "LD_PRELOAD": f"{asan}:{ubsan}", "PYTHONMALLOC": "malloc",
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1"}
    fuzzer = ROOT / "tests" / "helpers" / "native_fuzz.py"
    run = subprocess.run([sys.executable, str(fuzzer), str(FUZZ_S), str(seed),
                          built["native"], built["trigrams"]], capture_output=True, text=True, env=env,
                         timeout=FUZZ_S + 120)
    assert run.returncode == 0 and "runtime error" not in run.stderr, \
        f"seed {seed}, exit {run.returncode}:\n{run.stderr[-6000:]}"
    assert run.stdout.strip().endswith("rounds")
