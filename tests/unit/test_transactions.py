"""The ORM-neutral transaction core: levels open, merge on commit, drop on rollback, deliver once."""

from __future__ import annotations

import pytest

from cachesync.transactions import Collected, LevelStack


def keys(*names: str) -> Collected:
    return Collected(keys=dict.fromkeys(names))


def add(stack: LevelStack[str | None], path: list[str | None], *names: str) -> None:
    stack.enter(path).collected.merge(keys(*names))


def test_enter_opens_every_level_of_the_path_and_returns_the_innermost() -> None:
    stack: LevelStack[str | None] = LevelStack()
    level = stack.enter([None, "s1", "s2"])
    assert level.token == "s2"
    assert [lv.token for lv in stack.levels] == [None, "s1", "s2"]
    assert stack.enter([None, "s1", "s2"]) is level  # the same level again
    assert stack.parent("s2") is stack.get("s1")
    assert stack.parent(None) is None
    with pytest.raises(ValueError):
        stack.enter([])


def test_a_transaction_without_savepoints_delivers_its_keys_at_commit_once() -> None:
    stack: LevelStack[str | None] = LevelStack()
    add(stack, [None], "a", "b")
    add(stack, [None], "b", "c")
    delivered = stack.commit(None)
    assert delivered is not None and delivered.all_keys() == ["a", "b", "c"]
    assert len(stack) == 0
    assert stack.commit(None) is None  # deliver-once: nothing is handed over twice


def test_a_released_savepoint_merges_into_its_parent_and_delivers_nothing_itself() -> None:
    stack: LevelStack[str | None] = LevelStack()
    add(stack, [None], "root")
    add(stack, [None, "s1"], "inner")
    assert stack.commit("s1") is None
    assert [lv.token for lv in stack.levels] == [None]
    assert stack.pending().all_keys() == ["root", "inner"]
    delivered = stack.commit(None)
    assert delivered is not None and delivered.all_keys() == ["root", "inner"]


def test_a_rolled_back_savepoint_is_dropped_with_the_levels_inside_it() -> None:
    stack: LevelStack[str | None] = LevelStack()
    add(stack, [None], "root")
    add(stack, [None, "s1"], "middle")
    add(stack, [None, "s1", "s2"], "inner")
    assert stack.commit("s2") is None  # released into s1 ...
    dropped = stack.rollback("s1")  # ... which then rolls back: both go
    assert set(dropped.all_keys()) == {"middle", "inner"}
    add(stack, [None, "s3"], "later")  # a later savepoint that commits still counts
    stack.commit("s3")
    delivered = stack.commit(None)
    assert delivered is not None and delivered.all_keys() == ["root", "later"]


def test_only_a_savepoint_with_keys_and_no_root_keys_still_delivers_at_the_root() -> None:
    stack: LevelStack[str | None] = LevelStack()
    add(stack, [None, "s1", "s2"], "deep")
    stack.commit("s2")
    stack.commit("s1")
    delivered = stack.commit(None)
    assert delivered is not None and delivered.all_keys() == ["deep"]


def test_a_rolled_back_root_delivers_nothing_and_empties_the_stack() -> None:
    stack: LevelStack[str | None] = LevelStack()
    add(stack, [None], "a")
    add(stack, [None, "s1"], "b")
    assert set(stack.rollback(None).all_keys()) == {"a", "b"}
    assert len(stack) == 0
    assert stack.commit(None) is None


def test_committing_a_level_commits_the_levels_still_open_inside_it() -> None:
    stack: LevelStack[str | None] = LevelStack()
    add(stack, [None, "s1", "s2"], "inner")
    delivered = stack.commit(None)
    assert delivered is not None and delivered.all_keys() == ["inner"]


def test_unknown_tokens_are_ignored() -> None:
    stack: LevelStack[str | None] = LevelStack()
    add(stack, [None], "a")
    assert stack.commit("never-opened") is None
    assert not stack.rollback("never-opened")
    assert stack.pending().all_keys() == ["a"]


def test_a_path_that_leaves_levels_behind_drops_them() -> None:
    stack: LevelStack[str | None] = LevelStack()
    add(stack, [None, "s1"], "s1-key")
    level = stack.enter([None, "s9"])
    assert [lv.token for lv in stack.levels] == [None, "s9"]
    assert level.token == "s9" and stack.pending().all_keys() == []


def test_a_merged_level_is_moved_not_copied() -> None:
    stack: LevelStack[str | None] = LevelStack()
    child = stack.enter([None, "s1"])
    child.collected.merge(keys("k"))
    stack.commit("s1")
    assert not child.collected  # a holder of the old level (a Django marker) sees it empty
    assert stack.pending().all_keys() == ["k"]


def test_intents_follow_the_same_rules_as_keys() -> None:
    stack: LevelStack[str | None] = LevelStack()
    stack.enter([None]).collected.intents["list:1"] = None
    stack.enter([None, "s1"]).collected.intents["list:2"] = None
    stack.rollback("s1")
    stack.enter([None, "s2"]).collected.intents["list:3"] = None
    stack.commit("s2")
    assert list(stack.pending().intents) == ["list:1", "list:3"]


def test_the_outbox_row_belongs_to_the_level_that_inserted_it() -> None:
    stack: LevelStack[str | None] = LevelStack()
    stack.enter([None, "s1"]).outbox_row = 7
    stack.commit("s1")  # released: the row is the parent's now
    owner = stack.outbox_row()
    assert owner is not None and owner.token is None and owner.outbox_row == 7

    other: LevelStack[str | None] = LevelStack()
    other.enter([None, "s1"]).outbox_row = 8
    other.rollback("s1")  # rolled back: the row went with the savepoint
    assert other.outbox_row() is None
