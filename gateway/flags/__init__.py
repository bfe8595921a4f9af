"""Feature flags: evaluation, header injection, runtime changes, admin API."""

from gateway import ofrep as _ofrep  # noqa: F401 - registers the OFREP endpoints
from gateway.flags import admin as _admin  # noqa: F401 - registers the admin endpoints
from gateway.flags.engine import FlagEngine
from gateway.flags.evaluate import CompiledFlag, Evaluation, Reason, evaluate
from gateway.flags.store import FlagOverrides

__all__ = ["CompiledFlag", "Evaluation", "FlagEngine", "FlagOverrides", "Reason", "evaluate"]
