"""Sinks do I/O and nothing else: :class:`RedisSink` deletes keys, :class:`SearchSink` writes documents."""

from .elasticsearch import SearchSink
from .redis import RedisSink

__all__ = ["RedisSink", "SearchSink"]
