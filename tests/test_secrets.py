"""Secrets from a private file or the environment: what is read, what is refused, what is said."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from strategylab._secrets import (
    ADMIN_TOKEN,
    SIGNING_KEY,
    read_secret_file,
    resolve_secret,
    write_secret_file,
)
from strategylab.errors import ConfigurationError

SECRET = "s3cr3t-value-4f2a"  # noqa: S105 - a test secret


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_file_is_read_with_its_final_newline_stripped(tmp_path: Path) -> None:
    """`echo KEY > file` gives KEY, not KEY plus a newline."""
    path = _private(tmp_path / "key", f"{SECRET}\n")
    assert read_secret_file(path, option="--signing-key-file") == SECRET


@pytest.mark.parametrize(
    ("content", "mode", "reason"),
    [
        (None, 0o600, "no such file"),
        ("", 0o600, "is empty"),
        (" \n\t\n", 0o600, "is empty"),
        (SECRET, 0o640, "group or to others (mode 0640)"),
        (SECRET, 0o604, "group or to others (mode 0604)"),
        (SECRET, 0o644, "chmod 600"),
    ],
    ids=["missing", "empty", "blank", "group-readable", "world-readable", "default-umask"],
)
def test_bad_file_is_refused_naming_option_and_path_not_content(
    tmp_path: Path, content: str | None, mode: int, reason: str
) -> None:
    """A missing, empty or non-private file is refused; the error names the option and path."""
    path = tmp_path / "key"
    if content is not None:
        path.write_text(content)
        path.chmod(mode)
    with pytest.raises(ConfigurationError) as caught:
        read_secret_file(path, option="--signing-key-file")
    message = str(caught.value)
    assert caught.value.key == "--signing-key-file"
    assert str(path) in message
    assert reason in message
    assert SECRET not in message


def test_directory_and_fifo_are_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO planted at the path is refused at once (opened non-blocking), as is a directory."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    for path in (fifo, tmp_path):
        with pytest.raises(ConfigurationError, match="not a regular file"):
            read_secret_file(path, option="--admin-token-file")


def test_non_utf8_and_oversized_files_are_refused(tmp_path: Path) -> None:
    """Binary junk or a huge file is not a key: refused, naming the path."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"\xff\xfe\x00key")
    junk.chmod(0o600)
    with pytest.raises(ConfigurationError, match="not UTF-8"):
        read_secret_file(junk, option="--signing-key-file")
    huge = _private(tmp_path / "huge", "a" * (64 * 1024 + 1))
    with pytest.raises(ConfigurationError, match="larger than"):
        read_secret_file(huge, option="--signing-key-file")


def test_both_value_and_file_are_refused(tmp_path: Path) -> None:
    """`--signing-key X --signing-key-file F` is ambiguous: refused, naming both options."""
    path = _private(tmp_path / "key", SECRET)
    with pytest.raises(ConfigurationError) as caught:
        resolve_secret("other-secret", path, SIGNING_KEY, environ={}, warn=io.StringIO())
    assert "--signing-key-file" in str(caught.value)
    assert "--signing-key;" in str(caught.value)
    assert "other-secret" not in str(caught.value)


def test_file_wins_over_environment(tmp_path: Path) -> None:
    """An option given explicitly beats the environment variable."""
    path = _private(tmp_path / "token", SECRET)
    environ = {"STRATEGYLAB_ADMIN_TOKEN": "from-env"}
    assert resolve_secret(None, path, ADMIN_TOKEN, environ=environ) == SECRET


def test_environment_is_used_when_no_option_is_given() -> None:
    """With no option, the environment variable supplies the secret; without it there is none."""
    environ = {"STRATEGYLAB_SIGNING_KEY": SECRET}
    assert resolve_secret(None, None, SIGNING_KEY, environ=environ) == SECRET
    assert resolve_secret(None, None, SIGNING_KEY, environ={}) is None


def test_empty_environment_variable_is_refused_by_name() -> None:
    """A set but empty variable is a mistake, not 'unsigned': refused, naming the variable."""
    with pytest.raises(ConfigurationError, match="STRATEGYLAB_ADMIN_TOKEN"):
        resolve_secret(None, None, ADMIN_TOKEN, environ={"STRATEGYLAB_ADMIN_TOKEN": ""})


def test_value_on_command_line_warns_once_without_the_value() -> None:
    """The old option still works, with one warning line that does not repeat the secret."""
    warn = io.StringIO()
    assert resolve_secret(SECRET, None, ADMIN_TOKEN, environ={}, warn=warn, prog="x") == SECRET
    lines = warn.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("x: warning: --admin-token is visible")
    assert SECRET not in warn.getvalue()


def test_write_secret_file_is_private_and_replaces_a_symlink(tmp_path: Path) -> None:
    """The demo's secret file is 0600, readable back, and a planted symlink is not followed."""
    target = tmp_path / "target"
    target.write_text("untouched")
    link = tmp_path / "signing.key"
    link.symlink_to(target)
    write_secret_file(link, SECRET)
    assert not link.is_symlink()
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert target.read_text() == "untouched"
    assert read_secret_file(link, option="--signing-key-file") == SECRET


def test_configs_never_show_the_secrets_in_their_repr(tmp_path: Path) -> None:
    """A logged or printed config does not leak the signing key or the admin token."""
    from strategylab.exchange import ExchangeConfig  # noqa: PLC0415
    from strategylab.market._feed import FeedConfig  # noqa: PLC0415
    from strategylab.node import NodeConfig  # noqa: PLC0415

    exchange = ExchangeConfig(data_dir=tmp_path, signing_key=SECRET.encode(), admin_token=SECRET)
    node = NodeConfig(
        exchange_url="ws://127.0.0.1:9/ws",
        symbols=("X",),
        data_dir=tmp_path,
        signing_key=SECRET.encode(),
    )
    feed = FeedConfig(urls=("ws://127.0.0.1:9/ws",), symbols=("X",), signing_key=SECRET.encode())
    assert SECRET not in repr(exchange)
    assert SECRET not in repr(node)
    assert SECRET not in repr(feed)
    assert exchange.admin_token == SECRET
