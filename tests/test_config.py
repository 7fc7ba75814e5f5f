"""Config: every mistake is one clear line naming its key; secrets come from env or files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from exporter import configdoc, log
from exporter.config import ROLE_NAMES, WebhookUrl, load_config, parse_config, parse_duration
from exporter.errors import ConfigError
from exporter.kinds import DURATION, integer
from exporter.schema import key, parse_document, reference
from exporter.sources.bitrix24 import ROLES
from tests.conftest import CONFIG_ENV, ROOT, config_problems

ENV = CONFIG_ENV
HOOK = ENV["HOOK"]


def test_example_config_is_valid():
    config = load_config(ROOT / "config.example.yaml",
                         {"BITRIX24_WEBHOOK_URL": HOOK, "PACHCA_TOKEN": "t0ken"})
    assert config.bitrix24[0].name == "mycompany"
    assert config.bitrix24[0].interval == 60.0
    assert config.pachca[0].due_soon == 86400.0


def test_defaults_and_env_expansion():
    config = parse_config(yaml.safe_load("bitrix24: {webhook_url: '${HOOK}'}"), ENV)
    b24 = config.bitrix24[0]
    assert b24.webhook_url.reveal() == HOOK
    assert b24.name == "acme.bitrix24.ru"  # the portal's host name by default
    assert b24.users is None
    assert b24.groups == (0,)
    assert b24.roles == ("all", "responsible", "accomplice", "auditor", "originator")
    assert b24.rate_limit.requests_per_second == 2.0
    assert b24.rate_limit.burst == 50
    assert config.pachca == ()


def test_secret_never_shows_in_repr():
    config = parse_config(yaml.safe_load("bitrix24: {webhook_url: '${HOOK}'}"), ENV)
    assert "s3cr3tvalue" not in repr(config)
    assert config.bitrix24[0].masked_url == "https://acme.bitrix24.ru/rest/1/***/"


def test_secret_from_file(tmp_path: Path):
    secret = tmp_path / "hook"
    secret.write_text(HOOK + "\n")
    config = parse_config({"bitrix24": {"webhook_url_file": str(secret)}}, {})
    assert config.bitrix24[0].webhook_url.reveal() == HOOK


def test_list_of_portals_gets_names():
    config = parse_config(yaml.safe_load("""
bitrix24:
  - {name: sales, webhook_url: '${HOOK}'}
  - {name: support, webhook_url: 'https://support.example.com/rest/9/abc/', users: [1, 2]}
"""), ENV)
    assert [c.name for c in config.bitrix24] == ["sales", "support"]
    assert config.bitrix24[1].users == (1, 2)


def test_empty_file_has_no_sources():
    assert parse_config(None, {}).bitrix24 == ()


@pytest.mark.parametrize(("doc", "expected"), [
    ("bitrix24: {webhook_url: '${NOPE}'}", "bitrix24.webhook_url: environment variable NOPE is not set"),
    ("bitrix24: {}", "bitrix24.webhook_url: is required (or set webhook_url_file)"),
    ("bitrix24: {webhook_url: '${HOOK}', colour: red}", "bitrix24.colour: unknown key"),
    ("bitrix24: {webhook_url: '${HOOK}', interval: soon}", "bitrix24.interval: invalid duration 'soon'"),
    ("bitrix24: {webhook_url: '${HOOK}', interval: -5s}", "bitrix24.interval: invalid duration '-5s'"),
    ("bitrix24: {webhook_url: '${HOOK}', interval: 0}", "bitrix24.interval: must be positive"),
    ("bitrix24: {webhook_url: 'ftp://x/rest/1/a/'}", "bitrix24.webhook_url: must be an http(s) URL"),
    ("bitrix24: {webhook_url: 'https://acme.bitrix24.ru/'}", "bitrix24.webhook_url: must look like"),
    ("bitrix24: {webhook_url: 'https://acme:99999/rest/1/x/'}", "bitrix24.webhook_url: has an invalid port"),
    ("bitrix24: {webhook_url: '${HOOK}', users: everyone}", "bitrix24.users: must be auto or a list"),
    ("bitrix24: {webhook_url: '${HOOK}', users: [1, x]}", "bitrix24.users[1]: must be an integer"),
    ("bitrix24: {webhook_url: '${HOOK}', users: []}", "bitrix24.users: is empty"),
    ("bitrix24: {webhook_url: '${HOOK}', groups: [-1]}", "bitrix24.groups[0]: must be at least 0"),
    ("bitrix24: {webhook_url: '${HOOK}', roles: [boss]}", "bitrix24.roles[0]: unknown role 'boss'"),
    ("bitrix24: {webhook_url: '${HOOK}', roles: []}", "bitrix24.roles: must be a non-empty list"),
    ("bitrix24: {webhook_url: '${HOOK}', rate_limit: {requests_per_second: 0}}",
     "bitrix24.rate_limit.requests_per_second: must be a positive number"),
    ("bitrix24: {webhook_url: '${HOOK}', rate_limit: {burst: many}}", "bitrix24.rate_limit.burst: must be an integer"),
    ("bitrix24: {webhook_url: '${HOOK}', max_concurrency: 0}", "bitrix24.max_concurrency: must be at least 1"),
    ("bitrix24: {webhook_url: '${HOOK}', webhook_url_file: /x}", "bitrix24.webhook_url: set either"),
    ("bitrix24: {webhook_url_file: /nonexistent/hook}", "bitrix24.webhook_url_file: cannot read /nonexistent/hook"),
    ("bitrix24: [{webhook_url: '${HOOK}'}, {webhook_url: '${HOOK}'}]",
     "bitrix24: name 'acme.bitrix24.ru' is used twice"),
    ("bitrix24: []", "bitrix24: is an empty list"),
    ("bitrix24: yes", "bitrix24: must be a mapping or a list of mappings"),
    ("bitrix24: [5]", "bitrix24[0]: must be a mapping"),
    ("pachca: {}", "pachca.token: is required (or set token_file)"),
    ("pachca: {token: '${TOKEN}', base_url: 'not a url'}", "pachca.base_url: must be an http(s) URL"),
    ("pachca: {token: '${TOKEN}', due_soon: 1 day}", "pachca.due_soon: invalid duration '1 day'"),
    ("pachca: {token: '${TOKEN}', page_size: 100}", "pachca.page_size: must be between 1 and 50"),
    ("pachca: {token: '${TOKEN}', performer_names: maybe}", "pachca.performer_names: must be auto, true or false"),
    ("pachca: {token: ''}", "pachca.token: is empty"),
    ("pachca: {token: 42}", "pachca.token: must be a string"),
    ("[1, 2]", "(top level): must be a mapping"),
    ("bitrix: {}", "bitrix: unknown key"),
])
def test_each_mistake_is_one_line_naming_its_key(doc: str, expected: str):
    found = config_problems(doc)
    assert any(p.startswith(expected) for p in found), found
    assert all("\n" not in p for p in found)


def test_all_problems_are_reported_at_once():
    found = config_problems("bitrix24: {webhook_url: '${HOOK}', interval: x, timeout: y, roles: [z]}")
    assert len(found) == 3


def test_secret_is_not_echoed_in_errors():
    found = config_problems("bitrix24: {webhook_url: 'https://acme.bitrix24.ru/s3cr3tvalue'}")
    assert all("s3cr3tvalue" not in p for p in found)


def test_plain_http_to_a_remote_host_warns_but_works():
    config = parse_config({"bitrix24": {"webhook_url": "http://portal.lan/rest/1/abc/"}}, {})
    assert config.warnings
    assert "plain http to portal.lan" in config.warnings[0]
    loopback = parse_config({"bitrix24": {"webhook_url": "http://127.0.0.1:8080/rest/1/abc/"}}, {})
    assert loopback.warnings == ()


def test_unreadable_or_invalid_yaml_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("bitrix24: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("2d", 172800.0), (15, 15.0), ("90", 90.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 m", "m5", "1x", True, None, "1h-5m", float("inf")])
def test_bad_durations(text):
    assert parse_duration(text) is None


# --- one declaration per key ---------------------------------------------------------------------

REFERENCE = ROOT / "docs" / "configuration.md"


@dataclass(frozen=True, slots=True)
class Probe:
    """A section declared only here: the reader knows nothing about it but its fields."""

    size: int = field(metadata=key(integer(1), "How many."))
    every: float = field(default=5.0, metadata=key(DURATION, "How often."))


def test_a_field_declaration_is_all_the_reader_needs():
    value, warnings = parse_document({"size": "3"}, Probe, env={})
    assert value == Probe(size=3, every=5.0)
    assert warnings == ()
    with pytest.raises(ConfigError) as err:
        parse_document({"every": "soon", "colour": 1}, Probe, env={})
    assert err.value.problems == [
        "colour: unknown key (expected one of: every, size)",
        "size: is required",
        "every: invalid duration 'soon' (use e.g. 30s, 5m, 1h30m)",
    ]
    assert reference(Probe).splitlines()[2:] == [
        "| `size` | integer >= 1 | required | How many. |",
        "| `every` | duration (500ms, 30s, 5m, 1h30m) | 5s | How often. |",
    ]


def test_committed_reference_is_rendered_from_the_declarations():
    assert REFERENCE.read_text(encoding="utf-8") == configdoc.render(), (
        "docs/configuration.md is stale: run python -m exporter.configdoc > docs/configuration.md")


def _documented_defaults(section: str) -> dict[str, object]:
    """The keys of `section` whose Default column holds a value, as YAML would read it."""
    values: dict[str, object] = {}
    for line in configdoc.render().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith(f"`{section}."):
            continue
        name, default = cells[0].strip("`").removeprefix(f"{section}."), cells[2]
        if default not in ("required", "see below") and not default.startswith("host name"):
            values[name] = yaml.safe_load(default)
    return values


@pytest.mark.parametrize(("section", "required"), [
    ("bitrix24", {"webhook_url": "${HOOK}"}),
    ("pachca", {"token": "${TOKEN}"}),
])
def test_documented_defaults_are_what_an_absent_key_means(section: str, required: dict[str, str]):
    written: dict[str, object] = dict(required)
    for name, value in _documented_defaults(section).items():
        outer, _, inner = name.partition(".")
        if inner:
            nested = written.setdefault(outer, {})
            assert isinstance(nested, dict)
            nested[inner] = value
        else:
            written[name] = value
    assert len(written) > 8
    assert parse_config({section: written}, ENV) == parse_config({section: required}, ENV)


def test_webhook_url_is_split_in_one_place():
    webhook = WebhookUrl.parse(HOOK)
    assert webhook == WebhookUrl("https://acme.bitrix24.ru/rest", 1, "s3cr3tvalue")
    assert webhook.masked == "https://acme.bitrix24.ru/rest/1/***/"
    assert WebhookUrl.parse("https://acme.bitrix24.ru/s3cr3tvalue") is None


def test_config_names_the_secrets_the_logs_must_mask():
    config = parse_config(yaml.safe_load("{bitrix24: {webhook_url: '${HOOK}'}, pachca: {token: '${TOKEN}'}}"), ENV)
    assert config.bitrix24[0].secrets == (HOOK, "s3cr3tvalue")
    assert config.pachca[0].secrets == ("tok-123456",)
    log.register_secrets(config.pachca[0].secrets)
    assert log.mask("sent tok-123456 to the API") == "sent *** to the API"


def test_every_role_a_config_may_list_has_its_api_type():
    assert list(ROLES) == list(ROLE_NAMES)
