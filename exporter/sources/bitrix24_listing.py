"""The users a Bitrix24 cycle reports: every active employee (user.get), or the ids the config lists, with
their names. Records are read the moment they arrive (exporter/sources/bitrix24_answers.py), and a user
unchanged since the last cycle is that cycle's object, so the snapshot being served and the next share it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from exporter.config import Bitrix24Config
from exporter.errors import ApiError
from exporter.snapshot import PortalUser
from exporter.sources.bitrix24_answers import Listed, distinct_users, read_records
from exporter.sources.bitrix24_client import BatchResult, Bitrix24Client, command
from exporter.sources.bitrix24_pages import PagedList, read_batches

# active employees: no dismissed users, and no extranet users (partners, clients), whom user.get shows a
# webhook only when they share a workgroup with its owner (docs/api-notes.md#b24-user-get-active)
_ACTIVE: dict[str, Any] = {"FILTER": {"ACTIVE": True, "USER_TYPE": "employee"}}
log = structlog.get_logger()


class UserListing:
    """One portal's users, listed whole in a first cycle (`every`) and, once a cycle has succeeded, by the
    commands (`commands`) a pipelined cycle sends in its first wave, read by `on_arrival` and completed by
    `from_wave`."""

    def __init__(self, client: Bitrix24Client, config: Bitrix24Config) -> None:
        self._client = client
        self._config = config
        self._pages = PagedList(client, "user.get", _ACTIVE, self._read_listed, config.name)
        self.known: Mapping[int, PortalUser] = {}  # the last good cycle's users, by id
        self._emails_missing = False

    async def every(self) -> list[PortalUser]:
        """The configured users, or every active employee (the first page directly, the rest batched)."""
        if self._config.users is not None:
            return await self._named(self._config.users)
        return distinct_users(await self._pages.every())

    def commands(self) -> dict[str, str]:
        """user.get commands for a pipelined wave: a name lookup per configured user, or every page the last
        `total` implies; none when the listing cannot go inside batch (then `every`, alongside the wave)."""
        if self._config.users is not None:
            return _name_commands(self._config.users)
        return self._pages.commands()

    def on_arrival(self, page: Any) -> Any:
        """An answer to one of `commands`, read as it arrives."""
        return self._pages.on_arrival(page) if self._config.users is None else self._read_named(page)

    async def from_wave(self, answers: BatchResult) -> list[PortalUser]:
        """The users the answers to `commands` show; pages the wave did not bring in full come directly, and a
        wave without a usable first page lists the usual way."""
        if self._config.users is not None:
            return self._names_from(answers, self._config.users)
        listed = await self._pages.completed(answers)
        return await self.every() if listed is None else distinct_users(listed)

    def check_emails(self, users: list[PortalUser]) -> None:
        """user.get shows EMAIL only with scope user or user_basic (docs/api-notes.md#org-user-get-fields):
        say so once when no user has one."""
        missing = self._config.names and bool(users) and not any(u.email for u in users)
        if missing and not self._emails_missing:
            log.warning("bitrix24_feature_off", portal=self._config.name, feature="email", scope="user",
                        hint="no user.get record has EMAIL; give the webhook the scope user or user_basic")
        self._emails_missing = missing

    def _read_listed(self, records: Iterable[Any]) -> list[Listed]:
        return read_records(records, names=self._config.names, employees=True, known=self.known)

    def _read_named(self, page: Any) -> Any:
        """A name lookup's answer: every record, a dismissed user's too (the config lists them by id)."""
        if not isinstance(page, list):
            return page
        return read_records(page, names=self._config.names, employees=False, known=self.known)

    async def _named(self, ids: tuple[int, ...]) -> list[PortalUser]:
        """Names from user.get by ID; a failed lookup leaves the name empty."""
        try:
            answers = await read_batches(self._client, _name_commands(ids), self._read_named, "user.get")
        except ApiError as exc:
            if exc.reason == "auth":
                raise
            log.warning("bitrix24_user_names_failed", portal=self._config.name, code=exc.code)
            answers = BatchResult()
        return self._names_from(answers, ids)

    @staticmethod
    def _names_from(answers: BatchResult, ids: tuple[int, ...]) -> list[PortalUser]:
        """`answers`: name lookups read by `_read_named`."""
        found: dict[int, PortalUser] = {}
        for uid in ids:
            page = answers.results.get(f"u{uid}")
            for user in page if isinstance(page, list) else []:
                if user is not None and user.user_id == uid:
                    found[uid] = user
        return [found.get(uid, PortalUser(uid, "")) for uid in ids]


def _name_commands(ids: Iterable[int]) -> dict[str, str]:
    return {f"u{uid}": command("user.get", {"ID": uid}) for uid in ids}
