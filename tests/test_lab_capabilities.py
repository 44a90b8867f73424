"""The lab probes at start what this machine lacks, and names why (never simulates it)."""

from __future__ import annotations

import os

import pytest

from strategylab.chaos._lab import probe_capabilities


def test_root_on_this_machine_kind_has_every_capability() -> None:
    """As root (CI's machine kind), every fault can run: nothing reported missing. Elsewhere,
    each missing capability comes with its reason."""
    missing = probe_capabilities()
    if os.geteuid() == 0:
        assert missing == {}
    else:
        assert all(isinstance(why, str) and why for why in missing.values())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as an unprivileged user")
def test_an_unprivileged_user_is_told_what_needs_root() -> None:
    """With the effective uid of ``nobody``: the tmpfs volume and the throwaway server are
    reported missing, each with why (root for a mount; the server needs its own user)."""
    os.seteuid(65534)
    try:
        missing = probe_capabilities()
    finally:
        os.seteuid(0)
    tmpfs = missing["a size-limited tmpfs (storage full on a volume)"]
    assert "root" in tmpfs
    assert "signals through a pidfd (process kill, pause, CPU quota)" not in missing
