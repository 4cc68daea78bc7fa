"""The Kafka retry path: retry queue, retry consumer, dead-letter topic (needs ``cachesync[kafka]``).

* :class:`RetryQueue` - the :class:`~cachesync.apply.FailureHandler` that parks
  failed actions on the retry topic (outbox table when Kafka is unreachable).
* :class:`RetryConsumer` - ``cachesync retry``: applies them with backoff, per-key
  order, re-reads documents, dead-letters what cannot be applied.
* :func:`list_dead_letters`, :func:`redrive` - ``cachesync dlq list|redrive``.

Inside: :mod:`.scheduler` is the consumer's pure core (per-key queues, backoff,
offset watermark), :mod:`.client` the only module that talks to kafka-python
(bounded sends: :func:`~cachesync.kafka.client.send_and_wait`).

The message formats are documented in :mod:`cachesync.kafka.codec`.
kafka-python is imported lazily and its errors never leave this package.
"""

from .codec import (
    DeadLetter,
    ErrorInfo,
    RecordRef,
    RetryMessage,
    decode_dead_letter,
    decode_message,
    encode_dead_letter,
    encode_message,
    message_key,
)
from .dead_letter import RedriveReport, StoredDeadLetter, list_dead_letters, redrive
from .retry_consumer import ConsumerStats, RetryConsumer, default_group
from .retry_queue import RetryQueue

__all__ = [
    "ConsumerStats",
    "DeadLetter",
    "ErrorInfo",
    "RecordRef",
    "RedriveReport",
    "RetryConsumer",
    "RetryMessage",
    "RetryQueue",
    "StoredDeadLetter",
    "decode_dead_letter",
    "decode_message",
    "default_group",
    "encode_dead_letter",
    "encode_message",
    "list_dead_letters",
    "message_key",
    "redrive",
]
