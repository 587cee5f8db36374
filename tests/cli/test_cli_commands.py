"""The ``mljob`` commands on good input: what they print and that it is exactly what the library computes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from cli_helpers import job_doc, write_yaml

from mljob.cli.app import app
from mljob.core.crd import crd_yaml
from mljob.core.render import PLACEHOLDER_UID, render
from mljob.core.validation import check_document
from mljob.plugins import load_plugins

REPO = Path(__file__).resolve().parents[2]


def test_validate_prints_one_line_per_job(runner, fake_plugin, tmp_path):
    path = write_yaml(tmp_path / "jobs.yaml", job_doc(), job_doc(roles={"Worker": 2, "PS": 1}, name="other"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ok: MLJob default/mnist (testfw): Chief x1, Worker x3",
        "ok: MLJob default/other (testfw): Worker x2, PS x1",
    ]
    assert result.stderr == ""


def test_validate_reads_stdin(runner, fake_plugin):
    result = runner.invoke(app, ["validate", "-"], input=yaml.safe_dump(job_doc()))
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: MLJob default/mnist (testfw): Chief x1, Worker x3\n"


def test_render_prints_exactly_the_rendered_objects(runner, fake_plugin, tmp_path):
    doc = job_doc()
    result = runner.invoke(app, ["render", str(write_yaml(tmp_path / "job.yaml", doc))])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("---\n")
    printed = list(yaml.safe_load_all(result.stdout))
    plugins = load_plugins()
    checked = check_document(doc, plugins)
    assert checked.job is not None
    assert checked.framework is not None
    assert printed == render(checked.job, checked.framework, plugins)
    assert [(o["kind"], o["metadata"]["name"]) for o in printed] == [
        ("Pod", "mnist-chief-0"),
        ("Pod", "mnist-worker-0"),
        ("Pod", "mnist-worker-1"),
        ("Pod", "mnist-worker-2"),
        ("Service", "mnist"),
    ]
    assert {o["metadata"]["ownerReferences"][0]["uid"] for o in printed} == {PLACEHOLDER_UID}


def test_render_uses_the_uid_of_the_file_or_the_option(runner, fake_plugin, tmp_path):
    doc = job_doc()
    doc["metadata"]["uid"] = "1234"
    path = write_yaml(tmp_path / "job.yaml", doc)
    from_file = list(yaml.safe_load_all(runner.invoke(app, ["render", str(path)]).stdout))
    assert {o["metadata"]["ownerReferences"][0]["uid"] for o in from_file} == {"1234"}
    from_option = list(yaml.safe_load_all(runner.invoke(app, ["render", "--uid", "abcd", str(path)]).stdout))
    assert {o["metadata"]["ownerReferences"][0]["uid"] for o in from_option} == {"abcd"}


def test_crd_prints_the_generated_crd(runner):
    result = runner.invoke(app, ["crd"])
    assert result.exit_code == 0
    assert result.stdout == crd_yaml()


def test_plugins_lists_frameworks_and_broken_plugins(runner, fake_plugin):
    result = runner.invoke(app, ["plugins"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "testfw" in out
    assert "mljob-testfw 1.0" in out
    # testfw's PS is the only role on port 2223: its row shows the port, the bounds and the flag together.
    ps_row = next(line for line in out.splitlines() if " PS " in line and "2223" in line)
    assert "0+" in ps_row
    assert "runs until stopped" in ps_row
    assert "broken plugin broken: ModuleNotFoundError: No module named 'mljob_no_such_module'" in out
    assert "1 plugin broken" in out


def test_plugins_disabled_by_environment(runner, fake_plugin, monkeypatch):
    monkeypatch.setenv("MLJOB_DISABLE_PLUGINS", "testfw,broken")
    result = runner.invoke(app, ["plugins"], terminal_width=200)
    assert result.exit_code == 0
    assert "testfw" not in result.stdout
    assert "broken" not in result.stdout


def test_no_arguments_shows_help(runner):
    result = runner.invoke(app, [])
    assert "validate" in result.output
    assert "render" in result.output
    assert "Traceback" not in result.output


def console_script() -> str:
    """The installed ``mljob`` script next to this interpreter (the venv's bin)."""
    script = Path(sys.executable).parent / "mljob"
    assert script.exists(), "mljob is not installed: pip install -e ."
    return str(script)


def run_script(*args: str, fake_plugin_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(fake_plugin_dir)}
    env.pop("MLJOB_DISABLE_PLUGINS", None)
    return subprocess.run(
        [console_script(), *args], input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_console_script_validate(fake_plugin_dir, tmp_path):
    good = run_script("validate", str(write_yaml(tmp_path / "job.yaml", job_doc())), fake_plugin_dir=fake_plugin_dir)
    assert (good.returncode, good.stdout, good.stderr) == (
        0,
        "ok: MLJob default/mnist (testfw): Chief x1, Worker x3\n",
        "",
    )
    bad = job_doc()
    bad["spec"]["replicaSpecs"]["Worker"]["replicas"] = "3"
    result = run_script("validate", "-", stdin=yaml.safe_dump(bad), fake_plugin_dir=fake_plugin_dir)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("spec.replicaSpecs.Worker.replicas: must be an integer, got '3'")
    assert "Traceback" not in result.stderr


def test_console_script_bad_files_never_show_a_traceback(fake_plugin_dir, tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    for path in (tmp_path, tmp_path / "missing.yaml", binary):
        result = run_script("render", str(path), fake_plugin_dir=fake_plugin_dir)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith(f"{path}: ")


def test_console_script_crd_matches_the_committed_file(fake_plugin_dir):
    result = run_script("crd", fake_plugin_dir=fake_plugin_dir)
    assert result.returncode == 0
    assert result.stdout == (REPO / "crds" / "mljob.io_mljobs.yaml").read_text()
