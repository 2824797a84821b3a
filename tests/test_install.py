"""A non-editable install works away from the checkout: the plugin ships as package data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (Debian's python, as nbdkit embeds it) with `pip install CHECKOUT`."""
    base = tmp_path_factory.mktemp("install")
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], base)
    assert made.returncode == 0, made.stderr
    # From a copy: pip builds in the source tree (build/, *.egg-info), never in the checkout.
    source = base / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "results", "build", "*.egg-info", "__pycache__", ".*_cache"))
    pip = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)], base)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return venv


@pytest.mark.slow
def test_an_installed_nbdfork_finds_its_plugin_in_site_packages(installed: Path) -> None:
    """`pip install .` copies the plugin into site-packages and serve's nbdkit line uses it."""
    out = _run([str(installed / "bin" / "nbdfork"), "serve", "--dry-run", "--size", "1M",
                "--socket", "/tmp/x.sock"], installed.parent)  # fmt: skip
    assert out.returncode == 0, out.stderr
    plugin = out.stdout.split()[out.stdout.split().index("python") + 1]
    assert "site-packages/nbdfork/plugin/nbdfork_plugin.py" in plugin
    assert Path(plugin).is_file() and not str(plugin).startswith(str(ROOT))


@pytest.mark.slow
def test_an_installed_nbdfork_runs_the_device_and_its_oracle(installed: Path) -> None:
    """The installed CLI serves the real device through nbdkit (the model's writers against
    the plugin from site-packages) and writes a report whose oracle counted stamped pages."""
    out = installed.parent / "model"
    proc = _run([str(installed / "bin" / "nbdfork"), "model", "--policy", "none",
                 "--seconds", "0.5", "--latency", "1ms", "--seed", "3", "--out", str(out)],
                installed.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "nbdfork.model-report/1"
    assert report["runs"][0]["stamped_pages"] > 0 and report["runs"][0]["writes"] > 0
    assert (out / "report.md").is_file()
