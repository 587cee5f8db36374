"""Failures that are not the user's file: unreadable files, plugins that raise, bugs. Still no traceback."""

from __future__ import annotations

from pathlib import Path

import pluggy
import pytest
from cli_helpers import job_doc, write_yaml

import mljob.local.jobfiles
from mljob import hookimpl
from mljob.cli.app import main
from mljob.local.jobfiles import JobFileError, load_jobs, read_text
from mljob.plugins import load_plugins


def test_permission_denied_is_a_message(monkeypatch, tmp_path):
    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(JobFileError) as caught:
        read_text(str(tmp_path / "job.yaml"))
    assert caught.value.lines == [f"{tmp_path / 'job.yaml'}: permission denied"]


def test_load_jobs_returns_only_valid_jobs(fake_plugin, tmp_path):
    (item,) = load_jobs(str(write_yaml(tmp_path / "job.yaml", job_doc())))
    assert item.ok
    assert item.job is not None
    assert item.job.name == "mnist"


class Exploding:
    @hookimpl
    def mljob_mutate_pod(self, job, replica, pod):
        raise RuntimeError("sidecar registry unreachable")


def test_a_plugin_that_raises_during_render_is_reported(runner, fake_plugin, tmp_path, monkeypatch):
    from mljob.cli.app import app

    monkeypatch.setattr(mljob.local.jobfiles, "load_plugins", lambda: load_plugins(extra=[Exploding()]))
    result = runner.invoke(app, ["render", str(write_yaml(tmp_path / "job.yaml", job_doc()))])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "failed in mljob_mutate_pod: RuntimeError: sidecar registry unreachable" in result.stderr
    assert "Traceback" not in result.output


def test_an_invalid_plugin_is_reported(runner, fake_plugin, tmp_path, monkeypatch):
    from mljob.cli.app import app

    def invalid() -> None:
        raise pluggy.PluginValidationError(object(), "unknown hook 'mljob_validat' in plugin 'typo'")

    monkeypatch.setattr(mljob.local.jobfiles, "load_plugins", invalid)
    result = runner.invoke(app, ["validate", str(write_yaml(tmp_path / "job.yaml", job_doc()))])
    assert result.exit_code == 1
    assert result.stderr == "a plugin is invalid: unknown hook 'mljob_validat' in plugin 'typo'\n"


def test_a_bug_is_one_line_with_a_way_to_see_more(monkeypatch, capsys, tmp_path):
    def bug(path: str) -> tuple[str, str]:
        raise KeyError("oops")

    monkeypatch.setattr(mljob.local.jobfiles, "read_text", bug)
    monkeypatch.delenv("MLJOB_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["validate", str(tmp_path / "job.yaml")])
    assert exited.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("mljob: internal error: KeyError: 'oops'")
    assert "MLJOB_DEBUG=1" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    def bug(path: str) -> tuple[str, str]:
        raise KeyError("oops")

    monkeypatch.setattr(mljob.local.jobfiles, "read_text", bug)
    monkeypatch.setenv("MLJOB_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["validate", str(tmp_path / "job.yaml")])


def test_main_exits_zero_on_success(fake_plugin, tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["validate", str(write_yaml(tmp_path / "job.yaml", job_doc()))])
    assert exited.value.code == 0
