"""The real install path, once: the core and this plugin built as wheels and installed into a fresh
virtual environment, where ``mljob plugins`` finds the framework through its entry point alone.

The repository's own environment has every plugin installed in editable mode, which says nothing
about what the package ships. Here nothing of mljob is present but the two wheels. Their
dependencies (pydantic, pluggy, typer, ...) are borrowed from the running environment through a
``.pth`` file pointing at a folder of links to its site-packages, minus every ``mljob*``
distribution and editable finder, so the test needs no network and installs nothing twice: the
wheels go in with ``--no-deps --no-index``, by this environment's pip (``pip --python``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml

PLUGIN = Path(__file__).resolve().parents[1]
ROOT = PLUGIN.parents[1]

pytestmark = pytest.mark.slow


def run(*command: str | Path) -> str:
    """Run ``command`` outside the work tree (``python -c`` would import ``mljob`` from the current folder)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, cwd=tempfile.gettempdir(), env=env, timeout=600
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the core's and the JAX plugin's wheels, and no other mljob."""
    tmp = tmp_path_factory.mktemp("install")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    core = tmp / "src" / "mljob"  # a copy, so that building leaves nothing in the work tree
    core.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, core / name)
    shutil.copytree(ROOT / "mljob", core / "mljob", ignore=ignore)
    plugin = shutil.copytree(PLUGIN, tmp / "src" / "mljob-jax", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", tmp / "wheels", core, plugin)
    wheels = sorted((tmp / "wheels").glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["mljob", "mljob_jax"]

    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(*pip, "--python", python, "install", "--quiet", "--no-deps", "--no-index", *wheels)

    borrowed = tmp / "borrowed"
    borrowed.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("mljob", "__editable__", "_mljob")):
            (borrowed / entry.name).symlink_to(entry)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "borrowed-dependencies.pth").write_text(f"{borrowed}\n")
    return venv


def test_the_wheel_ships_the_module_its_types_and_the_entry_point(fresh: Path) -> None:
    wheel = next((fresh.parent / "wheels").glob("mljob_jax-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert archive.read(entry_points).decode().split() == ["[mljob]", "jax", "=", "mljob_jax"]
    assert {"mljob_jax/__init__.py", "mljob_jax/py.typed"} <= set(names)


def test_only_the_installed_wheels_provide_mljob(fresh: Path) -> None:
    python = fresh / "bin" / "python"
    found = run(python, "-c", "import mljob, mljob_jax; print(mljob.__file__); print(mljob_jax.__file__)").split()
    assert all(path.startswith(str(fresh)) for path in found), found
    assert run(python, "-c", "import importlib.util as u; print(u.find_spec('mljob_pytorch'))").strip() == "None"


def test_mljob_plugins_lists_the_framework_from_the_entry_point(fresh: Path) -> None:
    out = run(fresh / "bin" / "mljob", "plugins")
    assert "jax" in out
    assert "mljob-jax 0.1.0" in out
    assert "restart: Never" in out
    assert out.strip().splitlines()[-1] == "1 framework installed", out


def test_mljob_render_wires_the_example_for_a_cluster(fresh: Path) -> None:
    out = run(fresh / "bin" / "mljob", "render", ROOT / "examples" / "jax-distributed" / "job.yaml")
    pods = [doc for doc in yaml.safe_load_all(out) if doc and doc["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in pods] == [f"jax-distributed-worker-{i}" for i in range(3)]
    for index, pod in enumerate(pods):
        wired = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert wired["JAX_COORDINATOR_ADDRESS"] == "jax-distributed-worker-0.jax-distributed.default.svc:6666"
        assert (wired["JAX_NUM_PROCESSES"], wired["JAX_PROCESS_ID"]) == ("3", str(index))
