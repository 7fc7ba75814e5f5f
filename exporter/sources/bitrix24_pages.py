"""Every record of a Bitrix24 list method (user.get, department.get, sonet_group.get), 50 to a page: the first
page directly, the others 50 pages to a `batch` when `total` says how many, else one by one along `next`
(docs/api-notes.md#b24-user-get-paging). Written once here for the user listing and the structure reader."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

from exporter.errors import ApiError
from exporter.sources.bitrix24_client import BatchCall, BatchResult, Bitrix24Client, chunk, command
from exporter.sources.concurrency import all_or_none

PAGE_SIZE = 50  # IRestService::LIST_LIMIT: every list method's page, whatever the request asks
T = TypeVar("T")
log = structlog.get_logger()


def records(body: Any, method: str) -> list[Any]:
    """A list method's `result`: a list, or an object PHP happened to key by ids; else invalid_response."""
    result = body.get("result") if isinstance(body, dict) else None
    if isinstance(result, dict):
        return list(result.values())
    if not isinstance(result, list):
        raise ApiError("invalid_response", f"{method} result is not a list")
    return result


def total_of(raw: Any) -> int | None:
    """A list answer's `total` (missing on an empty result: docs/api-notes.md#b24-user-get-paging)."""
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None


def next_offset(raw: Any) -> int | None:
    """A list answer's `next` (missing on the last page)."""
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else None


async def read_batch(client: Bitrix24Client, call: BatchCall, keys: Iterable[str], read: Callable[[Any], Any],
                     pause_key: str) -> BatchResult:
    """One batch whose answers to `keys` are read by `read` as soon as it is decoded, in the batch's own
    task: batches that finish together never hold their raw answers at once."""
    result = await client.batch(call, pause_key=pause_key)
    for key in keys:
        if key in result.results:
            result.results[key] = read(result.results[key])
    return result


@dataclass(slots=True)
class PagedList(Generic[T]):
    """One list method of one portal, read page by page with `read` applied to each page on arrival (a
    5,000-user listing is ~34 MB while its records are raw). Remembers, from one reading to the next, the
    last `total` (so a pipelined cycle can ask for every page at once) and whether the portal answers the
    method inside `batch` (some portals and proxies refuse it; then every page comes directly)."""

    client: Bitrix24Client
    method: str
    params: Mapping[str, Any]
    read: Callable[[list[Any]], list[T]]
    portal: str
    total: int | None = None  # `total` of the last reading; None: unknown
    in_batch: bool = True

    async def every(self) -> list[T]:
        """Every page: the first directly, then batched by `total`, or along `next` when it has none."""
        first = await self.client.call(self.method, {**self.params, "start": 0})
        found = self.read(records(first, self.method))
        total, nxt = total_of(first.get("total")), next_offset(first.get("next"))
        del first
        self.total = total
        if nxt is not None:
            if total is not None and total > nxt:
                found.extend(await self._batched(nxt, total))
            else:
                found.extend(await self._following(nxt))
        return found

    def commands(self) -> dict[str, str]:
        """Commands for every page the last `total` implies (the first too), keyed `p<start>`; none while the
        total is unknown or the method cannot go inside batch."""
        if self.total is None or not self.in_batch:
            return {}
        return {f"p{start}": command(self.method, {**self.params, "start": start})
                for start in range(0, max(self.total, 1), PAGE_SIZE)}

    def on_arrival(self, page: Any) -> Any:
        """A batched page, read as it arrives; anything but a page is left for `completed` to refuse."""
        return self.read(list(page.values()) if isinstance(page, dict) else page) \
            if isinstance(page, list | dict) else page

    async def completed(self, answers: BatchResult) -> list[T] | None:
        """The records of a wave's answers to `commands` (read by `on_arrival`), with the pages it did not
        bring in full (users new since the last reading, too) asked for directly; None when the wave holds no
        first page or no total to check the pages by: then the caller lists with `every`."""
        if "p0" not in answers.results:
            code = answers.errors.get("p0", ("missing", ""))[0]
            self._refused(code)
            return None
        total = total_of(answers.totals.get("p0"))
        if total is None:
            return None
        self.total = total
        return await self._complete(answers.results, range(0, max(total, 1), PAGE_SIZE), total)

    async def page(self, start: int) -> list[T]:
        return self.read(records(await self.client.call(self.method, {**self.params, "start": start}),
                                 self.method))

    async def _batched(self, first: int, total: int) -> list[T]:
        """Pages after the first, 50 pages per batch call. A page the batch did not answer in full (a portal
        or proxy that refuses the method inside batch, or reads the filter differently) is asked for
        directly, so no record is lost."""
        starts = range(first, total, PAGE_SIZE)
        answered: dict[str, Any] = {}
        if self.in_batch:
            wanted = {f"p{start}": command(self.method, {**self.params, "start": start}) for start in starts}
            try:
                for result in await all_or_none(read_batch(self.client, call, call.commands, self.on_arrival,
                                                           self.method) for call in chunk(wanted)):
                    answered.update(result.results)
                    if result.errors:  # refused command by command: list directly from now on
                        self.in_batch = False
            except ApiError as exc:
                if exc.reason == "auth":
                    raise
                self._refused(exc.code)
        return await self._complete(answered, starts, total)

    async def _complete(self, answered: Mapping[str, Any], starts: range, total: int) -> list[T]:
        pages: dict[int, list[T]] = {}
        for start in starts:
            page = answered.get(f"p{start}")
            if isinstance(page, list) and len(page) >= min(PAGE_SIZE, total - start):
                pages[start] = page
        wanted = [s for s in starts if s not in pages]
        for start, page in zip(wanted, await all_or_none(self.page(s) for s in wanted), strict=True):
            pages[start] = page
        return [record for start in starts for record in pages[start]]

    async def _following(self, start: int) -> list[T]:
        """Pages along `next` while it moves forward (a portal that repeats or goes back ends the listing)."""
        found: list[T] = []
        seen: set[int] = set()
        while start not in seen:
            seen.add(start)
            body = await self.client.call(self.method, {**self.params, "start": start})
            found.extend(self.read(records(body, self.method)))
            nxt = next_offset(body.get("next") if isinstance(body, dict) else None)
            if nxt is None or nxt <= start:
                break
            start = nxt
        return found

    def _refused(self, code: str) -> None:
        log.info("bitrix24_pages_batch_refused", portal=self.portal, method=self.method, code=code)
        self.in_batch = False


def as_is(page: list[Any]) -> list[Any]:
    """A page kept as it came (records the caller reads once the listing is whole)."""
    return page
