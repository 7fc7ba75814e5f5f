"""The /metrics body kept source by source, so that a render re-makes only the parts of sources that changed.

The text format groups each family's samples under one HELP/TYPE, so the body is, family after family, the
header and every source's part of that family. A render with 100 portals, one of which finished a cycle, makes
that portal's parts (only of the families whose data changed) and reuses every other part, e.g. of

    # HELP bitrix24_users Users monitored in the last good cycle.
    # TYPE bitrix24_users gauge
    bitrix24_users{portal="acme"} 12.0      <- acme's part, kept while acme's users are the same
    bitrix24_users{portal="zeta"} 40.0      <- zeta's part

The gzip answer is one stream all the same: each kept part that is not tiny also keeps its own deflate
output, made by a compressor that forgets everything before it (Z_FULL_FLUSH), so it decodes wherever it
stands in the stream; headers and tiny parts are compressed together in runs (alone they would compress badly),
and a run the last render compressed is reused. The CRC-32 of the text (the gzip trailer) is carried over from
the last render up to the first piece that differs, so the families that change at every cycle come last
(exporter/collector/).
"""

from __future__ import annotations

import operator
import struct
import threading
import zlib
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from exporter.render import Family, Section, Shard, Sharded, header, samples

LEVEL = 6
KEPT_PACKED_MIN = 8192  # a part at least this long keeps its own deflate output (smaller ones compress better in runs)
CHUNK = 64 * 1024  # plain text is handed out in chunks of about this size or more (tiny parts joined)
# as zlib writes it (wbits 31): no file name, no mtime, level 6, OS unix
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


class Body:
    """One render's text as its pieces in order, and the same text as the start of a gzip stream (deflate
    blocks ending on a byte boundary, no final block yet) with the text's CRC-32 and length."""

    __slots__ = ("_chunks", "crc", "packed", "pieces", "size")

    def __init__(self, pieces: tuple[bytes, ...], packed: bytes, crc: int, size: int) -> None:
        self.pieces = pieces
        self.packed = packed
        self.crc = crc
        self.size = size
        self._chunks: tuple[bytes, ...] | None = None

    @property
    def text(self) -> bytes:
        return b"".join(self.pieces)

    def chunks(self) -> tuple[bytes, ...]:
        """The text in a few pieces to send one after the other: big parts as they are, runs of small ones
        joined (made at the first plain answer; gzip answers, the usual ones, never need it)."""
        if self._chunks is None:
            chunks: list[bytes] = []
            pending: list[bytes] = []
            pending_size = 0
            for piece in self.pieces:
                if len(piece) >= CHUNK:
                    if pending:
                        chunks.append(b"".join(pending))
                        pending, pending_size = [], 0
                    chunks.append(piece)
                else:
                    pending.append(piece)
                    pending_size += len(piece)
                    if pending_size >= CHUNK:
                        chunks.append(b"".join(pending))
                        pending, pending_size = [], 0
            if pending:
                chunks.append(b"".join(pending))
            self._chunks = tuple(chunks)
        return self._chunks

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


@dataclass(slots=True)
class _Trace:
    """What one assembly leaves for the next: its pieces with the CRC-32 after each, and its runs' output."""

    pieces: list[bytes] = field(default_factory=list)
    crcs: list[int] = field(default_factory=list)
    runs: dict[tuple[bytes, ...], bytes] = field(default_factory=dict)


class _Assembly:
    """Builds one Body from pieces in order, reusing what the last assembly (`last`) made of the same pieces.
    Every use of the compressor ends in a full flush, so each piece of deflate output stands alone."""

    def __init__(self, compressor: zlib._Compress, last: _Trace) -> None:
        self._compressor = compressor
        self._last = last
        self.trace = _Trace()
        self._packed = [GZIP_HEADER]
        self._run: list[bytes] = []  # pieces without kept deflate output, since the last one with
        self._same = True  # every piece so far is the last assembly's
        self._crc = 0
        self._size = 0

    def add(self, text: bytes, packed: bytes | None = None) -> None:
        if not text:
            return
        trace, last = self.trace, self._last
        at = len(trace.pieces)
        if self._same and at < len(last.pieces) and (last.pieces[at] is text or last.pieces[at] == text):
            self._crc = last.crcs[at]
        else:
            self._same = False
            self._crc = zlib.crc32(text, self._crc)
        trace.pieces.append(text)
        trace.crcs.append(self._crc)
        self._size += len(text)
        if packed is None:
            self._run.append(text)
        else:
            self._end_run()
            self._packed.append(packed)

    def body(self) -> Body:
        self._end_run()
        return Body(tuple(self.trace.pieces), b"".join(self._packed), self._crc, self._size)

    def _end_run(self) -> None:
        if self._run:
            run = tuple(self._run)
            out = self._last.runs.get(run)
            if out is None:
                out = deflate(self._compressor, b"".join(run))
            self.trace.runs[run] = out
            self._packed.append(out)
            self._run.clear()


def deflate(compressor: zlib._Compress, text: bytes) -> bytes:
    """`text` as deflate output that refers to nothing before it and ends on a byte boundary."""
    return compressor.compress(text) + compressor.flush(zlib.Z_FULL_FLUSH)


@dataclass(frozen=True, slots=True)
class _Kept:
    """A shard's parts, one per family, and the versions they were made from."""

    versions: tuple[object, ...]
    parts: list[_Part]


class IncrementalRenderer:
    """Renders sections into a Body, keeping a shard's part of a family while the family's version in the
    shard is the same object.

    Families that are not sharded (small, made of several sources at once) are rendered every time. A source
    that is no longer among the shards is forgotten: its series leave the body with it. Renders are serialised.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[str, Hashable], _Kept] = {}
        self._trace = _Trace()
        self._headers: dict[tuple[str, str, str], bytes] = {}  # the same bytes object each render
        self._lock = threading.Lock()
        # the shards (group name, source key) the last render made parts of afresh, and how many parts (a part:
        # one source's samples of one family); it reused every other part
        self.made: dict[tuple[str, Hashable], int] = {}

    @property
    def shards_kept(self) -> int:
        """Shards whose parts are kept: those of the last render, none of a source that has gone."""
        return len(self._kept)

    def render(self, sections: Iterable[Section]) -> Body:
        with self._lock:
            compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
            assembly = _Assembly(compressor, self._trace)
            kept: dict[tuple[str, Hashable], _Kept] = {}
            self.made = {}
            for section in sections:
                if isinstance(section, Family):
                    assembly.add(self._header(section))
                    assembly.add(samples(section))
                    continue
                entries = []
                for shard in section.shards:
                    entry = kept[(section.name, shard.key)] = self._shard(compressor, section, shard)
                    entries.append(entry)
                for i, family in enumerate(section.families):
                    assembly.add(self._header(family))
                    for entry in entries:
                        assembly.add(entry.parts[i].text, entry.parts[i].packed)
            self._kept = kept
            body = assembly.body()
            self._trace = assembly.trace
            return body

    def _header(self, family: Family) -> bytes:
        key = (family.exposed_name, family.help, family.kind)
        made = self._headers.get(key)
        if made is None:
            made = self._headers[key] = header(family)
        return made

    def _shard(self, compressor: zlib._Compress, section: Sharded, shard: Shard) -> _Kept:
        """The shard's parts: those kept whose version is the same object, the others made now."""
        if len(shard.versions) != len(section.families):
            raise ValueError(f"{section.name}: shard {shard.key} has {len(shard.versions)} versions for "
                             f"{len(section.families)} families")
        entry = self._kept.get((section.name, shard.key))
        if entry is not None and all(map(operator.is_, entry.versions, shard.versions)):
            return entry
        parts = []
        made = 0
        for i, family in enumerate(section.made(shard)):
            if entry is not None and entry.versions[i] is shard.versions[i]:
                parts.append(entry.parts[i])  # its rows are not read: a generator of them costs nothing
            else:
                parts.append(_part(compressor, samples(family)))
                made += 1
        self.made[(section.name, shard.key)] = made
        return _Kept(shard.versions, parts)


def _part(compressor: zlib._Compress, text: bytes) -> _Part:
    return _Part(text, deflate(compressor, text) if len(text) >= KEPT_PACKED_MIN else None)
