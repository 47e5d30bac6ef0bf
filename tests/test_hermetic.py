"""The test run keeps to itself: bonefrac's cache and the libraries' caches point outside the user's home, in
this process and in the subprocesses that the CLI tests start (conftest: `pytest_configure`, `_caches_outside_home`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import LIBRARY_HOME_DIRS

from bonefrac.paths import cache_dir


def test_caches_are_outside_home_here_and_in_subprocesses(_caches_outside_home: Path) -> None:
    home = Path.home().resolve()
    here = [cache_dir(), *(Path(os.environ[name]) for name in LIBRARY_HOME_DIRS)]
    assert cache_dir() == _caches_outside_home
    assert not any(path.resolve().is_relative_to(home) for path in here), (home, here)
    probe = "from bonefrac.paths import cache_dir; print(cache_dir())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert Path(out.stdout.strip()) == _caches_outside_home


def test_pip_caches_outside_home(_caches_outside_home: Path) -> None:
    """The slow core-install test runs pip, which downloads into its cache: that cache is the session's too."""
    from test_core_install import pip_environ

    out = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"],
        capture_output=True, text=True, check=True, timeout=60, env=pip_environ(),
    )  # fmt: skip
    pip_cache = Path(out.stdout.strip()).resolve()
    assert pip_cache.is_relative_to(Path(os.environ["XDG_CACHE_HOME"]).resolve())
    assert not pip_cache.is_relative_to(Path.home().resolve())
