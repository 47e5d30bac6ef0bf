"""The core install (`pip install bonefrac`, no extras) predicts with the bundled model through onnxruntime, and a
command whose extra is missing says so in one line.

A missing extra is simulated, not uninstalled: the subprocesses below put a finder first on `sys.meta_path` that
refuses every module of every extra (`apps.extras.EXTRA_MODULES`) and records each attempt. The slow test does
the real thing: a fresh venv, `pip install` of this tree from the package index, the same prediction.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from bonefrac import FractureDetector
from bonefrac.apps.extras import EXTRA_MODULES, missing_modules
from bonefrac.paths import EXAMPLES_DIR

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXAMPLE = EXAMPLES_DIR / "IMG0000319.jpg"
BLOCKED = sorted({m for modules in EXTRA_MODULES.values() for m in modules})

#: Runs `bonefrac.apps.cli.main` on each argv of sys.argv[1] (a JSON list) with every extra's modules refused,
#: then prints one JSON line: each run's exit code and every refused import that was attempted.
RUNNER = """
import contextlib, io, json, sys
BLOCKED = set(json.loads(sys.argv[2]))
attempts = []

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
from bonefrac.apps.cli import main

codes = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        codes.append([main(argv), err.getvalue()])
print(json.dumps({"codes": codes, "attempts": sorted(set(attempts))}))
"""


def run_without_extras(argvs: list[list[str]], cwd: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(argvs), json.dumps(BLOCKED)],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    *printed, last = out.stdout.strip().splitlines()
    return {**json.loads(last), "stdout": printed}


def test_the_full_install_has_every_extra() -> None:
    assert {extra: missing_modules(extra) for extra in EXTRA_MODULES} == {e: [] for e in EXTRA_MODULES}


def test_the_core_predicts_writes_its_outputs_and_inspects_without_any_extra(tmp_path: Path) -> None:
    argvs = [
        ["predict", str(EXAMPLES_DIR), "--json", "--no-progress", "--csv", "p.csv", "--overlay-dir", "overlays"],
        ["inspect", str(FIXTURES)],
    ]
    result = run_without_extras(argvs, tmp_path)
    assert [code for code, _ in result["codes"]] == [0, 0], result["codes"]
    assert result["attempts"] == []  # nothing even tried to import an extra's module
    rows = {Path(r["path"]).name: r for r in map(json.loads, (line for line in result["stdout"] if line[:1] == "{"))}
    assert sorted(rows) == sorted(p.name for p in EXAMPLES_DIR.glob("*.jpg"))
    expected = FractureDetector.load().predict(EXAMPLE, heatmap=False).probability  # the same shipped model.onnx
    assert rows[EXAMPLE.name]["probability"] == pytest.approx(expected, abs=5e-7)  # printed to 6 decimals
    assert len(list((tmp_path / "overlays").glob("*.png"))) == len(rows)
    assert (tmp_path / "p.csv").read_text().count("\n") == len(rows) + 1


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["serve"], "bonefrac serve needs the serve extra: pip install 'bonefrac[serve]'"),
        (["dicom-node", "--port", "0"], "bonefrac dicom-node needs the dicom extra: pip install 'bonefrac[dicom]'"),
        (["train", "D", "--out", "run"], "bonefrac train needs the train extra: pip install 'bonefrac[train]'"),
        (["export", "--out", "m.onnx"], "bonefrac export needs the train extra: pip install 'bonefrac[train]'"),
        (["evaluate", "D", "--out", "ev"], "bonefrac evaluate needs the eval extra: pip install 'bonefrac[eval]'"),
        (
            ["calibrate", "D", "--out", "c"],
            "bonefrac calibrate needs the train extra: pip install 'bonefrac[train]'",
        ),
        (
            ["predict", str(EXAMPLE), "--dicom-out", "sr"],
            "bonefrac predict --dicom-out needs the dicom extra: pip install 'bonefrac[dicom]'",
        ),
    ],
)
def test_a_command_whose_extra_is_missing_says_so_in_one_line(argv: list[str], line: str, tmp_path: Path) -> None:
    result = run_without_extras([argv], tmp_path)
    [(code, stderr)] = result["codes"]
    assert code == 1 and stderr.splitlines() == [line]  # the line as it is: it names the command itself
    assert list(tmp_path.iterdir()) == []  # said before doing anything


def test_overlays_colour_heat_as_matplotlibs_inferno() -> None:
    colormaps = pytest.importorskip("matplotlib").colormaps
    from bonefrac.render import colormap

    rng = np.random.default_rng(0)
    edges = np.arange(257) / 256  # each table entry's lower edge, 1.0 included
    for dtype in (np.float32, np.float64):
        below = np.nextafter(edges.astype(dtype), dtype(0))  # just under each edge, in this dtype
        heat = np.concatenate([rng.random(10_000), edges, below, [-0.1, 1.5, np.nan]]).astype(dtype)
        expected = (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)
        np.testing.assert_array_equal(colormap(heat), expected)


def pip_environ() -> dict[str, str]:
    """The environment pip runs in here: its download cache in the session's cache folder (conftest), whatever
    the user's PIP_CACHE_DIR says."""
    return {**os.environ, "PIP_CACHE_DIR": str(Path(os.environ["XDG_CACHE_HOME"]) / "pip")}


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.mark.slow
def test_pip_install_without_extras_predicts_as_the_full_install(tmp_path: Path) -> None:
    """A fresh venv, `pip install` of this tree (from a copy: the build writes build/ and egg-info beside the
    sources) with dependencies from the index; skipped where the index cannot be reached."""
    source = tmp_path / "src-copy"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env_dir = tmp_path / "core-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=1800, env=pip_environ(),
    )  # fmt: skip
    if install.returncode != 0:
        unreachable = ("Could not find a version", "No matching distribution", "NewConnectionError", "unreachable")
        if any(text in install.stderr for text in unreachable):
            pytest.skip(f"the package index cannot be reached: {install.stderr.strip().splitlines()[-1]}")
        pytest.fail(install.stderr)
    probe = (
        "import importlib.util, json, sys; from bonefrac import FractureDetector; "
        f"p = FractureDetector.load().predict({str(EXAMPLE)!r}, heatmap=False).probability; "
        f"heavy = {['torch', 'fastapi', 'pynetdicom', 'matplotlib', 'highdicom', 'sklearn', 'onnx']!r}; "
        "found = [m for m in heavy if importlib.util.find_spec(m)]; "
        "print(json.dumps([p, found, sorted(set(heavy) & set(sys.modules))]))"
    )
    env = {**os.environ, "BONEFRAC_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    probability, installed, imported = json.loads(out.stdout)
    assert installed == [] and imported == []
    full = FractureDetector.load().predict(EXAMPLE, heatmap=False).probability
    # The same model.onnx on the same machine; onnxruntime may be another release, summing in another order
    # (a few float32 eps of the logit): 1e-6 relative.
    assert probability == pytest.approx(full, rel=1e-6)
    cli = subprocess.run(
        [str(env_dir / "bin" / "bonefrac"), "predict", str(EXAMPLE), "--json", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout.splitlines()[0])["probability"] == pytest.approx(full, abs=5e-7)
    assert _tree_size(env_dir) <= 600e6, f"{_tree_size(env_dir) / 1e6:.0f} MB"
