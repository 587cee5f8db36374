"""Fixtures for the ``mljob`` command's tests (builders live in ``cli_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import install_fake_plugin
from typer.testing import CliRunner


@pytest.fixture(scope="session")
def fake_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_fake_plugin(tmp_path_factory.mktemp("fake-plugin"))


@pytest.fixture
def fake_plugin(fake_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ``testfw`` plugin (and a broken one) visible to ``load_plugins()`` in this test."""
    monkeypatch.syspath_prepend(str(fake_plugin_dir))
    monkeypatch.delenv("MLJOB_DISABLE_PLUGINS", raising=False)
    return fake_plugin_dir


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
