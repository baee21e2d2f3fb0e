"""Tests share code only through tests/helpers/: no test module (and no helper) imports a test module
or conftest.py, so each test file can be read, moved or deleted on its own."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (`from tests import x` counts as `tests.x`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def forbidden(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" and len(parts) > 1 and (parts[1].startswith("test_") or parts[1] == "conftest")


def test_no_test_module_imports_another_test_module() -> None:
    files = sorted(TESTS.glob("test_*.py")) + sorted((TESTS / "helpers").glob("*.py"))
    assert len(files) > 40
    offenders = {f"{path.relative_to(TESTS)}: {module}" for path in files for module in imported_modules(path)
                 if forbidden(module)}
    assert not offenders, "import from tests/helpers/ instead:\n" + "\n".join(sorted(offenders))


def test_the_check_sees_the_import_forms(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text("import tests.test_a\nfrom tests import test_b\nfrom tests.conftest import Farm\n"
                      "def f():\n    from tests.test_c import x\n\nfrom tests.helpers.env import free_port\n")
    assert sorted(m for m in imported_modules(sample) if forbidden(m)) == [
        "tests.conftest", "tests.conftest.Farm", "tests.test_a", "tests.test_b", "tests.test_c", "tests.test_c.x"]
