"""flagd flag-definition files as a flag source: parsing, JsonLogic targeting, bucketing."""

from gateway.flagd.definition import FlagdFlag, FlagdSet, parse_flagd
from gateway.flagd.evaluate import FlagdOutcome, evaluate_flagd

__all__ = ["FlagdFlag", "FlagdOutcome", "FlagdSet", "evaluate_flagd", "parse_flagd"]
