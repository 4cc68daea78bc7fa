"""The ``manage.py cachesync_*`` commands (thin wrappers over ``cachesync.cli``)."""
