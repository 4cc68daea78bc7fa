"""Fixtures of the retry-path tests: a watched table, an index, fresh topics, sinks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from elasticsearch import Elasticsearch

from cachesync import Settings
from cachesync.connections import elasticsearch_client, redis_client
from cachesync.sinks import RedisSink, SearchSink
from tests.integration.kafka.helpers import Items, create_index, create_topics, unique


@pytest.fixture
def es(es_url: str) -> Iterator[Elasticsearch]:
    client = elasticsearch_client(Settings(es_url=es_url))
    yield client
    client.close()


@pytest.fixture
def index(es: Elasticsearch) -> Iterator[str]:
    name = unique("items")
    create_index(es, name)
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture
def items(mysql_url: str, index: str) -> Iterator[Items]:
    table = Items(mysql_url, index)
    yield table
    table.drop()


@pytest.fixture
def topics(kafka_bootstrap: str) -> tuple[str, str]:
    """A fresh one-partition retry topic and dead-letter topic."""
    retry, dead = unique("retry"), unique("dlq")
    create_topics(kafka_bootstrap, retry, dead, partitions=1)
    return retry, dead


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(Settings(redis_url=redis_url))
    yield client
    client.close()


@pytest.fixture
def redis_sink(r: redis.Redis) -> RedisSink:
    return RedisSink(r)


@pytest.fixture
def search_sink(es: Elasticsearch) -> SearchSink:
    return SearchSink(es)
