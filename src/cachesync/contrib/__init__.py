"""ORM integrations: :mod:`cachesync.contrib.sqlalchemy` and :mod:`cachesync.contrib.django`.

Each one reads its ORM's model metadata into :class:`cachesync.registry.TableSpec`
objects and feeds the after-commit fast path (:mod:`cachesync.fastpath`); nothing
else in cachesync imports an ORM.
"""
