"""Dependencies fit a library: every package the code imports is declared (the library's in `dependencies`, the
tests' and benchmarks' in the `dev` extra), and constraints.txt pins each declared package inside its range."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[list[Requirement], list[Requirement]]:
    """(runtime requirements, dev extra) as pyproject.toml states them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]], [
        Requirement(r) for r in project["optional-dependencies"]["dev"]
    ]


def imported_modules(files: list[Path]) -> dict[str, str]:
    """Top-level module name -> the first file importing it (import statements and pytest.importorskip)."""
    found: dict[str, str] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [str(node.args[0].value)]
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def undeclared(files: list[Path], requirements: list[Requirement], local: set[str]) -> dict[str, str]:
    allowed = {canonical(r.name) for r in requirements}
    distributions = packages_distributions()
    missing = {}
    for module, where in imported_modules(files).items():
        if module in sys.stdlib_module_names or module in local or module == "__future__":
            continue
        if not any(canonical(d) in allowed for d in distributions.get(module, [])):
            missing[module] = where
    return missing


def test_every_imported_package_is_declared() -> None:
    runtime, dev = declared()
    library = sorted((ROOT / "src" / "bonefrac").rglob("*.py"))
    assert library and undeclared(library, runtime, {"bonefrac"}) == {}
    tests_and_bench = sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    local = {"bonefrac"} | {p.stem for p in tests_and_bench}
    assert undeclared(tests_and_bench, runtime + dev, local) == {}


def test_constraints_pin_every_declared_package_inside_its_range() -> None:
    runtime, dev = declared()
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = Version(version)
    outside = {
        r.name: str(pins.get(canonical(r.name), "not pinned"))
        for r in runtime + dev
        if canonical(r.name) not in pins or not r.specifier.contains(pins[canonical(r.name)], prereleases=True)
    }
    assert outside == {}
