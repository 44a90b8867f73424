"""Stub: being written."""
from __future__ import annotations
class ClassificationRule:  # stub
    pass
class Classifier:  # stub
    pass
from ._taxonomy import ErrorType
def classify(exc: BaseException, component: str | None = None) -> ErrorType:
    return ErrorType.DATA_INGESTION_FAILURE
def register_rule(rule: object) -> None:
    pass
