"""Experiments on the flag engine: exposures, outcomes, statistics and guardrails."""

from gateway.experiments import admin as _admin  # noqa: F401 - registers the admin endpoints
