"""Dependencies fit a library: every package the code imports is declared (the library's in `dependencies`, the
tests' and benchmarks' in the `dev` extra), and constraints.txt pins each declared package inside its range.

The core install (`dependencies`) predicts with ONNX models; each command beyond it needs an extra
(`apps.extras`). So a module imports only the core and the extra of the commands that reach it: `MODULE_EXTRA`
names the parts that belong to one extra, and `LAZY` the few imports inside a core module's functions that only
an extra's path calls (tests/test_core_install.py runs the core with every extra's modules made unimportable)."""

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
    """(runtime requirements: the core and every extra but dev, dev extra) as pyproject.toml states them."""
    core, extras = declared_extras()
    return core + [r for name, reqs in extras.items() if name != "dev" for r in reqs], extras["dev"]


def declared_extras() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """(core requirements, extra -> its requirements), an extra's `bonefrac[other]` expanded into other's."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = {name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}

    def expand(name: str) -> list[Requirement]:
        out = []
        for r in raw[name]:
            out += [x for other in sorted(r.extras) for x in expand(other)] if canonical(r.name) == "bonefrac" else [r]
        return out

    return [Requirement(r) for r in project["dependencies"]], {name: expand(name) for name in raw}


#: The parts of the library that only one extra's commands reach (path under src/bonefrac -> the extra).
MODULE_EXTRA = {
    "apps/server/": "serve",
    "dicom/": "dicom",
    "evaluation/": "eval",
    "train/": "train",
    "models/classifier.py": "train",
    "models/centernet.py": "train",
    "models/efficientnet.py": "train",
}
#: (core module, module it imports inside a function) -> the extra of the only paths that call that function.
LAZY = {
    ("inference/backends.py", "torch"): "train",  # TorchBackend (--backend torch)
    ("inference/detector.py", "torch"): "train",  # FractureDetector.model, a checkpoint with no ONNX export
    ("inference/export.py", "torch"): "train",  # exporting (bonefrac export, the first load of a .pt)
    ("inference/export.py", "onnx"): "train",
    ("inference/quantize.py", "onnx"): "train",  # making an int8 export: bonefrac quantize
    ("models/checkpoint.py", "torch"): "train",  # reading and writing .pt files
    ("models/kinds/classifier.py", "torch"): "train",  # the graph and loss; decoding is numpy and scipy
    ("datasets/splits.py", "sklearn"): "train",  # stratified splits, made by bonefrac train
    ("models/ood.py", "sklearn"): "train",  # fitting the OOD Gaussian: bonefrac train and calibrate; scoring is numpy
}


def imported_modules(files: list[Path], run_time_only: bool = False) -> dict[str, str]:
    """Top-level module name -> the first file importing it (import statements and pytest.importorskip);
    `run_time_only`: leaving out the imports under `if TYPE_CHECKING:`, which never run."""
    found: dict[str, str] = {}
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for stmt in node.body
            for inner in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if run_time_only and id(node) in typing_only:
                continue
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


def distributions_of(requirements: list[Requirement]) -> set[str]:
    return {canonical(r.name) for r in requirements}


def test_each_module_imports_the_core_or_its_commands_extra() -> None:
    core, extras = declared_extras()
    distributions = packages_distributions()
    library = ROOT / "src" / "bonefrac"
    wrong = {}
    for path in sorted(library.rglob("*.py")):
        where = path.relative_to(library).as_posix()
        extra = next((e for prefix, e in MODULE_EXTRA.items() if where.startswith(prefix)), None)
        for module in imported_modules([path], run_time_only=True):
            if module in sys.stdlib_module_names or module in ("bonefrac", "__future__"):
                continue
            allowed = distributions_of(core + extras.get(extra or LAZY.get((where, module), ""), []))
            if not any(canonical(d) in allowed for d in distributions.get(module, [])):
                wrong[f"{where}: {module}"] = extra or "core"
    assert wrong == {}


def test_the_extras_are_what_the_commands_check() -> None:
    from bonefrac.apps.extras import EXTRA_MODULES

    core, extras = declared_extras()
    assert set(EXTRA_MODULES) | {"all", "dev"} == set(extras)
    assert distributions_of(extras["all"]) == distributions_of([r for e in EXTRA_MODULES for r in extras[e]])
    distributions = packages_distributions()
    for extra, modules in EXTRA_MODULES.items():
        in_extra = distributions_of(extras[extra])
        for module in modules:  # each module the check looks for is installed by that extra, not by the core
            assert {canonical(d) for d in distributions[module]} & in_extra, (extra, module)
            assert not {canonical(d) for d in distributions[module]} & distributions_of(core), (extra, module)
    # the judged core: none of these may come with a plain `pip install bonefrac`
    heavy = {"torch", "fastapi", "pynetdicom", "matplotlib", "highdicom", "scikit-learn", "pycocotools", "onnx"}
    assert not distributions_of(core) & heavy


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
