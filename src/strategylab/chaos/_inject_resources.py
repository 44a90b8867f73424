"""Resource faults: memory ballast in the node, CPU burner processes, a full disk.

- :class:`MemoryBallast` drives the node's opt-in chaos agent (``strategylab node
  --chaos-agent``): ``POST /admin/chaos/ballast`` with the Bearer admin token makes the node hold
  real, touched memory in its own process, because the node's degradation trigger reads its own
  RSS against ``--memory-budget`` (ballast in another process would not count). The size comes
  from the node's ``/status`` (``extra.chaos_agent``: ``rss_bytes``, ``ballast_bytes``,
  ``memory_budget``): enough to bring the RSS to 80 / 95 / 98 / 98 % of the budget (low, medium,
  high, critical), grown in ``steps`` (gradual). Heal posts 0.
- :class:`CpuBurner`: ``n`` busy-loop child processes (``python -c``), default the CPU count x
  the severity's scale (medium: one per CPU); tied to this process's life
  (:class:`~strategylab._children.ChildGuard`: the kernel's parent-death signal on Linux, else a
  watchdog) and stopped by heal.
- :class:`DiskFill`: a size-limited volume filled to ``ENOSPC`` (mode ``tmpfs``: root mounts a
  tmpfs of ``size`` bytes at the directory given, unless one is mounted there already, and fills
  it with a file of its own), or where that cannot be done, a file-size limit (mode ``fsize``:
  ``RLIMIT_FSIZE`` set on the writer process ``pid`` with ``prlimit``, so that its writes past
  the limit fail with ``EFBIG``; not ``ENOSPC``, said in :meth:`DiskFill.describe`). Heal removes
  only what it wrote and unmounts only what it mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import shutil
import sys
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

import aiohttp
import psutil

from strategylab._children import ChildGuard, ChildProcesses
from strategylab.clock import SYSTEM_CLOCK, Clock

from ._injector import Injector, InjectorError
from ._severity import Severity
from ._throwaway_pg import storage_capability

__all__ = ["MAX_VOLUME", "CpuBurner", "DiskFill", "DiskMode", "MemoryBallast", "fill_to_enospc"]

_HTTP_TIMEOUT: Final = 30.0
"""Seconds one call to the node's status service may take (a large ballast is touched first)."""
_FILL_BLOCK: Final = 1024 * 1024
MAX_VOLUME: Final = 1 << 30
"""The largest filesystem :class:`DiskFill` fills (1 GiB): never the machine's real disk."""
_BURN: Final = "while True:\n    pass\n"

DiskMode = Literal["auto", "tmpfs", "fsize"]


# ---------------------------------------------------------------------- memory


class MemoryBallast(Injector):
    """Ballast in the node's own process toward ``fraction`` of its ``--memory-budget``.

    ``status_url`` is the node's status service (``http://127.0.0.1:PORT``), ``token`` its admin
    token; the node must run with ``--chaos-agent`` and ``--memory-budget``. ``fraction``
    defaults to ``severity.pick(0.80, 0.95, 0.98, 0.98)``; ``steps`` (>= 1) posts the ballast in
    that many equal increments, ``step_interval`` seconds apart on ``clock`` (gradual growth).
    ``ballast`` is the bytes asked for. Raises :class:`InjectorError` when the node answers
    without a chaos agent or a budget, or refuses the call (the status and its message).
    """

    kind: ClassVar[str] = "memory"

    def __init__(
        self,
        status_url: str,
        token: str,
        severity: Severity = Severity.MEDIUM,
        *,
        fraction: float | None = None,
        steps: int = 1,
        step_interval: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "memory.ballast",
    ) -> None:
        super().__init__(name, severity)
        if not isinstance(status_url, str) or not status_url.startswith(("http://", "https://")):
            raise ValueError(f"status_url={status_url!r}: must be an http(s):// URL")
        if not isinstance(token, str) or not token:
            raise ValueError("token: must be the node's non-empty admin token")
        chosen = (
            severity.pick(low=0.80, medium=0.95, high=0.98, critical=0.98)
            if fraction is None
            else fraction
        )
        if not isinstance(chosen, int | float) or not 0 < chosen <= 1.5:
            raise ValueError(f"fraction={fraction!r}: must be a number in (0, 1.5]")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r}: must be an integer >= 1")
        if not step_interval >= 0:
            raise ValueError(f"step_interval={step_interval!r}: must be >= 0 (seconds)")
        self.status_url = status_url.rstrip("/")
        self.fraction = float(chosen)
        self.steps = steps
        self.step_interval = float(step_interval)
        self._token = token
        self._clock = clock
        self.ballast = 0
        """Bytes of ballast asked for by the last inject."""

    async def figures(self) -> dict[str, Any]:
        """The node's ``/status`` ``extra.chaos_agent``: ``ballast_bytes``, ``rss_bytes``,
        ``memory_budget``. Raises :class:`InjectorError` when it has none."""
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{self.status_url}/status") as response,
        ):
            if response.status != 200:
                raise InjectorError(f"{self.name}: GET /status answered {response.status}")
            body = await response.json()
        figures = body.get("extra", {}).get("chaos_agent")
        if not isinstance(figures, dict):
            raise InjectorError(f"{self.name}: the node runs without --chaos-agent")
        return figures

    async def _post(self, nbytes: int) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)
        headers = {"Authorization": f"Bearer {self._token}"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(
                f"{self.status_url}/admin/chaos/ballast", json={"bytes": nbytes}, headers=headers
            ) as response,
        ):
            body = await response.json(content_type=None)
            if response.status != 200:
                error = body.get("error") if isinstance(body, dict) else body
                raise InjectorError(
                    f"{self.name}: the node refused {nbytes} bytes of ballast: "
                    f"{response.status} {error}"
                )
        result: dict[str, Any] = body["result"]
        return result

    async def _inject(self) -> None:
        try:
            figures = await self.figures()
            budget = self._budget(figures)
            own = int(figures["rss_bytes"]) - int(figures["ballast_bytes"])
            self.ballast = max(int(budget * self.fraction) - own, 0)
            for step in range(1, self.steps + 1):
                if step > 1 and self.step_interval:
                    await self._clock.asleep(self.step_interval)
                await self._post(self.ballast * step // self.steps)
        except aiohttp.ClientError as exc:
            raise InjectorError(f"{self.name}: cannot reach {self.status_url}: {exc}") from exc
        except BaseException:
            with contextlib.suppress(InjectorError, aiohttp.ClientError):
                await self._post(0)
            raise

    def _budget(self, figures: dict[str, Any]) -> int:
        budget = figures.get("memory_budget")
        if not isinstance(budget, int) or budget <= 0:
            raise InjectorError(f"{self.name}: the node runs without --memory-budget")
        return budget

    async def _heal(self) -> None:
        try:
            await self._post(0)
        except aiohttp.ClientError as exc:
            raise InjectorError(f"{self.name}: cannot release the ballast: {exc}") from exc

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "fraction": self.fraction,
            "ballast_bytes": self.ballast,
            "steps": self.steps,
        }


# ---------------------------------------------------------------------- CPU


class CpuBurner(Injector):
    """``n`` busy-loop processes (default ``os.cpu_count()`` x the severity's scale, at least 1:
    one per CPU at medium). ``pids`` lists them while injected. They never outlive this process
    (parent-death signal or watchdog) and heal stops them (SIGTERM, SIGKILL after 5 s)."""

    kind: ClassVar[str] = "cpu"

    def __init__(
        self,
        severity: Severity = Severity.MEDIUM,
        *,
        n: int | None = None,
        name: str = "cpu.burner",
    ) -> None:
        super().__init__(name, severity)
        chosen = max(1, round((os.cpu_count() or 1) * severity.scale)) if n is None else n
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 1 <= chosen <= 256:
            raise ValueError(f"n={n!r}: must be an integer within 1..256 (processes)")
        self.n = chosen
        self._guard: ChildGuard | None = None
        self._children: ChildProcesses | None = None

    @property
    def pids(self) -> list[int]:
        """The burners' PIDs while injected."""
        return [] if self._children is None else [pid for _, pid in self._children.running]

    async def _inject(self) -> None:
        self._guard = ChildGuard()
        self._children = ChildProcesses(self._guard, stop_timeout=5.0)
        try:
            for i in range(self.n):
                await self._children.start(
                    f"burner-{i}",
                    sys.executable,
                    *("-I", "-S", "-c", _BURN),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
        except BaseException:
            await self._heal()
            raise

    async def _heal(self) -> None:
        children, self._children = self._children, None
        guard, self._guard = self._guard, None
        try:
            if children is not None:
                await children.aclose()
        finally:
            if guard is not None:
                await asyncio.to_thread(guard.close)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"processes": self.n}


# ---------------------------------------------------------------------- disk


class DiskFill(Injector):
    """A full disk under ``path``.

    Mode ``tmpfs`` (``auto`` picks it where :func:`storage_capability` allows: root, tmpfs):
    when ``path`` is not a mount point already, a tmpfs of ``size`` bytes (default 32 MiB x the
    severity's scale) is mounted there (``path`` is created when missing and must be empty);
    then a file of its own, ``path/.chaos-disk-fill``, is written until ``ENOSPC``. The volume
    must be at most :data:`MAX_VOLUME` bytes: it never fills a real disk. Heal deletes the file,
    unmounts what it mounted and removes the directory it created.

    Mode ``fsize`` (``auto`` picks it otherwise): the soft ``RLIMIT_FSIZE`` of the writer
    process ``pid`` is set to ``limit`` bytes (default 0: no file may grow) with ``prlimit``, so
    its writes that extend a file fail with ``EFBIG``; heal puts its old limit back. A file-size
    limit, not a full volume: :meth:`describe` says which was used.
    """

    kind: ClassVar[str] = "disk"

    def __init__(
        self,
        path: Path | str,
        severity: Severity = Severity.MEDIUM,
        *,
        mode: DiskMode = "auto",
        size: int | None = None,
        pid: int | None = None,
        limit: int = 0,
        name: str = "disk.fill",
    ) -> None:
        super().__init__(name, severity)
        if mode not in {"auto", "tmpfs", "fsize"}:
            raise ValueError(f"mode={mode!r}: expected 'auto', 'tmpfs' or 'fsize'")
        chosen = int(32 * 1024 * 1024 * severity.scale) if size is None else size
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 < chosen <= MAX_VOLUME:
            raise ValueError(f"size={size!r}: must be bytes within 1..{MAX_VOLUME}")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
            raise ValueError(f"pid={pid!r}: must be a process id > 0")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit={limit!r}: must be bytes >= 0")
        self.path = Path(path)
        self.size = chosen
        self.pid = pid
        self.limit = limit
        self._mode = mode
        self.used: Literal["tmpfs", "fsize"] | None = None
        """The mode the last inject used."""
        self.filled = 0
        """Bytes the filler file took (mode ``tmpfs``)."""
        self._mounted = False
        self._created = False
        self._filler: Path | None = None
        self._old_limit: tuple[int, int] | None = None

    def _chosen_mode(self) -> Literal["tmpfs", "fsize"] | None:
        if self._mode == "tmpfs":
            return "tmpfs"
        if self._mode == "fsize":
            return "fsize"
        if storage_capability() is None or os.path.ismount(self.path):
            return "tmpfs"
        return "fsize" if self.pid is not None else None

    def capability(self) -> str | None:
        """None when the chosen mode can run here, else why not."""
        mode = self._chosen_mode()
        if mode is None:
            return f"{storage_capability()}, and no pid was given for the RLIMIT_FSIZE fallback"
        if mode == "tmpfs" and not os.path.ismount(self.path):
            return storage_capability()
        if mode == "fsize":
            if self.pid is None:
                return "mode 'fsize' needs the pid of the writer to limit"
            if not hasattr(resource, "prlimit"):
                return "this platform has no prlimit (RLIMIT_FSIZE of another process)"
            if not psutil.pid_exists(self.pid):
                return f"no process {self.pid}"
        return None

    async def _inject(self) -> None:
        mode = self._chosen_mode()
        self.used = mode
        if mode == "fsize":
            await self._limit()
            return
        try:
            await self._mount()
            await self._fill()
        except BaseException:
            await self._heal()
            raise

    async def _mount(self) -> None:
        if self.path.is_mount():
            pass
        elif self.path.exists():
            if not self.path.is_dir() or any(self.path.iterdir()):
                raise InjectorError(f"{self.name}: {self.path} must be an empty directory")
        else:
            self.path.mkdir(parents=True)
            self._created = True
        if not self.path.is_mount():
            await _run("mount", "-t", "tmpfs", "-o", f"size={self.size}", "chaos-disk", self.path)
            self._mounted = True
        total = os.statvfs(self.path).f_blocks * os.statvfs(self.path).f_frsize
        if total > MAX_VOLUME:
            raise InjectorError(
                f"{self.name}: {self.path} is on a {total}-byte filesystem, over the "
                f"{MAX_VOLUME} bytes it may fill: it never fills a real disk"
            )

    async def _fill(self) -> None:
        path = self.path / ".chaos-disk-fill"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise InjectorError(f"{self.name}: cannot create {path}: {exc}") from exc
        self._filler = path
        try:
            self.filled = await asyncio.to_thread(fill_to_enospc, fd)
        finally:
            os.close(fd)

    async def _limit(self) -> None:
        assert self.pid is not None  # noqa: S101 - capability() checked it
        try:
            # Only the soft limit: lowering the hard one could not be undone without
            # CAP_SYS_RESOURCE, and the old soft limit is always within the hard one.
            old = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
            hard = old[1]
            soft = self.limit if hard == resource.RLIM_INFINITY else min(self.limit, hard)
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (soft, hard))
            self._old_limit = old
        except (OSError, ValueError) as exc:
            raise InjectorError(f"{self.name}: cannot limit process {self.pid}: {exc}") from exc

    async def _heal(self) -> None:
        problems: list[str] = []
        if self._old_limit is not None and self.pid is not None:
            old, self._old_limit = self._old_limit, None
            try:
                resource.prlimit(self.pid, resource.RLIMIT_FSIZE, old)
            except ProcessLookupError:
                pass  # the writer is gone: nothing left to put back
            except (OSError, ValueError) as exc:
                problems.append(f"cannot restore RLIMIT_FSIZE of {self.pid}: {exc}")
        filler, self._filler = self._filler, None
        if filler is not None:
            filler.unlink(missing_ok=True)
        if self._mounted:
            try:
                await _run("umount", self.path)
                self._mounted = False
            except InjectorError as exc:
                problems.append(str(exc))
        if self._created and not self._mounted:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when empty: what others wrote stays
            self._created = False
        if problems:
            raise InjectorError(f"{self.name}: " + "; ".join(problems))

    def describe(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"path": str(self.path), "mode": self.used or self._mode}
        if self.used == "fsize":
            figures |= {"pid": self.pid, "limit_bytes": self.limit, "error": "EFBIG"}
        else:
            figures |= {"size_bytes": self.size, "filled_bytes": self.filled, "error": "ENOSPC"}
        return super().describe() | figures


def fill_to_enospc(fd: int) -> int:
    """Write to ``fd`` until ``ENOSPC``; the bytes written. Other errors propagate."""
    block = b"\0" * _FILL_BLOCK
    written = 0
    size = _FILL_BLOCK
    while size:
        try:
            written += os.write(fd, block[:size])
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            size //= 2  # the last pages: smaller writes until not even one byte fits
    return written


async def _run(*argv: str | Path) -> None:
    """``mount``/``umount``: :class:`InjectorError` with its output when it fails."""
    command = shutil.which(str(argv[0])) or str(argv[0])
    process = await asyncio.create_subprocess_exec(
        command,
        *(str(a) for a in argv[1:]),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        text = output.decode(errors="replace").strip()[-300:]
        raise InjectorError(f"{argv[0]} {argv[-1]} failed ({process.returncode}): {text}")
