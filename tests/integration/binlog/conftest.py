"""Fixtures of the binlog tests (defined in :mod:`harness` so the chaos tests can import them)."""

from tests.integration.binlog.harness import binlog_env

__all__ = ["binlog_env"]
