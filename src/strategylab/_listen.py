"""Why a server could not listen, said in the flags a user typed: :func:`listen_failure`.

Bottom layer: imports only the standard library.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["listen_error", "listen_failure"]

_HOST_ERRORS = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL})
_PORT_ERRORS = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EPERM})


def listen_failure(host: str, port: int, exc: OSError) -> str:
    """One line saying why ``host``:``port`` cannot be listened on, naming the flag at fault:
    ``--host 'H': cannot listen: ...`` for a name that does not resolve or an address this
    machine does not have, ``--port N: cannot listen: ...`` for a port taken or not permitted,
    else ``--host 'H' --port N: cannot listen: ...``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, socket.gaierror) or exc.errno in _HOST_ERRORS:
        return f"--host {host!r}: cannot listen: {reason}"
    if exc.errno in _PORT_ERRORS:
        return f"--port {port}: cannot listen on {host}: {reason}"
    return f"--host {host!r} --port {port}: cannot listen: {reason}"


def listen_error(host: str, port: int, exc: OSError) -> OSError:
    """An ``OSError`` whose message is :func:`listen_failure`'s line (``str()`` of it is that line
    alone) and whose ``errno`` is ``exc``'s; raise it ``from exc``."""
    error = OSError(listen_failure(host, port, exc))
    error.errno = exc.errno
    return error
