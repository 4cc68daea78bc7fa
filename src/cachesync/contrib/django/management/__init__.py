"""Management commands: cachesync_listen, cachesync_retry, cachesync_relay, cachesync_reindex, cachesync_status, cachesync_dlq."""
