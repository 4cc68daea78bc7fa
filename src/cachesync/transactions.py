"""What one transaction collected, level by level: the ORM-neutral core of the fast path.

Both ORM integrations follow the same rules, which live here:

* every transaction LEVEL (the outermost transaction and each SAVEPOINT) has
  its own :class:`Collected` keys and ``invalidates()`` intents;
* a savepoint that commits (is released) merges into its parent level;
* a level that rolls back is dropped, with every level inside it;
* the OUTERMOST commit hands over everything once (:meth:`LevelStack.commit`
  returns it, and the stack is empty afterwards);
* a transaction records at most ONE outbox row: the level whose savepoint
  inserted it owns it (the row disappears if that savepoint rolls back), and a
  release passes it to the parent.

:class:`LevelStack` is pure bookkeeping: it does no I/O and knows no ORM. Each
integration only translates its own events into :meth:`~LevelStack.enter`,
:meth:`~LevelStack.commit` and :meth:`~LevelStack.rollback` (SQLAlchemy session
events in :mod:`cachesync.contrib.sqlalchemy.hooks`, Django's savepoint ids and
``on_commit`` in :mod:`cachesync.contrib.django.hooks`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .planning import add_template_keys, intent_keys
from .spec import Row
from .tables import TableSpec

__all__ = ["Collected", "Level", "LevelStack"]

T = TypeVar("T", bound=Hashable)


@dataclass(slots=True)
class Collected:
    """Keys collected by one transaction level: rendered keys and ``invalidates()`` intents."""

    keys: dict[str, None] = field(default_factory=dict)
    intents: dict[str, None] = field(default_factory=dict)

    def add_change(self, spec: TableSpec, before: Row | None, after: Row | None) -> None:
        """Collect the keys of one row change (complete rows keyed by attribute name)."""
        add_template_keys(self.keys, spec, before, after)
        if spec.invalidates is not None:  # a model without the callable has no intents
            self.intents.update(dict.fromkeys(intent_keys(spec, before, after)))

    def merge(self, other: Collected) -> None:
        """Fold a committed savepoint's keys into its parent."""
        self.keys.update(other.keys)
        self.intents.update(other.intents)

    def all_keys(self) -> list[str]:
        """Rendered keys then intents, each once: what the fast path deletes."""
        if not self.intents:
            return list(self.keys)  # already unique: the dict is the set
        return list(dict.fromkeys([*self.keys, *self.intents]))

    def clear(self) -> None:
        self.keys.clear()
        self.intents.clear()

    def __bool__(self) -> bool:
        return bool(self.keys or self.intents)


@dataclass(eq=False, slots=True)
class Level(Generic[T]):
    """One open transaction level: the integration's *token* for it and what it collected.

    ``outbox_row`` is the id of the outbox row this level's savepoint inserted,
    if any; it is gone if the level rolls back, its parent's if it commits.
    Levels compare by identity, so an integration may key its own data by them.
    """

    token: T
    collected: Collected = field(default_factory=Collected)
    outbox_row: int | None = None


class LevelStack(Generic[T]):
    """The open levels of one transaction, outermost first; tokens are the integration's.

    Never raises on an unexpected sequence of events (the hooks run inside the
    application's flush and commit): a token that is not on the stack is
    ignored, and a path that leaves the stack's entries behind drops them.
    """

    def __init__(self) -> None:
        self._levels: list[Level[T]] = []

    @property
    def levels(self) -> tuple[Level[T], ...]:
        """The open levels, outermost first."""
        return tuple(self._levels)

    def __len__(self) -> int:
        return len(self._levels)

    def __contains__(self, token: object) -> bool:
        return any(level.token == token for level in self._levels)

    def get(self, token: T) -> Level[T] | None:
        """The level of *token*, or None when it collected nothing (it is not on the stack)."""
        return next((level for level in self._levels if level.token == token), None)

    def parent(self, token: T) -> Level[T] | None:
        """The level just outside *token*'s, or None (outermost, or not on the stack)."""
        index = self._index(token)
        return self._levels[index - 1] if index is not None and index > 0 else None

    def enter(self, path: Sequence[T]) -> Level[T]:
        """The level of ``path[-1]``, opening the levels of *path* (outermost first) as needed.

        Entries beyond the part of the stack that *path* shares ended without the
        integration noticing; they are dropped (the caller resolves the fate of
        ended levels first with :meth:`commit` / :meth:`rollback`).
        """
        if not path:
            raise ValueError("enter() needs at least the outermost level's token")
        levels = self._levels
        if len(path) == 1 and len(levels) <= 1:  # the usual case: no savepoint
            if not levels:
                level = Level(path[0])  # the transaction's first change
                levels.append(level)
                return level
            if levels[0].token == path[0]:
                return levels[0]  # a second change in the same transaction
        shared = 0
        for level, token in zip(self._levels, path, strict=False):
            if level.token != token:
                break
            shared += 1
        del self._levels[shared:]
        self._levels.extend(Level(token) for token in path[shared:])
        return self._levels[-1]

    def commit(self, token: T) -> Collected | None:
        """Level *token* committed: merge it into its parent, or, for the outermost, hand it over.

        Levels still open inside it commit with it. Returns what the outermost
        commit must deliver (every committed level's keys), once: the stack is
        empty afterwards. Returns None for a savepoint, or a token not on the stack.
        """
        levels = self._levels
        if len(levels) == 1 and levels[0].token == token:
            return levels.pop().collected  # the usual case: the outermost level, alone
        index = self._index(token)
        if index is None:
            return None
        while len(self._levels) > index + 1:
            self._merge_top()
        if index > 0:
            self._merge_top()
            return None
        root = self._levels.pop()
        return root.collected

    def rollback(self, token: T) -> Collected:
        """Level *token* rolled back: drop it and every level inside it; returns what was dropped."""
        dropped = Collected()
        index = self._index(token)
        if index is None:
            return dropped
        for level in self._levels[index:]:
            dropped.merge(level.collected)
        del self._levels[index:]
        return dropped

    def pending(self) -> Collected:
        """The union of every open level: what commits if nothing more rolls back."""
        union = Collected()
        for level in self._levels:
            union.merge(level.collected)
        return union

    def outbox_row(self) -> Level[T] | None:
        """The level that owns this transaction's outbox row, or None."""
        return next((level for level in self._levels if level.outbox_row is not None), None)

    def _index(self, token: T) -> int | None:
        for i, level in enumerate(self._levels):
            if level.token == token:
                return i
        return None

    def _merge_top(self) -> None:
        child = self._levels.pop()
        parent = self._levels[-1]
        parent.collected.merge(child.collected)
        child.collected.clear()  # moved, not copied: whoever still holds the child sees it empty
        if parent.outbox_row is None:
            parent.outbox_row = child.outbox_row
        child.outbox_row = None
