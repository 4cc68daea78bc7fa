"""Testing helpers for applications that use cachesync, and for cachesync itself.

Nothing here needs a service. Test what your declarations do::

    from cachesync.testing import capture_invalidations, plan_for, keys_of

    def test_renaming_drops_the_old_key():
        actions = plan_for(User, before={"id": 1, "username": "ann"},
                           after={"id": 1, "username": "bob"})
        assert keys_of(actions) == {"user:1", "user:by-name:ann", "user:by-name:bob"}

    def test_commit_invalidates(session):
        with capture_invalidations() as seen:
            session.add(User(id=2, username="cy")); session.commit()
        assert seen.keys == {"user:2", "user:by-name:cy"}

or wire an :class:`~cachesync.apply.Applier` or a sidecar to the in-memory
twins (:class:`MemoryKeySink`, :class:`MemoryDocumentSink`,
:class:`MemoryCheckpointStore`, :class:`RecordingFailureHandler`,
:class:`MemoryRetryQueue`), which keep the contracts of the real ones.
"""

from . import declarations, twins
from .declarations import *  # noqa: F403 - the public names are listed in each module
from .twins import *  # noqa: F403

__all__ = [*declarations.__all__, *twins.__all__]
