"""Config of the organisation view's Pachca side and the `people` section: defaults, pairs, one line per mistake."""

from __future__ import annotations

import pytest
import yaml

from exporter.config import PeopleConfig, PeoplePair, parse_config
from tests.conftest import CONFIG_ENV, config_problems

ENV = CONFIG_ENV
ONE_EACH = "bitrix24: {webhook_url: '${HOOK}'}\npachca: {name: team, token: '${TOKEN}'}\n"
TWO_EACH = ("bitrix24: [{webhook_url: '${HOOK}'}, {webhook_url: '${HOOK2}'}]\n"
            "pachca: [{name: team, token: '${TOKEN}'}, {name: ops, token: '${TOKEN}'}]\n")


def test_pachca_org_defaults() -> None:
    ws = parse_config(yaml.safe_load(ONE_EACH), ENV).pachca[0]
    assert ws.names is True
    assert ws.structure_interval == 3600.0
    assert ws.performer_names is None


def test_people_is_off_unless_present() -> None:
    assert parse_config(yaml.safe_load(ONE_EACH), ENV).people is None


def test_people_pairs_left_out_mean_every_pair() -> None:
    """`pairs` absent stays None in the config (the collector pairs every portal with every workspace,
    tests/test_pachca_org.py), so a PeopleConfig built in code means the same as one parsed."""
    people = parse_config(yaml.safe_load(TWO_EACH + "people: {match: email}"), ENV).people
    assert people == PeopleConfig(match="email")


def test_people_pairs_as_listed() -> None:
    doc = TWO_EACH + "people: {match: email, label: name, pairs: [{portal: beta.bitrix24.ru, workspace: ops}]}"
    people = parse_config(yaml.safe_load(doc), ENV).people
    assert people is not None
    assert people.label == "name"
    assert people.pairs == (PeoplePair("beta.bitrix24.ru", "ops"),)


@pytest.mark.parametrize(("doc", "expected"), [
    (ONE_EACH + "people: {}", "people.match: is required"),
    (ONE_EACH + "people:", "people: must be a mapping"),
    (ONE_EACH + "people: {match: name}", "people.match: unknown value 'name' (expected one of: email)"),
    (ONE_EACH + "people: {match: email, label: nickname}", "people.label: unknown value 'nickname'"),
    (ONE_EACH + "people: {match: email, pairs: []}", "people.pairs: must be a non-empty list"),
    (ONE_EACH + "people: {match: email, pairs: [{portal: acme.bitrix24.ru}]}",
     "people.pairs[0].workspace: is required"),
    (ONE_EACH + "people: {match: email, pairs: [{portal: nope, workspace: team}]}",
     "people.pairs[0].portal: no bitrix24 entry is named 'nope' (known: acme.bitrix24.ru)"),
    (ONE_EACH + "people: {match: email, pairs: [{portal: acme.bitrix24.ru, workspace: nope}]}",
     "people.pairs[0].workspace: no pachca entry is named 'nope' (known: team)"),
    (ONE_EACH + "people: {match: email, pairs: [{portal: acme.bitrix24.ru, workspace: team}, "
     "{portal: acme.bitrix24.ru, workspace: team}]}",
     "people.pairs: the pair 'acme.bitrix24.ru' / 'team' is listed twice"),
    ("pachca: {token: '${TOKEN}'}\npeople: {match: email}",
     "people: needs at least one bitrix24 portal and one pachca workspace"),
    ("bitrix24: {webhook_url: '${HOOK}'}\npachca: {name: team, token: '${TOKEN}', performer_names: false}\n"
     "people: {match: email}", "people: pachca workspace 'team' has performer_names: false"),
    ("bitrix24: {webhook_url: '${HOOK}'}\npachca: {name: team, token: '${TOKEN}', performer_names: false}\n"
     "people: {match: email, pairs: [{portal: acme.bitrix24.ru, workspace: team}]}",
     "people.pairs[0].workspace: 'team' has performer_names: false"),
    (ONE_EACH.replace("token: '${TOKEN}'", "token: '${TOKEN}', names: no names"),
     "pachca.names: must be true or false"),
    (ONE_EACH.replace("token: '${TOKEN}'", "token: '${TOKEN}', structure_interval: often"),
     "pachca.structure_interval: invalid duration 'often'"),
])
def test_each_people_mistake_is_one_line_naming_its_key(doc: str, expected: str) -> None:
    found = config_problems(doc)
    assert any(p.startswith(expected) for p in found), found
    assert all("\n" not in p for p in found)
