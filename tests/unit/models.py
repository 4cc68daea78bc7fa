"""ORM-neutral test declarations shared by the unit tests."""

from __future__ import annotations

from cachesync import Projection, Sync, resolve
from cachesync.registry import TableSpec

USER_COLUMNS = {
    "id": "id",
    "username": "user_name",
    "nickname": "nickname",
    "email": "email",
    "state": "state",
    "active": "is_active",
}


def user_spec(index: str = "users", **overrides: object) -> TableSpec:
    sync = Sync(
        keys=["user:{id}", "user:by-name:{username}", "user:by-email:{email}"],
        search=Projection(
            index=index, fields=["username", "nickname"], when=lambda row: row["state"] == 0
        ),
        **overrides,  # type: ignore[arg-type]
    )
    return resolve("tests.User", sync, table="users", columns=USER_COLUMNS, primary_key=["id"])
