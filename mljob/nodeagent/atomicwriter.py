"""A volume's files written as the kubelet's AtomicWriter writes them, so a reader never sees half an update.

Layout of the volume's folder (bind-mounted read-only into the containers)::

    ..2026_12_07_03_14_15.123456789/   the files of this version, at their paths
    ..data -> ..2026_12_07_03_14_15.123456789
    key    -> ..data/key               one link per top-level path of the payload

An update writes a new timestamped folder, then swaps ``..data`` with one rename (atomic), then adds and removes
the top-level links, then removes the old folder. A program that re-reads ``key`` sees either version, never a
mix; one that holds the file open keeps the old one. A ``subPath`` mount binds what the link pointed to at the
time, and so, as with the kubelet, is not updated.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from mljob.nodeagent.apidata import File

DATA = "..data"


def current(folder: Path) -> dict[str, File] | None:
    """The payload the folder holds now (None when it was never written)."""
    data = folder / DATA
    if not data.is_symlink():
        return None
    root = folder / os.readlink(data)
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = File(path.read_bytes(), path.stat().st_mode & 0o7777)
    return out


def write(folder: Path, payload: Mapping[str, File]) -> bool:
    """Make the folder hold exactly ``payload``; False when it already did (nothing written)."""
    folder.mkdir(parents=True, exist_ok=True)
    if current(folder) == dict(payload):
        return False
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    version = folder / stamp
    version.mkdir(mode=0o755)
    for rel, file in payload.items():
        target = version / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
        os.chmod(target, file.mode)
    old = os.readlink(folder / DATA) if (folder / DATA).is_symlink() else None
    tmp = folder / (DATA + "_tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(stamp, tmp)
    os.replace(tmp, folder / DATA)
    visible = {rel.split("/", 1)[0] for rel in payload}
    for name in visible:
        link = folder / name
        if not link.is_symlink():
            if link.exists():
                shutil.rmtree(link) if link.is_dir() else link.unlink()
            os.symlink(f"{DATA}/{name}", link)
    for entry in folder.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in visible and entry.is_symlink():
            entry.unlink()
    if old is not None and old != stamp:
        shutil.rmtree(folder / old, ignore_errors=True)
    return True
