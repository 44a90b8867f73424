"""Helpers shared by the lab's tests."""

from __future__ import annotations

import psutil


def stray_children() -> list[psutil.Process]:
    """This test process's descendants, except multiprocessing's resource tracker (started
    once per interpreter by any earlier test that used a process pool, and meant to live as
    long as the interpreter does)."""
    stray = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "multiprocessing.resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.Error:
            continue  # gone while we looked: not a stray
        stray.append(child)
    return stray
