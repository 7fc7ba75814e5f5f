"""The baseline: one HTTP call per user and role (no `batch`), paced by the exporter's own leaky bucket.

It is what a first version of the exporter would do: page through user.get, then call
tasks.task.counters.get once per user x role, 8 at a time, never faster than the portal allows.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from exporter.ratelimit import LeakyBucket
from exporter.sources.bitrix24 import ROLES

PAGE_SIZE = 50


class NaiveClient:
    """Reads every counter with its own request; same pacing (2/s, burst 50) and concurrency (8) as ours."""

    def __init__(self, webhook: str, *, rate: float = 2.0, burst: int = 50, concurrency: int = 8) -> None:
        self._base = webhook if webhook.endswith("/") else webhook + "/"
        self._bucket = LeakyBucket(rate, burst)
        self._slots = asyncio.Semaphore(concurrency)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0),
                                       limits=httpx.Limits(max_connections=concurrency))
        self.calls = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def cycle(self) -> dict[tuple[int, str], Any]:
        """Every active user's counters for every role, group 0: (user_id, role) -> answer."""
        users = await self._users()
        queries = [(uid, role) for uid in users for role in ROLES]
        answers = await asyncio.gather(*(self._counters(uid, role) for uid, role in queries))
        return dict(zip(queries, answers, strict=True))

    async def _users(self) -> list[int]:
        ids: list[int] = []
        start: int | None = 0
        while start is not None:
            body = await self._call("user.get", {"FILTER": {"ACTIVE": True}, "start": start})
            ids.extend(int(record["ID"]) for record in body["result"])
            nxt = body.get("next")
            start = nxt if isinstance(nxt, int) and nxt > start else None
        return ids

    async def _counters(self, user_id: int, role: str) -> Any:
        body = await self._call("tasks.task.counters.get", {"userId": user_id, "groupId": 0, "type": ROLES[role]})
        return body["result"]

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(1, 21):
            async with self._slots:
                await self._bucket.acquire()
                self.calls += 1
                response = await self._http.post(self._base + method, json=params)
            body: dict[str, Any] = response.json()
            if body.get("error") != "QUERY_LIMIT_EXCEEDED":
                if "error" in body:
                    raise RuntimeError(f"{method}: {body['error']}")
                return body
            self._bucket.saturate()
            await asyncio.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5))
        raise RuntimeError(f"{method}: still rate limited after 20 attempts")


def naive_calls(users: int, roles: int = len(ROLES)) -> int:
    """HTTP calls of one naive cycle: one per user.get page, one per user x role."""
    return max(1, -(-users // PAGE_SIZE)) + users * roles
