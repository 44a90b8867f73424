"""Stub: being written."""
from __future__ import annotations
class AuditLog:  # stub
    pass
class AuditRecord:  # stub
    pass
class AuditVerification:  # stub
    pass
