"""The /metrics body kept source by source, so that a render re-makes only the parts of sources that changed.

The text format groups each family's samples under one HELP/TYPE, so the body is, family after family, the
header and every source's part of that family. A render with 100 portals, one of which finished a cycle, makes
that portal's parts and reuses the other 99 portals' text, e.g. of

    # HELP bitrix24_users Users monitored in the last good cycle.
    # TYPE bitrix24_users gauge
    bitrix24_users{portal="acme"} 12.0      <- acme's part, kept until acme's state changes
    bitrix24_users{portal="zeta"} 40.0      <- zeta's part

The gzip answer is one stream all the same: each kept part that is not tiny also keeps its own deflate
output, made by a compressor that forgets everything before it (Z_FULL_FLUSH), so it decodes wherever it
stands in the stream; headers and tiny parts are compressed together at each render (alone they would compress
badly). What a render still does over the whole body: the CRC-32 of the text (the gzip trailer) and joining
the pieces.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from exporter.render import Family, Section, header, samples

LEVEL = 6
KEPT_PACKED_MIN = 512  # a part at least this long keeps its own deflate output
CHUNK = 64 * 1024  # plain text is handed out in chunks of about this size or more (tiny parts joined)
# as zlib writes it (wbits 31): no file name, no mtime, level 6, OS unix
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


@dataclass(frozen=True, slots=True)
class Body:
    """One render's text: plain chunks (sent one after the other), and the same text as the start of a gzip
    stream (deflate blocks ending on a byte boundary, no final block yet) with the text's CRC-32 and length."""

    chunks: tuple[bytes, ...]
    packed: bytes
    crc: int
    size: int

    @property
    def text(self) -> bytes:
        return b"".join(self.chunks)

    def tail(self, more: bytes) -> bytes:
        """The rest of the gzip stream that `packed` begins: `more` (the live part), the final block, the
        trailer. `packed + tail(more)` decompresses to the text followed by `more`."""
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
        crc = zlib.crc32(more, self.crc)
        return (compressor.compress(more) + compressor.flush()
                + struct.pack("<II", crc, (self.size + len(more)) & 0xFFFFFFFF))


EMPTY = Body((), GZIP_HEADER, 0, 0)


@dataclass(frozen=True, slots=True)
class _Part:
    """One source's samples of one family, and their own deflate output (None when too short to keep)."""

    text: bytes
    packed: bytes | None


class _Assembly:
    """Builds one Body from pieces in order; every use of the compressor ends in a full flush, so each
    piece of deflate output stands alone."""

    def __init__(self, compressor: zlib._Compress) -> None:
        self._compressor = compressor
        self._chunks: list[bytes] = []
        self._pending: list[bytes] = []  # plain pieces not yet joined into a chunk
        self._pending_size = 0
        self._packed = [GZIP_HEADER]
        self._run: list[bytes] = []  # pieces without kept deflate output, since the last one with
        self._crc = 0
        self._size = 0

    def add(self, text: bytes, packed: bytes | None = None) -> None:
        if not text:
            return
        self._crc = zlib.crc32(text, self._crc)
        self._size += len(text)
        if len(text) >= CHUNK:
            self._end_chunk()
            self._chunks.append(text)
        else:
            self._pending.append(text)
            self._pending_size += len(text)
            if self._pending_size >= CHUNK:
                self._end_chunk()
        if packed is None:
            self._run.append(text)
        else:
            self._end_run()
            self._packed.append(packed)

    def body(self) -> Body:
        self._end_chunk()
        self._end_run()
        return Body(tuple(self._chunks), b"".join(self._packed), self._crc, self._size)

    def _end_chunk(self) -> None:
        if self._pending:
            self._chunks.append(b"".join(self._pending))
            self._pending.clear()
            self._pending_size = 0

    def _end_run(self) -> None:
        if self._run:
            self._packed.append(deflate(self._compressor, b"".join(self._run)))
            self._run.clear()


def deflate(compressor: zlib._Compress, text: bytes) -> bytes:
    """`text` as deflate output that refers to nothing before it and ends on a byte boundary."""
    return compressor.compress(text) + compressor.flush(zlib.Z_FULL_FLUSH)


class IncrementalRenderer:
    """Renders sections into a Body, keeping each shard's parts while its version stays the same.

    Families that are not sharded (small, made of several sources at once) are rendered every time. A source
    that is no longer among the shards is forgotten: its series leave the body with it. Renders are serialised.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[str, Hashable], tuple[Hashable, list[_Part]]] = {}
        self._lock = threading.Lock()
        self.shards_made = 0  # shards rendered afresh by the last render (the rest were reused)

    @property
    def shards_kept(self) -> int:
        """Shards whose parts are kept: those of the last render, none of a source that has gone."""
        return len(self._kept)

    def render(self, sections: Iterable[Section]) -> Body:
        with self._lock:
            compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
            assembly = _Assembly(compressor)
            kept: dict[tuple[str, Hashable], tuple[Hashable, list[_Part]]] = {}
            made = 0
            for section in sections:
                if isinstance(section, Family):
                    assembly.add(header(section))
                    assembly.add(samples(section))
                    continue
                parts: list[list[_Part]] = []
                for shard in section.shards:
                    key = (section.name, shard.key)
                    entry = self._kept.get(key)
                    if entry is None or entry[0] != shard.version:
                        entry = (shard.version, [_part(compressor, samples(f)) for f in section.made(shard)])
                        made += 1
                    kept[key] = entry
                    parts.append(entry[1])
                for i, family in enumerate(section.families):
                    assembly.add(header(family))
                    for shard_parts in parts:
                        assembly.add(shard_parts[i].text, shard_parts[i].packed)
            self._kept = kept
            self.shards_made = made
            return assembly.body()


def _part(compressor: zlib._Compress, text: bytes) -> _Part:
    return _Part(text, deflate(compressor, text) if len(text) >= KEPT_PACKED_MIN else None)
