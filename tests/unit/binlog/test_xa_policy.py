"""XaHoldPolicy: the XA memory bounds are policy fields with one setting name each.

Pure tests (no service): the policy validates itself, ``xa_max_held_rows`` and
``xa_max_prepared`` reach it from the environment and from Django's
``settings.CACHESYNC`` under the same names, and bad values fail at start-up
naming the setting. ``tests/integration/binlog/test_xa.py`` shows the bound
reaching a real :class:`~cachesync.binlog.BinlogSource`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cachesync import Settings
from cachesync.binlog import SidecarPolicy, xa
from cachesync.contrib.django.conf import load_config
from cachesync.errors import ConfigurationError
from cachesync.policies import XaHoldPolicy


def test_defaults_are_the_former_constants() -> None:
    assert XaHoldPolicy() == XaHoldPolicy.DEFAULT == SidecarPolicy().xa
    assert (XaHoldPolicy.DEFAULT.max_held_rows, XaHoldPolicy.DEFAULT.max_prepared) == (
        100_000,
        10_000,
    )
    assert (xa.DEFAULT_MAX_HELD_ROWS, xa.DEFAULT_MAX_PREPARED) == (100_000, 10_000)
    assert Settings().xa_policy == XaHoldPolicy.DEFAULT


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: XaHoldPolicy(max_held_rows=-1), "XaHoldPolicy.max_held_rows must be >= 0"),
        (lambda: XaHoldPolicy(max_prepared=0), "XaHoldPolicy.max_prepared must be > 0"),
        (lambda: SidecarPolicy(xa=10), "SidecarPolicy.xa must be an XaHoldPolicy"),
    ],
)
def test_invalid_policies_name_the_field(make: object, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        make()  # type: ignore[operator]


def test_zero_held_rows_is_a_valid_bound() -> None:
    assert XaHoldPolicy(max_held_rows=0).max_held_rows == 0


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {"CACHESYNC_XA_MAX_HELD_ROWS": "500", "CACHESYNC_XA_MAX_PREPARED": "7"}
    )
    assert settings.xa_policy == XaHoldPolicy(max_held_rows=500, max_prepared=7)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"CACHESYNC_XA_MAX_HELD_ROWS": "-1"},
            r"setting xa_max_held_rows \(CACHESYNC_XA_MAX_HELD_ROWS\) must be >= 0",
        ),
        (
            {"CACHESYNC_XA_MAX_PREPARED": "0"},
            r"setting xa_max_prepared \(CACHESYNC_XA_MAX_PREPARED\) must be >= 1",
        ),
        ({"CACHESYNC_XA_MAX_PREPARED": "many"}, r"setting xa_max_prepared \(CACHESYNC_XA_MAX"),
    ],
)
def test_invalid_settings_name_the_setting(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        Settings.from_env(values)
    assert caught.value.context["setting"] in ("xa_max_held_rows", "xa_max_prepared")


def test_django_settings_use_the_same_names() -> None:
    django = SimpleNamespace(
        CACHES={}, DATABASES={}, CACHESYNC={"XA_MAX_HELD_ROWS": 20, "xa_max_prepared": 2}
    )
    config = load_config(django, {})
    assert config.ok and config.settings is not None
    assert config.settings.xa_policy == XaHoldPolicy(max_held_rows=20, max_prepared=2)
    bad = load_config(
        SimpleNamespace(CACHES={}, DATABASES={}, CACHESYNC={"XA_MAX_PREPARED": 0}), {}
    )
    assert not bad.ok
    assert any("xa_max_prepared" in str(p) for p in bad.problems)
