"""The module's own Redis 6.2 (tests/jobs/conftest.py), for the worker loop against a Redis a test may fill."""

from tests.jobs.conftest import embedded, redis62

__all__ = ["embedded", "redis62"]
