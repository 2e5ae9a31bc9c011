"""The test tree's own rules: plain helpers live in tests/support and fixtures in conftest.py
files, so no test module reaches into another test module or a conftest for a helper (a
helper imported that way moves, or is copied, and the two drift apart)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ALLOWED = "tests.support"


def _python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(statements: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, in functions, classes and blocks too (statements only: an
    import is never inside an expression, and skipping those keeps this quick)."""
    out: list[ast.Import | ast.ImportFrom] = []
    for node in statements:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, name, None)
            if isinstance(inner, list):
                out.extend(_imports(inner))
    return out


def _imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import, wherever it is (functions included);
    `from tests import x` counts as importing tests.x."""
    out: list[tuple[int, str]] = []
    for node in _imports(tree.body):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif node.level == 0 and node.module:
            if node.module == "tests":
                out.extend((node.lineno, f"tests.{alias.name}") for alias in node.names)
            else:
                out.append((node.lineno, node.module))
    return out


def offending_imports(source: str, label: str) -> list[str]:
    """Imports of tests.* outside tests.support, bare imports of a conftest or test module
    (reachable when pytest puts a folder on sys.path), and relative imports (which reach a
    sibling just the same), as "label:line: what"."""
    tree = ast.parse(source, filename=label)
    bad = [
        f"{label}:{line}: {name}"
        for line, name in _imported_modules(tree)
        if (
            (name == "tests" or name.startswith("tests."))
            and name != ALLOWED
            and not name.startswith(ALLOWED + ".")
        )
        or name.split(".")[0] == "conftest"
        or name.split(".")[0].startswith("test_")
    ]
    bad += [
        f"{label}:{node.lineno}: relative import"
        for node in _imports(tree.body)
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    return bad


def test_the_walk_finds_the_suites() -> None:
    names = {p.relative_to(TESTS).as_posix() for p in _python_files()}
    assert {"conftest.py", "support/builders.py", "unit/test_test_layout.py"} <= names
    assert any(n.startswith("e2e/test_") for n in names)


def test_helpers_live_in_support() -> None:
    """Outside tests/support a file is a test module, a conftest or a package marker; a
    helper module anywhere else is one a test would have to import from its folder."""
    stray = [
        p.relative_to(TESTS).as_posix()
        for p in _python_files()
        if p.relative_to(TESTS).parts[0] != "support"
        and p.name not in ("conftest.py", "__init__.py")
        and not p.name.startswith("test_")
    ]
    assert stray == [], f"move these to tests/support: {stray}"


def test_every_test_folder_is_a_package() -> None:
    """Without __init__.py pytest puts the folder itself on sys.path, and a test can then
    import a sibling helper by its bare name, which no import rule below can tell apart."""
    folders = {p.parent for p in _python_files()}
    missing = [f.relative_to(TESTS).as_posix() for f in folders if not (f / "__init__.py").exists()]
    assert missing == []


def test_no_test_file_imports_another_test_module_or_a_conftest() -> None:
    sources = {
        str(p.relative_to(TESTS.parent)): p.read_text(encoding="utf-8") for p in _python_files()
    }
    bad = [line for label, source in sources.items() for line in offending_imports(source, label)]
    assert bad == [], "import helpers from tests.support only:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("from tests.support.jws import b64url", False),
        ("import tests.support.redis", False),
        ("from tests.conftest import UNIT_ISSUER", True),
        ("from tests.unit.callers.test_callers import ok", True),
        ("from tests import conftest", True),
        ("import tests.e2e.conftest", True),
        ("def f():\n    from tests.security.conftest import World", True),
        ("class C:\n    def f(self):\n        if x:\n            import tests.unit", True),
        ("try:\n    pass\nexcept E:\n    from tests.e2e import stack", True),
        ("from .conftest import helper", True),
        ("from testsuite import x", False),
        ("import conftest", True),
        ("from test_callers import ok", True),
    ],
)
def test_the_rule_flags_what_it_should(source: str, flagged: bool) -> None:
    assert bool(offending_imports(source, "probe.py")) is flagged
