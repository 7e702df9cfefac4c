"""The package as `pip install .` builds it: the schemas and the web page are inside,
and the daemon runs from it in another directory (no source tree on the path)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from .support import WS, Daemon

ROOT = Path(__file__).resolve().parent.parent


def _wheel(tmp: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp.glob("chatd-*.whl")
    return wheel


async def test_installed_package_serves_from_anywhere(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"chatd/schema.sql", "chatd/schema_pg.sql", "chatd/web/index.html",
            "chatd/web/app.js"} <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import chatd; print(chatd.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert where.startswith(str(site)), where  # the unpacked wheel, not the source tree

    old_cwd = Path.cwd()
    os.chdir(elsewhere)
    daemon = Daemon(elsewhere / "chat.db", env={"PYTHONPATH": str(site)})
    try:
        await daemon.start()
        async with WS.connect(daemon.url) as ws:
            await ws.login("alice")
            await ws.ok("create_channel", name="general")
    finally:
        await daemon.kill()
        os.chdir(old_cwd)
    assert (elsewhere / "chat.db").exists()
