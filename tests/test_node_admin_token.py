"""`strategylab node` refuses an admin token shorter than the status service accepts, naming
where it came from, before anything is created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

STRATEGYLAB = str(Path(sys.executable).with_name("strategylab"))


def _node(tmp_path: Path, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [STRATEGYLAB, "node", "--exchange-url", "ws://127.0.0.1:1/ws"]
    argv += ["--data-dir", str(tmp_path / "n"), "--symbols", "A", "--status-port", "0", *extra]
    return subprocess.run(  # noqa: S603 - our own entry point
        argv, capture_output=True, text=True, timeout=30, env=env, check=False
    )


@pytest.mark.integration
def test_short_token_from_the_environment_is_a_usage_error(tmp_path: Path) -> None:
    env = {**os.environ, "STRATEGYLAB_ADMIN_TOKEN": "short"}
    done = _node(tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert "$STRATEGYLAB_ADMIN_TOKEN" in done.stderr
    assert "at least 16" in done.stderr
    assert "short" not in done.stderr.replace("STRATEGYLAB", "")  # the token is not echoed
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "n").exists()


@pytest.mark.integration
def test_short_token_from_a_file_is_a_usage_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("fifteen-chars!!\n")
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "STRATEGYLAB_ADMIN_TOKEN"}
    done = _node(tmp_path, "--admin-token-file", str(token), env=env)
    assert done.returncode == 2, done.stderr
    assert "--admin-token-file" in done.stderr
    assert "15 characters" in done.stderr
    assert not (tmp_path / "n").exists()
