"""Config keys declared once, on dataclass fields, and the reader that turns YAML into those dataclasses.

A field's name, type and default are the dataclass's own; `field(metadata=key(kind, doc))` adds how a YAML
value becomes that type and what the docs say about it. `Reader` walks `dataclasses.fields()`, so the allowed
keys, defaults and parsers are never written twice, and `reference()` renders the same declarations as docs:

    interval: float = field(default=60.0, metadata=key(DURATION, "How often to collect."))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

import yaml

from exporter.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
D = TypeVar("D", bound="DataclassInstance")
_META = "config_key"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Invalid(Exception):
    """A kind rejects a value. `reason` is the line a user sees; empty when the parts were reported already."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Kind(Generic[T]):
    """What values a key takes: how a YAML value becomes a T, and how the docs describe it."""

    parse: Callable[[Reader, str, Any], T]
    shape: str  # the docs' "Value" column, e.g. "duration (30s, 5m, 1h30m)"
    show: Callable[[T], str] = str  # a default, as a user would write it
    nested: type[DataclassInstance] | None = None  # a section's dataclass: the docs list its keys too


@dataclass(frozen=True, slots=True)
class Key:
    """Everything about one YAML key that its dataclass field does not already say."""

    kind: Kind[Any]
    doc: str
    secret: bool = False  # may come from the file named by `<key>_file` instead; never echoed
    default_host_of: str | None = None  # when absent: the host name of this other key's URL


def key(kind: Kind[Any], doc: str, *, secret: bool = False, default_host_of: str | None = None) -> dict[str, Key]:
    """Field metadata declaring a config key: `field(default=..., metadata=key(kind, doc))`."""
    return {_META: Key(kind, doc, secret, default_host_of)}


def declared(cls: type[DataclassInstance]) -> list[tuple[Field[Any], Key]]:
    """The fields of `cls` that are config keys, in declaration order."""
    return [(f, spec) for f in fields(cls) if isinstance(spec := f.metadata.get(_META), Key)]


def default_of(f: Field[Any]) -> Any:
    """The value a field takes when its key is absent; MISSING when the key is required."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


class Reader:
    """Walks one YAML document, collecting every problem (one line each, naming its key path)."""

    def __init__(self, env: Mapping[str, str] | None) -> None:
        self.env = env  # None: strings are taken literally, without ${VAR} expansion
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def fail(self, path: str, reason: str) -> None:
        self.problems.append(f"{path or '(top level)'}: {reason}")

    def warn(self, path: str, reason: str) -> None:
        self.warnings.append(f"{path}: {reason}")

    def value(self, path: str, raw: Any, kind: Kind[T]) -> T | Invalid:
        """`kind` applied to `raw`; a rejection is recorded as a problem and returned, never raised."""
        try:
            return kind.parse(self, path, raw)
        except Invalid as exc:
            if exc.reason:
                self.fail(path, exc.reason)
            return exc

    def expand(self, text: str) -> str:
        if self.env is None:
            return text
        env = self.env
        missing = [name for name in _ENV_REF.findall(text) if name not in env]
        if missing:
            raise Invalid(f"environment variable {missing[0]} is not set")
        return _ENV_REF.sub(lambda m: env[m.group(1)], text)

    def section(self, path: str, raw: Any, cls: type[D]) -> D:
        """A mapping parsed by the keys `cls` declares; raises Invalid() once its problems are reported."""
        keys = declared(cls)
        if not isinstance(raw, dict):
            names = [f.name for f, _ in keys]
            listed = f" with {' and/or '.join(names)}" if len(names) <= 3 else ""
            raise Invalid(f"must be a mapping{listed}, got {kind_of(raw)}")
        allowed = sorted([f.name for f, _ in keys] + [f"{f.name}_file" for f, spec in keys if spec.secret])
        for name in raw:
            if name not in allowed:
                self.fail(join(path, str(name)), f"unknown key (expected one of: {', '.join(allowed)})")
        values = {f.name: self._field(join(path, f.name), raw, f, spec) for f, spec in keys}
        for f, spec in keys:
            if spec.default_host_of and f.name not in raw:
                values[f.name] = host_name(values[spec.default_host_of])
        if any(isinstance(v, Invalid) for v in values.values()):
            raise Invalid()
        return cls(**values)

    def _field(self, path: str, raw: Mapping[str, Any], f: Field[Any], spec: Key) -> object:
        if spec.secret:
            text = self._secret_text(path, raw, f.name)
            return text if isinstance(text, Invalid) else self.value(path, text, spec.kind)
        if f.name in raw:
            return self.value(path, raw[f.name], spec.kind)
        if (default := default_of(f)) is not MISSING:
            return default
        if spec.default_host_of is not None:
            return None  # replaced by the host name once every key is read
        self.fail(path, "is required")
        return Invalid()

    def _secret_text(self, path: str, raw: Mapping[str, Any], name: str) -> str | Invalid:
        """A secret comes inline (usually `${VAR}`) or from the file named by `<key>_file`, never both."""
        file_key = f"{name}_file"
        file_path = f"{path}_file"
        if name in raw and file_key in raw:
            self.fail(path, f"set either {name} or {file_key}, not both")
            return Invalid()
        if file_key in raw:
            where = self.value(file_path, raw[file_key], FILE_PATH)
            if isinstance(where, Invalid):
                return where
            try:
                text = Path(where).read_text(encoding="utf-8").strip()
            except OSError as exc:
                self.fail(file_path, f"cannot read {where} ({exc.strerror or exc})")
                return Invalid()
            if not text:
                self.fail(file_path, f"{where} is empty")
                return Invalid()
            return text
        if name not in raw:
            self.fail(path, f"is required (or set {file_key})")
            return Invalid()
        inline = self.value(path, raw[name], TEXT)
        if isinstance(inline, Invalid):
            return inline
        if not inline.strip():
            self.fail(path, "is empty")
            return Invalid()
        return inline.strip()


def parse_document(raw: Any, cls: type[D], env: Mapping[str, str] | None) -> tuple[D, tuple[str, ...]]:
    """A whole YAML document as `cls`, with its warnings; raises ConfigError listing every problem."""
    reader = Reader(env)
    value = reader.value("", {} if raw is None else raw, section(cls))
    if reader.problems or isinstance(value, Invalid):
        raise ConfigError(reader.problems)
    return value, tuple(reader.warnings)


def read_yaml(path: str | Path, where: str) -> Any:
    """The parsed file; an unreadable or malformed one is a ConfigError that says where."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read ({exc.strerror or exc})"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ConfigError([f"{where}: not valid YAML{at}: {problem}"]) from None


def reference(cls: type[DataclassInstance]) -> str:
    """The keys `cls` declares as a Markdown table, nested sections as dotted keys."""
    lines = ["| Key | Value | Default | Meaning |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {shape} | {default} | {doc} |" for name, shape, default, doc in _rows(cls, "")]
    return "\n".join(lines) + "\n"


def _rows(cls: type[DataclassInstance], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    for f, spec in declared(cls):
        shape = spec.kind.shape + (f", or `{f.name}_file`: a file that holds it" if spec.secret else "")
        if (value := default_of(f)) is not MISSING:
            default = spec.kind.show(value)
        else:
            default = f"host name of `{spec.default_host_of}`" if spec.default_host_of else "required"
        yield prefix + f.name, shape, default, spec.doc
        if spec.kind.nested is not None:
            yield from _rows(spec.kind.nested, f"{prefix}{f.name}.")


# --- the kinds the reader itself needs (more in exporter/kinds.py) -------------------------------


def _text(reader: Reader, _path: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise Invalid(f"must be a string, got {kind_of(raw)}")
    return reader.expand(raw)


TEXT: Kind[str] = Kind(_text, "text")
FILE_PATH: Kind[str] = Kind(_text, "file path")


def section(cls: type[D]) -> Kind[D]:
    """A nested mapping parsed by the keys `cls` declares."""
    def parse(reader: Reader, path: str, raw: Any) -> D:
        return reader.section(path, raw, cls)

    return Kind(parse, "mapping (keys below)", lambda _: "see below", cls)


def host_name(value: object) -> str:
    """The host of a URL held as text or as a Secret ("" when there is none)."""
    if isinstance(value, Secret):
        value = value.reveal()
    if not isinstance(value, str):
        return ""
    return urlsplit(value).hostname or ""


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
