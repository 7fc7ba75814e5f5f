"""Incremental rendering over real cycles against the fake portals and workspace: the body assembled from each
source's kept parts is byte for byte a fresh full render after every change (cycles, a failure, a user who
left, a source added, a source removed); only the changed sources' parts are made again, and of those only the
families whose data changed; the gzip answer is one stream of that text."""

from __future__ import annotations

import zlib

import pytest

from exporter.app import running
from exporter.collector import SnapshotCollector
from exporter.config import Config
from exporter.exposition import Exposition
from exporter.incremental import CHUNK, EMPTY, IncrementalRenderer
from exporter.render import Sharded, render
from exporter.scheduler import SourceLoop
from exporter.simulator.pachca import PachcaSimulator, generate_workspace
from exporter.snapshot import SourceKey, Store
from tests.conftest import NOW, eventually, value

LIVE = b"# HELP test_live A live value.\n# TYPE test_live gauge\ntest_live 1.0\n"


@pytest.fixture
def sim() -> PachcaSimulator:
    return generate_workspace(40, seed=3, now=NOW)


def one_gzip_stream(data: bytes) -> bytes:
    """The text of `data`, which must be exactly one gzip member (gzip.decompress would accept several)."""
    stream = zlib.decompressobj(31)
    text = stream.decompress(data)
    assert stream.eof
    assert stream.unused_data == b""
    return text


class Renders:
    """Renders the store incrementally and checks each body against a fresh full render."""

    def __init__(self, store: Store) -> None:
        self.collector = SnapshotCollector(store)
        self.renderer = IncrementalRenderer()

    def check(self, changed: set[SourceKey]) -> str:
        """The body after a change of `changed` (sources whose state was replaced since the last render)."""
        body = self.renderer.render(self.collector.snapshot_sections())
        assert body.text == render(self.collector.snapshot_sections())
        assert one_gzip_stream(body.packed + body.tail(LIVE)) == body.text + LIVE
        made = self.renderer.made
        assert {key for group, key in made if group == "source_health"} == changed
        assert {key for _, key in made} == changed  # nothing of the others
        shards = [shard.key for section in self.collector.snapshot_sections() if isinstance(section, Sharded)
                  for shard in section.shards]
        assert self.renderer.shards_kept == len(shards)  # a removed source's parts are not kept either
        return body.text.decode()

    def made(self, group: str, key: SourceKey) -> int:
        """How many families of `group` the last render made afresh for `key`."""
        return self.renderer.made.get((group, key), 0)


async def test_kept_parts_assemble_a_full_render_through_changes_additions_and_removals(
        portal_factory, pachca_source):
    store = Store()
    renders = Renders(store)
    servers = {name: await portal_factory(users=users, seed=seed)
               for name, users, seed in (("alpha", 3, 1), ("beta", 30, 2), ("gamma", 140, 3))}
    loops = {name: SourceLoop(server.source(name=name), store) for name, server in servers.items()}
    loops["team"] = SourceLoop(pachca_source(), store)
    for loop in loops.values():
        store.register(loop.source)
    keys = {name: loop.key for name, loop in loops.items()}
    renders.check(set(keys.values()))  # registered, no cycle yet: health series only

    for loop in loops.values():
        assert await loop.run_once()
    text = renders.check(set(keys.values()))
    assert value(text, "bitrix24_users", portal="gamma") == 140
    assert renders.check(set()) == text  # nothing changed: every part reused

    beta = servers["beta"].sim
    beta.overrides[(5, 0, "view_all")] = {"expired": 77, "new_comments": 1}
    assert await loops["beta"].run_once()
    text = renders.check({keys["beta"]})
    assert value(text, "bitrix24_tasks", portal="beta", user_id="5", role="all", counter="expired") == 77
    # bitrix24_tasks, and what moves at every cycle; its users and structure are the same
    assert renders.made("bitrix24", keys["beta"]) == 1
    assert renders.made("bitrix24_org", keys["beta"]) == 0
    assert renders.made("bitrix24_budget", keys["beta"]) == 1

    assert await loops["alpha"].run_once()  # the same answers again: only what every cycle changes
    text = renders.check({keys["alpha"]})
    assert renders.made("bitrix24", keys["alpha"]) == 0
    assert renders.made("bitrix24_budget", keys["alpha"]) == 1

    servers["gamma"].sim.fault = "http_500"
    assert not await loops["gamma"].run_once()
    text = renders.check({keys["gamma"]})
    assert value(text, "tasks_exporter_source_up", source="bitrix24", target="gamma") == 0
    assert value(text, "bitrix24_users", portal="gamma") == 140  # the last good data stays

    leaver = next(u for u in beta.users if u.user_id == 5)
    leaver.active = False
    assert await loops["beta"].run_once()
    text = renders.check({keys["beta"]})
    assert value(text, "bitrix24_tasks", portal="beta", user_id="5", role="all", counter="expired") is None
    assert value(text, "bitrix24_user_info", portal="beta", user_id="5") is None
    assert renders.made("bitrix24", keys["beta"]) == 3  # counters, user_info, users; not hidden nor failed
    assert renders.made("bitrix24_org", keys["beta"]) == 4

    delta = await portal_factory(users=7, seed=4)
    loops["delta"] = SourceLoop(delta.source(name="delta"), store)
    store.register(loops["delta"].source)
    assert await loops["delta"].run_once()
    text = renders.check({loops["delta"].key})
    assert value(text, "bitrix24_users", portal="delta") == 7

    store.unregister(keys["alpha"])
    store.unregister(keys["team"])
    text = renders.check(set())
    assert 'portal="alpha"' not in text
    assert 'target="alpha"' not in text
    assert 'workspace="team"' not in text
    assert value(text, "bitrix24_users", portal="beta") == 29


async def test_an_exposition_serves_the_kept_body_plain_in_chunks_and_as_one_gzip_stream(portal_factory):
    store = Store()
    server = await portal_factory(users=300)
    loop = SourceLoop(server.source(name="big"), store)
    store.register(loop.source)
    assert await loop.run_once()
    collector = SnapshotCollector(store)
    exposition = Exposition(collector.snapshot_sections, collector.live_families)
    exposition.render_now()
    plain, compressed = exposition.parts(False), exposition.parts(True)
    text = render(collector.snapshot_sections())
    assert b"".join(plain[:-1]) == text
    # over CHUNK: sent in pieces, never joined into one copy; tiny parts are joined (a chunk under CHUNK only
    # comes before one of at least CHUNK)
    assert 2 < len(plain) <= 2 * len(text) // CHUNK + 2
    assert one_gzip_stream(b"".join(compressed)) == b"".join(plain)


def test_an_empty_body_ends_as_a_stream_of_the_live_part_alone():
    assert one_gzip_stream(EMPTY.packed + EMPTY.tail(LIVE)) == LIVE
    assert one_gzip_stream(EMPTY.packed + EMPTY.tail(b"")) == b""


async def test_a_running_exporter_re_renders_only_the_portal_whose_cycle_ended(portal_factory):
    servers = [await portal_factory(users=20, seed=seed) for seed in (1, 2, 3)]
    sources = [server.source(name=f"p{n}") for n, server in enumerate(servers)]
    async with running(Config(), sources=sources) as exporter:
        def all_up() -> bool:  # in the body: the render that shows it read every source's last state
            text = b"".join(exporter.exposition.parts(False)).decode()
            return all(value(text, "tasks_exporter_source_up", target=f"p{n}") == 1 for n in range(3))

        await eventually(all_up)
        renders = exporter.exposition.renders
        servers[1].sim.overrides[(3, 0, "view_all")] = {"expired": 41, "new_comments": 0}
        assert await exporter.loops[1].run_once()
        await eventually(lambda: exporter.exposition.renders > renders)
        text = b"".join(exporter.exposition.parts(False)).decode()
        assert value(text, "bitrix24_tasks", portal="p1", user_id="3", role="all", counter="expired") == 41
        assert {key.target for _, key in exporter.exposition.made} == {"p1"}  # nothing of p0 and p2
