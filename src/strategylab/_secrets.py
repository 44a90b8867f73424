"""Secrets (the feed's signing key, the admin token, the audit key) from a private file or the
environment.

A value given on the command line is readable by every local user in ``/proc/PID/cmdline`` and
``ps``; a file readable only by its owner, or an environment variable (``/proc/PID/environ`` is
readable only by the same user and root), is not. Every command that takes ``--signing-key`` or
``--admin-token`` also takes ``--signing-key-file PATH`` / ``--admin-token-file PATH`` and reads
``STRATEGYLAB_SIGNING_KEY`` / ``STRATEGYLAB_ADMIN_TOKEN``; the old options still work, with a
one-line warning on stderr. The audit key has no value option at all: ``--audit-key-file PATH``
or ``STRATEGYLAB_AUDIT_KEY`` (:data:`AUDIT_KEY`, read by ``load_audit_key`` through
:func:`secret_from`, the same code path as the other secrets).

Errors name the option, the file or the variable, never the secret.

Bottom layer: imports only the standard library and :mod:`strategylab.errors`.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from strategylab.errors import ConfigurationError

__all__ = [
    "ADMIN_TOKEN",
    "AUDIT_KEY",
    "MAX_SECRET_BYTES",
    "SIGNING_KEY",
    "SecretOption",
    "read_secret_file",
    "resolve_secret",
    "secret_from",
    "write_secret_file",
]

MAX_SECRET_BYTES: Final = 64 * 1024
"""The largest secret file read, bytes; a larger one is refused (it is not a key)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretOption:
    """One secret's three sources: ``--NAME`` (visible to local users), ``--NAME-file``, ``ENV``."""

    name: str
    env: str
    help: str

    @property
    def flag(self) -> str:
        """The command-line option that takes the value itself, e.g. ``--signing-key``."""
        return f"--{self.name}"

    @property
    def file_flag(self) -> str:
        """The command-line option that takes a file, e.g. ``--signing-key-file``."""
        return f"--{self.name}-file"


SIGNING_KEY: Final = SecretOption(
    name="signing-key", env="STRATEGYLAB_SIGNING_KEY", help="HMAC key of the feed (hex or text)"
)
ADMIN_TOKEN: Final = SecretOption(
    name="admin-token", env="STRATEGYLAB_ADMIN_TOKEN", help="bearer token for /admin/*"
)
AUDIT_KEY: Final = SecretOption(
    name="audit-key", env="STRATEGYLAB_AUDIT_KEY", help="HMAC key of the audit log (>= 16 bytes)"
)
"""File or environment only: there is no ``--audit-key`` value option."""


def _refusal(mode: int) -> str | None:
    """Why a file of this mode cannot hold a secret, or ``None``."""
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if mode & 0o077:
        return (
            f"is accessible to its group or to others (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    return None


def read_secret_file(path: Path, *, option: str) -> str:
    """The secret in the file at ``path``, surrounding whitespace (a final newline) stripped.

    Raises :class:`ConfigurationError` naming ``option`` and ``path`` (never the content) when the
    file is missing or unreadable, is not a regular file, is readable or writable by its group or
    by others, is larger than :data:`MAX_SECRET_BYTES`, is not UTF-8, or holds only whitespace.
    A symlink is followed (mounted secrets often are one); the target's mode is what is checked.
    """

    def bad(reason: str) -> ConfigurationError:
        return ConfigurationError(option, str(path), reason)

    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the start; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise bad("no such file") from None
    except OSError as exc:
        raise bad(f"cannot be read: {exc.strerror}") from None
    try:
        refusal = _refusal(os.fstat(fd).st_mode)
        if refusal:
            raise bad(refusal)
        data = b""
        while len(data) <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise bad(f"is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise bad("is not UTF-8 text") from None
    if not text:
        raise bad("is empty")
    return text


def resolve_secret(
    value: str | None,
    path: Path | None,
    secret: SecretOption,
    *,
    environ: Mapping[str, str] | None = None,
    warn: TextIO | None = None,
    prog: str = "strategylab",
) -> str | None:
    """The secret from ``--NAME-file`` (``path``), ``--NAME`` (``value``) or the environment
    variable, else ``None``.

    Giving both ``--NAME`` and ``--NAME-file`` raises :class:`ConfigurationError` naming both. An
    option wins over the environment. ``--NAME`` writes one warning line to ``warn`` (default
    stderr) saying the value is visible to local users; the value is never written. An empty
    value or environment variable is refused (naming the option or the variable).
    """
    if value is not None and path is not None:
        raise ConfigurationError(
            secret.file_flag, str(path), f"contradicts {secret.flag}; give only one of them"
        )
    if value is not None:
        if not value:
            raise ConfigurationError(secret.flag, "", "must not be empty")
        (warn or sys.stderr).write(
            f"{prog}: warning: {secret.flag} is visible to every local user in the process "
            f"list; use {secret.file_flag} or ${secret.env}\n"
        )
        return value
    return secret_from(path, secret, environ=environ)


def secret_from(
    path: Path | None, secret: SecretOption, *, environ: Mapping[str, str] | None = None
) -> str | None:
    """The secret in the file at ``path`` (as :func:`read_secret_file`, errors naming
    ``--NAME-file``) when ``path`` is given, else the environment variable, else ``None``.

    An empty (or blank) environment variable is refused, naming the variable.
    """
    if path is not None:
        return read_secret_file(path, option=secret.file_flag)
    env = os.environ if environ is None else environ
    from_env = env.get(secret.env)
    if from_env is None:
        return None
    if not from_env.strip():
        raise ConfigurationError(secret.env, "", "must not be empty when set")
    return from_env.strip()


def write_secret_file(path: Path, secret: str) -> Path:
    """Write ``secret`` to a new file at ``path`` with mode 0600, replacing an old one.

    A symlink at ``path`` is removed, never followed. Returns ``path``. Raises ``OSError``.
    """
    path.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secret + "\n")
    return path
