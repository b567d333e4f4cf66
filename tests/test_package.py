"""The package as a user installs it: a wheel built from the tracked files, installed (not editable) into a fresh
virtual environment with no source tree on its path, runs `cycleqd eval` and `cycleqd suite verify` on the
built-in suites it ships.

The fresh environment gets cycleqd from the wheel alone; its third-party dependencies (torch, transformers, …) are
the test environment's, reached through a path entry (a .pth line adds the folder without running its .pth files,
so the editable install of the checkout there stays inert). That keeps the test to seconds of installing instead
of gigabytes, and still fails when a module or a data file is missing from the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the code reads from its own folders at run time; each must be in the wheel.
DATA_GLOBS = ["envs/data/**/*.json*", "db/migrations/**/*.py", "db/migrations/*.mako", "cycleqd/**/*.tcss"]
# The top-level folders are subpackages of cycleqd (cycleqd/envs links to ../envs, …); tui.py stays the checkout's.
SUBPACKAGES = ("envs", "db", "sandboxes", "serving", "evolver")
CHECKOUT_ONLY = ("tests/", "bench/", "scripts/", "tui.py")


def installed_name(path: str) -> str:
    """Where a file of the checkout lies in the wheel."""
    return f"cycleqd/{path}" if path.split("/", 1)[0] in SUBPACKAGES else path


def source_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True)  # fmt: skip
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file() or (ROOT / name).is_symlink()]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the files git knows (a clean clone's view), links kept as links, not the working folder."""
    copy = tmp_path_factory.mktemp("clone")
    for name in source_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():
            (copy / name).symlink_to(os.readlink(ROOT / name))
        else:
            shutil.copy2(ROOT / name, copy / name)
    return copy


@pytest.fixture(scope="module")
def wheel(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(checkout)], check=True, capture_output=True, text=True)  # fmt: skip
    (built,) = dist.glob("cycleqd-*.whl")
    return built


def test_the_wheel_ships_every_data_file_the_code_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {installed_name(str(p.relative_to(ROOT))) for pattern in DATA_GLOBS for p in ROOT.glob(pattern)}
    assert {"cycleqd/envs/data/os/dev.json", "cycleqd/envs/data/db/dev.jsonl", "cycleqd/db/migrations/env.py"} <= needed
    assert needed - names == set()
    modules = {installed_name(name) for name in source_files()
               if name.endswith(".py") and not name.startswith(CHECKOUT_ONLY)}  # fmt: skip
    assert modules - names == set()
    assert {name.split("/", 1)[0] for name in names if not name.startswith("cycleqd-")} == {"cycleqd"}


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin folder."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, text=True)  # fmt: skip
    return venv / "bin"


def clean_env() -> dict[str, str]:
    """No PYTHONPATH: nothing of the checkout may be importable."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.mark.slow
def test_an_installed_wheel_imports_from_its_own_site_packages(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u, cycleqd, cycleqd.db as d, cycleqd.envs as e, cycleqd.evolver, "
        "cycleqd.sandboxes, cycleqd.serving; print(cycleqd.__file__, e.__file__, d.__file__); "
        "assert not any(u.find_spec(n) for n in ('db', 'envs', 'evolver', 'sandboxes', 'serving', 'tui'))"
    )
    done = subprocess.run([str(installed / "python"), "-c", probe], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, check=True)  # fmt: skip
    site = installed.parent
    assert all(Path(p).is_relative_to(site) for p in done.stdout.split()), done.stdout


def test_a_plain_checkout_imports_every_subpackage_from_its_own_folders(checkout: Path) -> None:
    """No install: `python -S` runs no .pth file, so the test environment's editable finder is inert, and only the
    third-party packages are on the path. Tools that read the tree (linters, editors, a GPU machine without the
    editable install) see the same."""
    probe = (
        "import cycleqd.envs.registry as e, cycleqd.db.store as d, cycleqd.evolver.genome as g, "
        "cycleqd.sandboxes.pool as s, cycleqd.serving.model_ref as m, cycleqd.cli as c; "
        "print(*(x.__file__ for x in (e, d, g, s, m, c)))"
    )
    env = {**clean_env(), "PYTHONPATH": sysconfig.get_path("purelib")}
    done = subprocess.run([sys.executable, "-S", "-c", probe], cwd=checkout, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    files = [Path(p).resolve() for p in done.stdout.split()]
    assert [f.relative_to(checkout.resolve()).parts[0] for f in files] == [
        "envs",
        "db",
        "evolver",
        "sandboxes",
        "serving",
        "cycleqd",
    ]


@pytest.mark.slow
def test_an_installed_wheel_evaluates_and_verifies_its_builtin_suites(
    installed: Path,
    default_model,
    docker_engine,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    cycleqd = str(installed / "cycleqd")
    done = subprocess.run([cycleqd, "eval", "--tasks", "db", "--limit", "1", "--max-tokens", "32", "--db",
                           str(tmp_path / "wheel.db"), "--json"], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(done.stdout)["results"]
    assert (result["env"], result["episodes"], result["errors"]) == ("db", 1, 0)
    where_probe = "import cycleqd.envs.registry as r; print(r.BUILTIN_DATA)"
    where = subprocess.run([str(installed / "python"), "-c", where_probe],
                           cwd=tmp_path, env=clean_env(), capture_output=True, text=True, check=True)  # fmt: skip
    suite = Path(where.stdout.strip()) / "db" / "dev.jsonl"
    assert suite.is_relative_to(installed.parent)
    verified = subprocess.run([cycleqd, "suite", "verify", str(suite), "--json"], cwd=tmp_path, env=clean_env(),
                              capture_output=True, text=True, timeout=900)  # fmt: skip
    assert verified.returncode == 0, verified.stderr[-3000:]
    (report,) = json.loads(verified.stdout)
    assert report["run"] >= 10 and report["passed"] == report["run"]
