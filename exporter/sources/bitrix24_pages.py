"""Every record of a Bitrix24 list method (user.get, department.get, sonet_group.get), 50 to a page: the first
page directly, the others 50 pages to a `batch` when `total` says how many, else one by one along `next`;
a pipelined wave's pages are checked by its `total`, or by their own lengths when it has none
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
# Codes with which a portal (or a proxy before it) refuses a method inside `batch`: its pages then come directly
# from now on. Any other error (a rate limit, a 5xx, a timeout) passes: direct pages for that reading only
# (docs/api-notes.md#b24-user-get-in-batch). Upper case, compared with `upper()` (docs/api-notes.md#b24-error-shape).
REFUSED_IN_BATCH = frozenset({"ACCESS_DENIED", "ERROR_BATCH_METHOD_NOT_ALLOWED", "ERROR_METHOD_NOT_FOUND",
                              "METHOD_NOT_FOUND"})
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


async def read_batches(client: Bitrix24Client, commands: Mapping[str, str], read: Callable[[Any], Any],
                       pause_key: str) -> BatchResult:
    """Every command, 50 to a batch, the batches at once (the client's slots and bucket pace them), each
    answer read by `read` on arrival; the results, errors and totals merged. One failed batch fails them all."""
    merged = BatchResult()
    for result in await all_or_none(read_batch(client, call, call.commands, read, pause_key)
                                    for call in chunk(commands)):
        merged.results.update(result.results)
        merged.errors.update(result.errors)
        merged.totals.update(result.totals)
    return merged


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
    # `total` was counted from the pages read, the wave having brought no `result_total`: a full last page
    # then leaves open whether more follow, so the next wave asks for one more page to see
    counted: bool = False

    async def every(self) -> list[T]:
        """Every page: the first directly, then batched by `total`, or along `next` when it has none."""
        first = await self.client.call(self.method, {**self.params, "start": 0})
        found = self.read(records(first, self.method))
        total, nxt = total_of(first.get("total")), next_offset(first.get("next"))
        del first
        self.total, self.counted = total, False
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
        return {f"p{start}": command(self.method, {**self.params, "start": start}) for start in self._planned()}

    def on_arrival(self, page: Any) -> Any:
        """A batched page, read as it arrives; anything but a page is left for `completed` to refuse."""
        return self.read(list(page.values()) if isinstance(page, dict) else page) \
            if isinstance(page, list | dict) else page

    async def completed(self, answers: BatchResult) -> list[T] | None:
        """The records of a wave's answers to `commands` (read by `on_arrival`), with the pages it did not
        bring in full (users new since the last reading, too) asked for directly; read by the pages' own
        lengths when the wave has no `result_total` for the first page. None when the portal refused the
        method inside the batch (or the first page is in no section): then the caller lists with `every`."""
        planned = self._planned()
        refusal = _refusal(answers.errors, (f"p{start}" for start in planned))
        if refusal is None and "p0" not in answers.results and "p0" not in answers.errors:
            refusal = "missing"
        if refusal is not None:
            self._refused(refusal)
            return None
        total = total_of(answers.totals.get("p0")) if "p0" in answers.results else None
        if total is None:
            return await self._by_length(answers.results, planned)
        self.total, self.counted = total, False
        return await self._complete(answers.results, range(0, max(total, 1), PAGE_SIZE), total)

    async def page(self, start: int) -> list[T]:
        return self.read(records(await self.client.call(self.method, {**self.params, "start": start}),
                                 self.method))

    def _planned(self) -> range:
        """The starts of the pages the last `total` implies; one more at a multiple of 50 when it was counted."""
        total = self.total or 0
        return range(0, total + 1 if self.counted else max(total, 1), PAGE_SIZE)

    async def _batched(self, first: int, total: int) -> list[T]:
        """Pages after the first, 50 pages per batch call. A page the batch did not answer in full (a portal
        or proxy that refuses the method inside batch, a passing error, or a filter read differently) is
        asked for directly, so no record is lost; only a refusal keeps later readings out of batch."""
        starts = range(first, total, PAGE_SIZE)
        answered: dict[str, Any] = {}
        if self.in_batch:
            wanted = {f"p{start}": command(self.method, {**self.params, "start": start}) for start in starts}
            try:
                answers = await read_batches(self.client, wanted, self.on_arrival, self.method)
                answered = answers.results
                refusal = _refusal(answers.errors, answers.errors)
                if refusal is not None:
                    self._refused(refusal)
            except ApiError as exc:
                if exc.reason == "auth":
                    raise
                if exc.code.upper() in REFUSED_IN_BATCH:
                    self._refused(exc.code)
                else:  # a passing fault: this reading's pages come directly, the next tries batch again
                    log.debug("bitrix24_pages_batch_failed", portal=self.portal, method=self.method, code=exc.code)
        return await self._complete(answered, starts, total)

    async def _complete(self, answered: Mapping[str, Any], starts: range, total: int) -> list[T]:
        pages: dict[int, list[T]] = {}
        for start in starts:
            page = answered.get(f"p{start}")
            if isinstance(page, list) and len(page) >= min(PAGE_SIZE, total - start):
                pages[start] = page
        await self._fill(pages, starts)
        return [record for start in starts for record in pages[start]]

    async def _by_length(self, answered: Mapping[str, Any], planned: range) -> list[T]:
        """The planned pages of a wave without `result_total` (PHP writes it as `[]` even for a list method,
        docs/api-notes.md#b24-batch-empty-list), checked by their own lengths: a page before the last must be
        full, else it is asked for again directly, and a short one ends the listing; a full last page may
        have more after it, read directly along `next`. `total` becomes the count read."""
        pages = {start: page for start in planned if isinstance(page := answered.get(f"p{start}"), list)}
        direct = set(await self._fill(pages, planned))
        found: list[T] = []
        for start in planned:
            page = pages[start]
            if len(page) < PAGE_SIZE and start != planned[-1] and start not in direct:
                page = await self.page(start)
            found.extend(page)
            if len(page) < PAGE_SIZE:
                break
        else:  # every planned page full: more may follow
            found.extend(await self._following(planned[-1] + PAGE_SIZE))
        self.total, self.counted = len(found), True
        return found

    async def _fill(self, pages: dict[int, list[T]], starts: range) -> list[int]:
        """Asks directly, all at once, for the pages of `starts` that `pages` lacks; returns their starts."""
        wanted = [s for s in starts if s not in pages]
        for start, page in zip(wanted, await all_or_none(self.page(s) for s in wanted), strict=True):
            pages[start] = page
        return wanted

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
        if self.in_batch:
            log.info("bitrix24_pages_batch_refused", portal=self.portal, method=self.method, code=code)
        self.in_batch = False


def _refusal(errors: Mapping[str, tuple[str, str]], keys: Iterable[str]) -> str | None:
    """The code of the first of `keys`' command errors that refuses the method inside batch, if any."""
    for key in keys:
        code = errors[key][0] if key in errors else ""
        if code.upper() in REFUSED_IN_BATCH:
            return code
    return None


def as_is(page: list[Any]) -> list[Any]:
    """A page kept as it came (records the caller reads once the listing is whole)."""
    return page
