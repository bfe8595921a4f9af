"""Admission control: a limit on requests in flight per upstream, a priority queue before
it, and load shedding (503 + Retry-After) instead of unbounded waits.

`control` and `limit` decide (pure, clock passed in); `gate` drives them on the event loop.
"""

from gateway.admission.gate import Gate, Gates, Overloaded, admitted, merge_reports, rank_of

__all__ = ["Gate", "Gates", "Overloaded", "admitted", "merge_reports", "rank_of"]
