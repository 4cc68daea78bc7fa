"""Sinks do I/O and nothing else: the contracts (:mod:`.base`) and their Redis and Elasticsearch adapters."""

from .base import DocumentFailure, DocumentSink, KeySink
from .elasticsearch import SearchSink
from .redis import RedisSink

__all__ = ["DocumentFailure", "DocumentSink", "KeySink", "RedisSink", "SearchSink"]
