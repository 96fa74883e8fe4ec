"""Which files to tail: include globs minus exclude globs."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from fnmatch import fnmatch


def discover(include: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Regular files matching any include glob (``**`` recurses) and no exclude glob."""
    excluded = list(exclude)
    found: set[str] = set()
    for pattern in include:
        for path in glob.glob(os.path.expanduser(pattern), recursive=True):
            if os.path.isfile(path) and not any(fnmatch(path, x) for x in excluded):
                found.add(os.path.abspath(path))
    return sorted(found)
