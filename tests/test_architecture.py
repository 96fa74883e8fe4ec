"""The import rules of docs/design.md, checked on the source: one direction of imports.

Every import counts, also one inside a function (a lazy import is still a dependency).
Run as a script with a path to check another tree: ``python tests/test_architecture.py DIR``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Who may import whom. ``loglake.core`` is the shared core; the rest of ``loglake`` is the
#: shell (CLI, supervisor, commands), which may import everything and which nothing imports.
ALLOWED: dict[str, set[str]] = {
    "loglake.core": set(),
    "storage": {"loglake.core"},
    "shippers": {"loglake.core"},
    "ingest": {"storage", "loglake.core"},
    "query": {"storage", "loglake.core"},
    "receive": {"loglake.core"},
    "loglake": {"loglake.core", "storage", "ingest", "query", "shippers", "receive"},
}
LAYERS = ("loglake.core", "storage", "shippers", "ingest", "query", "receive", "loglake")


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to (``loglake.core`` before ``loglake``)."""
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if "." in target:
                yield node.lineno, target
            else:
                # `from loglake import cli` (or `from .. import query`) names submodules.
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}".lstrip(".")


def violations(root: Path) -> list[str]:
    """Every import that crosses the design's rules, as ``file:line: a imports b``."""
    found = []
    for top in ("loglake", "storage", "shippers", "ingest", "query", "receive"):
        for path in sorted((root / top).rglob("*.py")):
            module = module_name(path, root)
            own = layer_of(module)
            assert own is not None
            for line, target in imports_of(path, module):
                other = layer_of(target)
                if other is None or other == own or other in ALLOWED[own]:
                    continue
                found.append(f"{path.relative_to(root)}:{line}: {own} imports {target}")
    return sorted(set(found))


def test_packages_import_only_what_the_design_allows() -> None:
    bad = violations(ROOT)
    assert not bad, "imports the design forbids:\n" + "\n".join(bad)


def test_the_rule_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    # The checker itself must catch the ways a violation hides.
    for top in ("loglake/core", "storage", "shippers", "ingest", "query", "receive"):
        (tmp_path / top).mkdir(parents=True)
        (tmp_path / top / "__init__.py").write_text("")
    (tmp_path / "loglake" / "__init__.py").write_text("")
    (tmp_path / "storage" / "lazy.py").write_text("def f():\n    from ingest.worker import IngestWorker\n")
    (tmp_path / "loglake" / "core" / "cfg.py").write_text("import query.planner\n")
    (tmp_path / "shippers" / "x.py").write_text("from loglake import cli\n")
    (tmp_path / "query" / "ok.py").write_text("from storage import catalog\nfrom . import ok\n")
    (tmp_path / "ingest" / "rel.py").write_text("from .. import query\n")
    bad = violations(tmp_path)
    assert any("storage/lazy.py:2: storage imports ingest.worker" in b for b in bad), bad
    assert any("loglake/core/cfg.py:1: loglake.core imports query.planner" in b for b in bad), bad
    assert any("shippers/x.py:1: shippers imports loglake.cli" in b for b in bad), bad
    assert any("ingest/rel.py:1: ingest imports query" in b for b in bad), bad
    assert not any("query/ok.py" in b for b in bad), bad


def imports_between_tests(root: Path) -> list[str]:
    """Every import of a test module (``tests.test_*``) under ``root/tests``, as ``file:line: imports x``."""
    found = []
    for path in sorted((root / "tests").rglob("*.py")):
        for line, target in imports_of(path, module_name(path, root)):
            if target.startswith("tests.test_"):
                found.append(f"{path.relative_to(root)}:{line}: imports {target}")
    return found


def test_no_test_file_imports_another_test_file(tmp_path: Path) -> None:
    # What tests share lives in tests/helpers/: importing a test module runs its module-level code and
    # collects its fixtures into the importer, and ties two files' tests together.
    bad = imports_between_tests(ROOT)
    assert not bad, "test files importing test files (move the shared code to tests/helpers/):\n" + "\n".join(bad)
    # The check itself sees the usual spellings, lazy ones included.
    (tmp_path / "tests" / "helpers").mkdir(parents=True)
    (tmp_path / "tests" / "test_a.py").write_text("from tests.test_b import x\nimport tests.test_c\n")
    (tmp_path / "tests" / "helpers" / "h.py").write_text("def f():\n    from tests import test_d\n")
    (tmp_path / "tests" / "test_ok.py").write_text("from tests.helpers.kafka import produce\n")
    assert [b.split(": ")[1] for b in imports_between_tests(tmp_path)] == [
        "imports tests.test_d", "imports tests.test_b", "imports tests.test_c"]


if __name__ == "__main__":
    problems = violations(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
    print("\n".join(problems) or "no violations")
    print(f"{len(problems)} violations")
    sys.exit(1 if problems else 0)
