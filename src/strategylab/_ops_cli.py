"""`strategylab status` and `strategylab kill`: talk to a running node's status service."""

from __future__ import annotations
