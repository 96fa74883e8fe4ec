"""`python -m loglake` and the `loglake` command: the CLI, in a process of its own."""

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType


class _WithoutPandas(MetaPathFinder):
    """Refuses pandas. No part of loglake uses it, but pyarrow imports it, when it is installed, on
    the first Arrow array a process makes (to ask whether the array came from pandas): 0.15-0.3 s of CPU
    in each of the eight processes `loglake up` starts, all at once (measured). pyarrow takes the
    refusal as pandas not being installed."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {fullname!r} (loglake's processes do without it)",
                                      name=fullname)
        return None


def run() -> int:
    """The CLI's exit code. Only a process of loglake's own goes without pandas: tests calling the
    CLI in their own process keep it."""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
    from loglake.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
