"""The text exposition format 0.0.4: the one writer of /metrics text, for our families and prometheus_client's.

The writer works straight from the families (the biggest one streams from the snapshot), so a render at
100,000 series costs the text's size in memory, not an object per series. prometheus_client's own
generate_latest follows the library's release (recent ones gained name escaping schemes and call their text
version 1.0.0), so its text is not bound to the 0.0.4 that CONTENT_TYPE promises; this writer is.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.core import Metric

# What `render` writes, whatever prometheus_client.CONTENT_TYPE_LATEST says in the installed release
# (version=1.0.0 in recent ones, 0.0.4 in the older ones the pin allows)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["gauge", "counter"]
Row = tuple[Sequence[str], float]


@dataclass(slots=True)
class Family:
    """One metric family; `rows` may be a generator that is read once, at render time."""

    name: str
    help: str
    labels: Sequence[str]
    kind: Kind = "gauge"  # a counter's exposed name ends in _total
    rows: Iterable[Row] = field(default_factory=list)

    @classmethod
    def gauge(cls, name: str, help: str, labels: Sequence[str]) -> Family:
        """An empty gauge family, filled with `add_metric`."""
        return cls(name, help, labels)

    @classmethod
    def counter(cls, name: str, help: str, labels: Sequence[str]) -> Family:
        """An empty counter family, filled with `add_metric`; exposed as `<name>_total`."""
        return cls(name, help, labels, kind="counter")

    @property
    def exposed_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name

    def add_metric(self, values: Sequence[str], value: float) -> None:
        assert isinstance(self.rows, list)
        self.rows.append((values, value))


@dataclass(frozen=True, slots=True)
class Shard:
    """One source's rows of a group of families: `families()` makes the group's families with only those rows.

    `key` names the source across renders. `versions` has an object per family: what the source's rows of that
    family are made from (e.g. the snapshot's counters). While it is the same object, the rows are the same, so
    a renderer may keep the text it made of them; a new object (even an equal one) means they are made again.
    """

    key: Hashable
    versions: tuple[object, ...]
    families: Callable[[], Iterable[Family]]


@dataclass(frozen=True, slots=True)
class Sharded:
    """Families whose rows come source by source: family i has shard 1's rows of family i, then shard 2's, ...

    `name` names the group (a renderer's cache key); `families` are the group's families without rows, in the
    order every shard makes them.
    """

    name: str
    families: Sequence[Family]
    shards: Sequence[Shard]

    def made(self, shard: Shard) -> list[Family]:
        """The shard's families, checked against the group's (a producer that skips one is a bug)."""
        made = list(shard.families())
        if [f.name for f in made] != [f.name for f in self.families]:
            raise ValueError(f"{self.name}: shard {shard.key} made {[f.name for f in made]}, "
                             f"not {[f.name for f in self.families]}")
        return made

    def merged(self) -> Iterator[Family]:
        """The group as whole families, every shard's rows in turn."""
        made = [self.made(shard) for shard in self.shards]
        for i, family in enumerate(self.families):
            yield Family(family.name, family.help, family.labels, family.kind,
                         itertools.chain.from_iterable(m[i].rows for m in made))


Section = Family | Sharded


def flatten(sections: Iterable[Section]) -> Iterator[Family]:
    """Sections as the families they stand for."""
    for section in sections:
        if isinstance(section, Sharded):
            yield from section.merged()
        else:
            yield section


def render(sections: Iterable[Section]) -> bytes:
    """The families as text format 0.0.4, e.g. `bitrix24_users{portal="acme"} 12.0`, all rendered afresh."""
    out = io.BytesIO()
    for family in flatten(sections):
        out.write(header(family))
        out.write(samples(family))
    return out.getvalue()


def header(family: Family) -> bytes:
    """The HELP and TYPE lines of a family, which come once before all its samples."""
    name = family.exposed_name
    help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} {family.kind}\n".encode()


def samples(family: Family) -> bytes:
    """The sample lines of a family, without its header: the rows are read once.

    Each line is one str.format of a per-family template; a line is checked for characters that need
    escaping (rare in label values) and made again with escaped values only when it has some. Lines are
    encoded a batch at a time, so a big family costs its text once more at most, not its lines as objects.
    """
    name = family.exposed_name.replace("{", "{{").replace("}", "}}")
    labels = family.labels
    out = io.BytesIO()
    lines: list[str] = []
    if labels:
        width = len(labels)
        pairs = ",".join(f'{k}="{{}}"' for k in labels)
        line = f"{name}{{{{{pairs}}}}} {{}}\n".format
        quotes = 2 * width
        for values, value in family.rows:
            if len(values) != width:
                raise ValueError(f"{family.name}: {len(values)} label values for {width} label names")
            text = line(*values, _number(value))
            if text.count('"') != quotes or "\\" in text or text.count("\n") != 1:
                text = line(*map(_escape, values), _number(value))
            lines.append(text)
            if len(lines) == _BATCH:
                out.write("".join(lines).encode())
                lines.clear()
    else:
        lines.extend(f"{name} {_number(value)}\n" for _, value in family.rows)
    out.write("".join(lines).encode())
    return out.getvalue()


_BATCH = 1024  # lines encoded at a time


def from_prometheus_client(metrics: Iterable[Metric]) -> Iterator[Family]:
    """prometheus_client's metrics (its process, platform and GC collectors) as families for `render`.

    Those collectors yield gauges and counters only; anything else is refused, not written wrong.
    """
    for metric in metrics:
        if metric.type not in ("gauge", "counter"):
            raise ValueError(f"{metric.name}: a {metric.type} has no place in this writer")
        kind: Kind = "counter" if metric.type == "counter" else "gauge"
        exposed = metric.name + "_total" if kind == "counter" else metric.name
        kept = [s for s in metric.samples if s.name == exposed]  # drops OpenMetrics-only _created
        labels = sorted(kept[0].labels) if kept else []
        if any(sorted(s.labels) != labels for s in kept):
            raise ValueError(f"{metric.name}: samples with different label names")
        yield Family(metric.name, metric.documentation, labels, kind,
                     [([s.labels[k] for k in labels], s.value) for s in kept])


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))
