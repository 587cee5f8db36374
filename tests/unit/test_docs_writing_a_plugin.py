"""docs/writing-a-plugin.md, every code block of it, run as a reader would.

The guide's blocks are of three kinds: a file (the line before it names the path, e.g.
`` `mljob-tally/pyproject.toml`: ``, and ``, continued:`` appends to it), the layout of a package
(a ``text`` block), and commands with what they print (``console``: ``$ `` starts a command, the
lines after it are output). The slow test writes the files into an empty folder, makes a throwaway
virtual environment that sees this checkout's ``.venv`` (so nothing is downloaded and ``.venv``
itself is not changed), and runs every command there in order: ``pip install -e`` of the example
packages (real entry points), ``mljob plugins``, ``validate``, ``render``, a real ``mljob run``, the
examples' own tests with the contract kit, building the wheel. Each line of output the guide
shows must appear in what the command printed: whitespace and table borders aside, with ``...``
standing for anything; a line that is only ``...`` stands for any number of lines.

pip runs offline: ``--no-index --no-build-isolation`` are added to ``pip install`` and ``pip
wheel`` (setuptools comes from ``.venv``), the only change made to a command.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-plugin.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
LABEL = re.compile(r"^`([^`]+)`(, continued)?:$")
BORDERS = re.compile(r"[│┃┏┓┗┛┡┩┳┻╇━─├┤┼╋└┘┌┐]+")


@dataclass
class Guide:
    files: dict[str, str] = field(default_factory=dict)
    layouts: list[list[str]] = field(default_factory=list)
    sessions: list[list[tuple[str, list[str]]]] = field(default_factory=list)
    steps: list[tuple[str, object]] = field(default_factory=list)
    """In page order: ("file", path) once per path, when it is complete enough to use; ("console", session)."""


def read_guide(text: str) -> Guide:
    guide = Guide()
    for match in FENCE.finditer(text):
        lang, body = match.group(1), match.group(2)
        before = text[: match.start()].rstrip("\n").splitlines()
        label = LABEL.match(before[-1]) if before else None
        if label:
            path, continued = label.group(1), bool(label.group(2))
            assert continued == (path in guide.files), f"{path}: 'continued' must follow the first block of a file"
            guide.files[path] = guide.files.get(path, "") + ("\n" if continued else "") + body
            if not continued:
                guide.steps.append(("file", path))
        elif lang == "text" and body.splitlines()[0].endswith("/"):
            root, *entries = body.splitlines()
            guide.layouts.append([root + entry.strip() for entry in entries])
        elif lang == "console":
            session: list[tuple[str, list[str]]] = []
            for line in body.splitlines():
                if line.startswith("$ "):
                    session.append((line[2:], []))
                else:
                    assert session, f"output before any command in a console block: {line!r}"
                    session[-1][1].append(line)
            guide.sessions.append(session)
            guide.steps.append(("console", session))
        else:
            raise AssertionError(f"a block the test does not know how to run ({lang or 'no language'}):\n{body}")
    return guide


def normal(line: str) -> str:
    return " ".join(BORDERS.sub(" ", line).split())


def shown_in(expected: str, printed: list[str]) -> bool:
    """Whether one line the guide shows appears in the printed lines, ``...`` matching anything."""
    parts = [normal(p) for p in normal(expected).split("...")]
    pattern = re.compile(".*?".join(re.escape(p) for p in parts))
    return any(pattern.search(normal(line)) for line in printed)


def test_every_block_is_a_file_a_layout_or_commands():
    guide = read_guide(GUIDE.read_text())
    assert len(guide.files) >= 7, sorted(guide.files)
    assert guide.layouts
    assert guide.sessions
    for path, text in guide.files.items():
        if path.endswith(".py"):
            ast.parse(text, filename=path)
        elif path.endswith(".toml"):
            tomllib.loads(text)
        elif path.endswith((".yaml", ".yml")):
            yaml.safe_load(text)
    for layout in guide.layouts:
        assert sorted(layout) == sorted(p for p in guide.files if p.startswith(layout[0].split("/")[0] + "/"))


def test_shown_output_matching():
    printed = ["│ tally  │ Counter │  7070 │   1 │ leader, runs until stopped │", "[mljob] job succeeded in 0.4s"]
    assert shown_in("│ tally │ Counter │ 7070 │ 1 │ leader, runs until stopped │", printed)
    assert shown_in("[mljob] job succeeded in ...", printed)
    assert not shown_in("│ tally │ Worker │ 7070 │", printed)


def throwaway_venv(folder: Path) -> Path:
    """A virtual environment whose own site-packages come first, then this checkout's ``.venv``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    purelib = subprocess.run(
        [str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in ours)
    (Path(purelib) / "zz_mljob_checkout.pth").write_text(lines)
    bin_dir = folder / "bin"
    python = bin_dir / "python"
    scripts = {
        "mljob": f"#!{python}\nfrom mljob.cli import main\nmain()\n",
        "pytest": f"#!{python}\nimport sys, pytest\nsys.exit(pytest.main())\n",
        "pip": f'#!/bin/bash\ncmd="$1"; shift\nexec "{python}" -m pip "$cmd" --no-index --no-build-isolation "$@"\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return folder


@pytest.mark.slow
def test_the_guide_works_from_an_empty_folder(tmp_path):
    guide = read_guide(GUIDE.read_text())
    work = tmp_path / "work"
    work.mkdir()
    venv = throwaway_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MLJOB_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(
        PATH=f"{venv / 'bin'}:/usr/bin:/bin",
        VIRTUAL_ENV=str(venv),
        COLUMNS="120",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    for kind, step in guide.steps:
        if kind == "file":
            assert isinstance(step, str)
            target = work / step
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(guide.files[step])
            continue
        assert isinstance(step, list)
        for command, shown in step:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            printed = (done.stdout + done.stderr).splitlines()
            assert done.returncode == 0, f"$ {command}\nexit status {done.returncode}\n" + "\n".join(printed[-60:])
            for line in shown:
                if normal(line) and normal(line) != "...":
                    assert shown_in(line, printed), f"$ {command}\nshows {line!r}, but printed:\n" + "\n".join(printed)
