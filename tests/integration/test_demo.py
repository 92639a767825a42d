"""`sentinel-gw demo`, the README's first command, works on its embedded defaults."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import GATEWAY


def test_demo_runs_every_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "PYTHONPATH")}
    env["HOME"] = str(tmp_path)  # nothing from the user's own config or state may leak in
    out = subprocess.run(
        [*GATEWAY, "demo"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "every step behaved as expected" in text
    for expected in (
        "notes_echo",
        "Unknown tool: delete_everything",
        "-32004",
        "-32005",
        "-32003",
        "token has expired",
        "progress notifications",
    ):
        assert expected in text, expected
    assert not list(tmp_path.glob("**/killswitch.json")), "the demo must not touch the user's kill file"
