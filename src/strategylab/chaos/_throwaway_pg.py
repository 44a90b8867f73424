"""A throwaway PostgreSQL server the lab starts itself, for the faults a shared server must never
see (SIGSTOP, SIGKILL, a full disk).

:class:`ThrowawayPostgres` runs ``initdb`` into a fresh temporary directory, starts ``postgres``
on a free TCP port of 127.0.0.1 (trust authentication, its unix socket in the same directory) with
the server's durability defaults (``fsync``, ``synchronous_commit`` and ``full_page_writes`` stay
on: the lab tests durability), gives a DSN, and on exit stops the server and deletes the directory.
The binaries are found under ``/usr/lib/postgresql/*/bin`` (the newest version), else on ``PATH``.

PostgreSQL refuses to run as root. When the lab runs as root the server runs as the ``postgres``
user (``subprocess``'s ``user=``/``group=``: the uid changes in the child before ``exec``, and the
parent-death signal is set after it, so it survives) and the directory is handed to that user.
:meth:`ThrowawayPostgres.capability` says why none can start here (no ``initdb``, root without a
``postgres`` user).

``storage_limit`` (bytes) puts the whole directory on a tmpfs of that size, mounted for the
server and unmounted on exit (root only; :meth:`ThrowawayPostgres.capability` says so otherwise):
the volume :class:`~strategylab.chaos.PgStorageFull` fills. The postmaster is tied to the lab's
life: the kernel sends it SIGQUIT (immediate shutdown) when the lab dies, however it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import psutil
import psycopg

from strategylab._children import parent_death_hook

from ._injector import InjectorError

__all__ = ["MAX_CONNECTIONS", "ThrowawayPostgres", "find_pg_bin", "storage_capability"]

MAX_CONNECTIONS: Final = 40
"""The throwaway server's ``max_connections`` (small: pool exhaustion fills it in a moment)."""
_RUN_AS: Final = "postgres"
"""The user the server runs as when the lab is root."""
_MIN_STORAGE: Final = 64 * 1024 * 1024
"""The smallest ``storage_limit``: ``initdb`` writes about 40 MB (a 16 MB WAL segment included)."""


def find_pg_bin() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: the newest ``/usr/lib/postgresql/*/bin``
    that has both, else the one of ``initdb`` on ``PATH``; None when there is none."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=str, reverse=True)
    for base in sorted(found, key=lambda p: version(str(p)), reverse=True):
        if (base / "initdb").is_file() and (base / "postgres").is_file():
            return base
    initdb = shutil.which("initdb")
    if initdb is not None:
        base = Path(os.path.realpath(initdb)).parent
        if (base / "postgres").is_file():
            return base
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ThrowawayPostgres:
    """A PostgreSQL server of its own, started by ``async with`` and deleted on exit.

    ``start_timeout`` (seconds > 0) bounds ``initdb`` and each start; ``storage_limit`` (bytes,
    at least 64 MiB, or None) puts its files on a tmpfs of that size (root only); ``bin_dir``
    overrides where ``initdb`` and ``postgres`` are found. Entering raises :class:`InjectorError`
    naming what failed (no capability, a refused ``initdb``, a server that did not answer in
    time); :meth:`capability` says beforehand whether it can work here.
    """

    def __init__(
        self,
        *,
        start_timeout: float = 30.0,
        storage_limit: int | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        if not start_timeout > 0:
            raise ValueError(f"start_timeout={start_timeout!r}: must be > 0 (seconds)")
        if storage_limit is not None and (
            isinstance(storage_limit, bool)
            or not isinstance(storage_limit, int)
            or storage_limit < _MIN_STORAGE
        ):
            raise ValueError(
                f"storage_limit={storage_limit!r}: must be None or bytes >= {_MIN_STORAGE}"
            )
        self.start_timeout = float(start_timeout)
        self.storage_limit = storage_limit
        self._bin = bin_dir if bin_dir is not None else find_pg_bin()
        self._root: Path | None = None
        self._mounted = False
        self._port: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._hook = parent_death_hook(signal.SIGQUIT)

    # ------------------------------------------------------------------ probing

    def capability(self) -> str | None:
        """None when a server can be started here; otherwise why not."""
        if self._bin is None:
            return "no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin or PATH"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(_RUN_AS)
            except KeyError:
                return f"running as root, and PostgreSQL needs a non-root user: no {_RUN_AS!r} user"
            closed = _closed_to_others(Path(tempfile.gettempdir()))
            if closed is not None:
                return f"the {_RUN_AS!r} user cannot reach the temporary directory: {closed}"
        if self.storage_limit is not None:
            return storage_capability()
        return None

    # ------------------------------------------------------------------ facts

    @property
    def root(self) -> Path:
        """The temporary directory holding everything (data, socket, and with
        ``storage_limit``, the tmpfs mount point). Raises :class:`RuntimeError` before start."""
        if self._root is None:
            raise RuntimeError("the throwaway server is not started")
        return self._root

    @property
    def data_dir(self) -> Path:
        """``PGDATA``."""
        return self.root / "data"

    @property
    def port(self) -> int:
        """Its TCP port on 127.0.0.1 (the same after a restart)."""
        if self._port is None:
            raise RuntimeError("the throwaway server is not started")
        return self._port

    @property
    def dsn(self) -> str:
        """``host=127.0.0.1 port=P dbname=postgres user=postgres``: a libpq DSN (trust)."""
        return f"host=127.0.0.1 port={self.port} dbname=postgres user={_RUN_AS}"

    @property
    def running(self) -> bool:
        """The postmaster this object started is still running (a stopped one counts)."""
        return self._process is not None and self._process.returncode is None

    @property
    def postmaster_pid(self) -> int:
        """The postmaster's PID. Raises :class:`RuntimeError` when it is not running."""
        if self._process is None or self._process.returncode is not None:
            raise RuntimeError("the throwaway server is not running")
        return self._process.pid

    def server_pids(self) -> list[int]:
        """The postmaster's PID and its children's (backends, checkpointer, WAL writer...)."""
        try:
            master = psutil.Process(self.postmaster_pid)
            return [master.pid, *(c.pid for c in master.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    # ------------------------------------------------------------------ life

    async def __aenter__(self) -> Self:
        await self.create()
        try:
            await self.start()
        except BaseException:
            await self.destroy()
            raise
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.destroy()

    async def create(self) -> None:
        """Make the directory (and tmpfs), run ``initdb``. Raises :class:`InjectorError`."""
        reason = self.capability()
        if reason is not None:
            raise InjectorError(f"throwaway PostgreSQL: {reason}")
        self._root = Path(tempfile.mkdtemp(prefix="strategylab-pg-"))
        try:
            if self.storage_limit is not None:
                await _run(
                    "mount", "-t", "tmpfs", "-o", f"size={self.storage_limit},mode=0700",
                    "strategylab-pg", str(self._root), timeout=self.start_timeout,
                )  # fmt: skip
                self._mounted = True
            self._hand_over(self._root)
            assert self._bin is not None  # noqa: S101 - capability() checked it
            await _run(
                str(self._bin / "initdb"),
                *("-D", str(self.data_dir), "-A", "trust", "-U", _RUN_AS, "-E", "UTF8"),
                *("--no-instructions", "--locale", "C"),
                timeout=self.start_timeout,
                **self._as_server(),
            )
            self._port = _free_port()
        except BaseException:
            await self.destroy()
            raise

    async def start(self) -> None:
        """Start the server on its data directory and port; returns once it answers a query.
        Raises :class:`InjectorError` when it exits or does not answer within
        ``start_timeout``."""
        if self.running:
            return
        assert self._bin is not None  # noqa: S101 - create() checked it
        log = os.open(self.root / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._process = await asyncio.create_subprocess_exec(
                str(self._bin / "postgres"),
                *("-D", str(self.data_dir), "-p", str(self.port), "-k", str(self.root)),
                *("-c", "listen_addresses=127.0.0.1", "-c", f"max_connections={MAX_CONNECTIONS}"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                process_group=0,
                **self._as_server(),
            )
        finally:
            os.close(log)
        try:
            await self.wait_ready(self.start_timeout)
        except BaseException:
            await self.kill()
            raise

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109 - a deadline, said
        """Return once a query answers; :class:`InjectorError` after ``timeout`` seconds or
        when the postmaster exits first (its log's last line in the message)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: BaseException | None = None
        while loop.time() < deadline:
            if self._process is None or self._process.returncode is not None:
                raise InjectorError(f"throwaway PostgreSQL exited at start: {self._log_tail()}")
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, connect_timeout=2, autocommit=True
                )
            except psycopg.OperationalError as exc:
                last = exc
                # The server is starting: no event tells when it will accept a connection.
                await asyncio.sleep(0.05)
                continue
            async with conn:
                await conn.execute("SELECT 1")
            return
        raise InjectorError(f"throwaway PostgreSQL did not answer within {timeout}s: {last}")

    async def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after ``start_timeout``; a stopped server is continued
        first so that it can see the signal."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        for pid in self.server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(self.start_timeout):
                await process.wait()
        except TimeoutError:
            await self.kill()

    async def kill(self) -> None:
        """SIGKILL the postmaster (the crash a server fault needs) and wait until it and every
        backend it left are gone, so that :meth:`start` can take the data directory again."""
        process = self._process
        if process is None:
            return
        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(process.pid).children(recursive=True)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
        # Orphaned backends notice the postmaster's death and exit; a stopped one cannot.
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.resume()
        await asyncio.to_thread(psutil.wait_procs, children, self.start_timeout)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.is_running():
                    child.kill()

    async def destroy(self) -> None:
        """Stop the server, unmount what was mounted, delete the directory."""
        await self.stop()
        root, self._root = self._root, None
        if root is None:
            return
        if self._mounted:
            await _run("umount", str(root), timeout=self.start_timeout)
            self._mounted = False
        await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def _as_server(self) -> dict[str, Any]:
        """``subprocess`` keyword arguments running a child as the server's user when root,
        tied to this process by the parent-death signal (set after the uid change)."""
        kwargs: dict[str, Any] = {}
        if self._hook is not None:
            kwargs["preexec_fn"] = self._hook
        if os.geteuid() == 0:
            kwargs |= {"user": _RUN_AS, "group": _RUN_AS, "extra_groups": []}
        return kwargs

    def _hand_over(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(_RUN_AS)
            os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(0o700)

    def _log_tail(self) -> str:
        try:
            lines = (self.root / "server.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"


def _closed_to_others(path: Path) -> str | None:
    """The first directory on the way to ``path`` that other users may not enter, or None."""
    for part in (path.resolve(), *path.resolve().parents):
        try:
            mode = part.stat().st_mode
        except OSError as exc:
            return f"{part}: {exc}"
        if not mode & 0o001:
            return f"{part} is not searchable by other users (mode {mode & 0o777:o})"
    return None


def storage_capability() -> str | None:
    """None when a size-limited tmpfs can be mounted here (root, tmpfs in the kernel, ``mount``
    on PATH); otherwise why not."""
    if os.geteuid() != 0:
        return "needs root to mount a size-limited tmpfs"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    if "tmpfs" not in filesystems.split():
        return "the kernel has no tmpfs"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command on PATH"
    return None


async def _run(*argv: str, timeout: float, **kwargs: Any) -> None:  # noqa: ASYNC109
    """Run ``argv`` to its end; :class:`InjectorError` with its output when it fails."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise InjectorError(f"{Path(argv[0]).name}: no result within {timeout}s") from None
    if process.returncode != 0:
        text = output.decode(errors="replace").strip()[-500:]
        raise InjectorError(f"{Path(argv[0]).name} failed ({process.returncode}): {text}")
