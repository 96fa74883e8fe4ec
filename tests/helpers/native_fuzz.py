"""Random and mutated inputs for the compiled modules, run by tests/test_native_sanitized.py.

Usage: ``python tests/helpers/native_fuzz.py SECONDS SEED NATIVE_SO TRIGRAMS_SO``. It loads
the two modules from the given (sanitizer-built) files and calls every function
with mutated JSON and access lines, sliced arrays, random selections, depths and
bounds until SECONDS have passed; a sanitizer report aborts the process.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from types import ModuleType

import numpy as np
import pyarrow as pa

SEEDS = [
    '{"a":1,"b":{"c":[1,{"d":"x\\u00e9"}],"e":{}},"n":null,"s":"q\\"\\\\\\n","t":true,"f":-1.5e-3}',
    '1.2.3.4 - bob [04/Mar/2024:05:06:07 +0000] "GET /x?a=1 HTTP/1.1" 200 12 "-" "curl/8.5.0"',
    '::1 - - [04/Mar/2024:05:06:07 +0000] "POST /y HTTP/2.0" 503 -',
    '{"deep":' + '{"k":' * 30 + '[' * 40 + ']' * 40 + '}' * 30 + '}',
    '{"\\ud83d\\ude00":"\\ud83d","a":1,"a":2}',
    '{"time":"2023-11-14T22:13:20.123Z","t":"2023-11-14T22:13:20.123456Z","region":"us-west-2","n":12,"s":"\x02"}',
]
ALPHABET = '{}[]":,\\ u0123456789abcdefnrtl.-+eE\t\n/' + "é\x00\x01\x02\x07\x0e"


def load(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        op, i = rng.random(), rng.randint(0, len(chars))
        if op < 0.4 and chars:
            del chars[min(i, len(chars) - 1)]
        elif op < 0.8:
            chars.insert(i, rng.choice(ALPHABET))
        else:
            chars[i:i] = chars[rng.randint(0, len(chars)):][:rng.randint(0, 20)]
    return "".join(chars)


def skeletons(native: ModuleType, rng: random.Random, text: pa.StringArray) -> None:
    """``skeletons`` over ``text`` with random attributes (keys taken from the lines), times and modes."""
    words = [w for line in text.to_pylist() for w in line.replace("{", '"').replace("}", '"').split('"')]
    words = words + ["a", "ts", ""] if words else ["a", "", "x\x07"]
    n = len(text)
    extra = rng.randint(0, 3)
    attrs = pa.array([None if rng.random() < 0.1 else
                      [(rng.choice(words), None if rng.random() < 0.1 else rng.choice(words))
                       for _ in range(rng.choice([0, 1, 3, 20]))] for _ in range(n + extra)],
                     pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))).slice(extra)
    offsets, keys, values = attrs.offsets, attrs.values.field("key"), attrs.values.field("value")
    ts = pa.array([rng.choice([0, -1, 1_700_000_000_123_456, -(2**62), 2**62, 253402300799999999])
                   for _ in range(n + extra)], pa.int64()).slice(extra)
    mode = np.array([rng.randint(0, 2) for _ in range(n)], np.uint8)
    native.skeletons(text.buffers()[1], text.buffers()[2], mode, text.offset, n, ts.buffers()[1], ts.offset,
                     offsets.buffers()[1], attrs.buffers()[0], offsets.offset, keys.buffers()[1],
                     keys.buffers()[2], keys.offset, values.buffers()[1], values.buffers()[2],
                     values.buffers()[0], values.offset)


def main(seconds: float, seed: int, native_so: str, trigrams_so: str) -> int:
    native, trigrams = load("_native", native_so), load("_trigrams", trigrams_so)
    rng = random.Random(seed)
    deadline, rounds = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        lines = [mutate(rng, rng.choice(SEEDS)) for _ in range(rng.randint(0, 40))]
        cut = rng.randint(0, len(lines))
        text = pa.array(lines, pa.string()).slice(cut)
        offsets, data = text.buffers()[1], text.buffers()[2]
        selected = (np.array([rng.random() for _ in range(len(text))]) < 0.9).view(np.uint8)
        groups = [[rng.choice([b"a", b"b", b"ts", b"msg", b"\xc3\xa9", b"k.k"]) for _ in range(rng.randint(1, 4))]
                  for _ in range(rng.randint(0, 16))]
        native.json_entries(offsets, data, selected, text.offset, len(text), rng.choice([0, 1, 8, 1000]), groups)
        spec = [(rng.randint(0, 10), rng.random() < 0.5) for _ in range(rng.randint(0, 16))]
        native.clf_fields(offsets, data, selected, text.offset, len(text), spec)
        ends = [b"", b"\n", b"\r\n", b"\n\n"]
        records = pa.array([line.encode() + rng.choice(ends) for line in lines], pa.binary()).slice(cut)
        part = (records.buffers()[1], records.buffers()[2], records.offset, len(records))
        native.join_lines([part] * rng.randint(0, 3))
        skeletons(native, rng, text)
        raw = "".join(lines).encode()
        bounds = np.array(sorted(rng.randint(0, len(raw)) for _ in range(rng.randint(1, 5))), np.int64)
        trigrams.bitmaps(raw, bounds, bytes(rng.randint(0, 36) for _ in range(256)))
        rounds += 1
    print(f"{rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]))
