"""The e-mail join of one person across Bitrix24 and Pachca (exporter/people.py): pure, so no servers here."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.people import PersonMatch, match_by_email, normalize_email
from exporter.snapshot import PachcaUser, PortalUser


def b24(uid: int, email: str, name: str = "") -> PortalUser:
    return PortalUser(uid, name or f"B24 user {uid}", email)


def pachca(uid: int, email: str, *, bot: bool = False, suspended: bool = False) -> PachcaUser:
    return PachcaUser(uid, f"Pachca user {uid}", email=email, bot=bot, suspended=suspended)


def test_emails_equal_after_trimming_and_lower_casing_match() -> None:
    joined = match_by_email([b24(1, "anna@example.com"), b24(2, "  Ivan@Example.COM ")],
                            [pachca(11, "ANNA@example.com"), pachca(12, "ivan@example.com\t")])
    assert joined.matches == (PersonMatch("anna@example.com", 1, 11), PersonMatch("ivan@example.com", 2, 12))
    assert joined.states == {"matched": 2, "bitrix24_only": 0, "pachca_only": 0, "ambiguous": 0}


def test_an_email_shared_in_pachca_matches_nobody_and_counts_everyone_carrying_it() -> None:
    joined = match_by_email([b24(1, "team@example.com"), b24(2, "olga@example.com")],
                            [pachca(11, "team@example.com"), pachca(12, "Team@example.com"),
                             pachca(13, "olga@example.com")])
    assert [(m.bitrix24_user_id, m.pachca_user_id) for m in joined.matches] == [(2, 13)]
    assert joined.states == {"matched": 1, "bitrix24_only": 0, "pachca_only": 0, "ambiguous": 3}
    assert [(s.side, s.user_ids, s.email) for s in joined.shared] == [("pachca", (11, 12), "team@example.com")]


def test_an_email_shared_in_bitrix24_matches_nobody() -> None:
    joined = match_by_email([b24(1, "ops@example.com"), b24(2, "ops@example.com "), b24(3, "x@example.com")],
                            [pachca(11, "ops@example.com")])
    assert joined.matches == ()
    assert joined.states == {"matched": 0, "bitrix24_only": 1, "pachca_only": 0, "ambiguous": 3}
    assert [(s.side, s.user_ids) for s in joined.shared] == [("bitrix24", (1, 2))]


def test_an_email_shared_on_one_side_only_is_still_ambiguous_without_a_counterpart() -> None:
    joined = match_by_email([b24(1, "a@example.com")], [pachca(11, "dup@example.com"), pachca(12, "dup@example.com")])
    assert joined.states == {"matched": 0, "bitrix24_only": 1, "pachca_only": 0, "ambiguous": 2}


def test_missing_emails_never_match_each_other() -> None:
    joined = match_by_email([b24(1, ""), b24(2, "   ")], [pachca(11, ""), pachca(12, "")])
    assert joined.matches == ()
    assert joined.shared == ()
    assert joined.states == {"matched": 0, "bitrix24_only": 2, "pachca_only": 2, "ambiguous": 0}


def test_pachca_bots_and_deactivated_users_take_no_part() -> None:
    joined = match_by_email([b24(1, "bot@example.com"), b24(2, "gone@example.com")],
                            [pachca(11, "bot@example.com", bot=True), pachca(12, "gone@example.com", suspended=True),
                             pachca(13, "gone@example.com", suspended=True)])
    assert joined.matches == ()
    assert joined.shared == ()  # two deactivated users do not make an e-mail shared
    assert joined.states == {"matched": 0, "bitrix24_only": 2, "pachca_only": 0, "ambiguous": 0}


def test_label_name_uses_the_bitrix24_name_and_the_email_when_there_is_none() -> None:
    joined = match_by_email([b24(1, "anna@example.com", name="Anna Petrova"), PortalUser(2, "", "ivan@example.com")],
                            [pachca(11, "anna@example.com"), pachca(12, "ivan@example.com")], label="name")
    assert [m.person for m in joined.matches] == ["Anna Petrova", "ivan@example.com"]


def test_an_unknown_label_is_a_bug_not_a_silent_default() -> None:
    with pytest.raises(ValueError, match="label"):
        match_by_email([], [], label="nickname")


def test_shared_emails_stay_out_of_repr() -> None:
    joined = match_by_email([b24(1, "secret@example.com"), b24(2, "secret@example.com")], [])
    assert "secret@example.com" not in repr(joined)
    assert "secret@example.com" not in repr(pachca(11, "secret@example.com"))


@pytest.mark.parametrize(("raw", "expected"), [
    (" A.B@Example.Com\n", "a.b@example.com"), (None, ""), (42, ""), ("", ""), ("   ", "")])
def test_normalize_email(raw: object, expected: str) -> None:
    assert normalize_email(raw) == expected


emails = st.sampled_from(["", "a@x.io", "A@X.io ", "b@x.io", "c@x.io", " c@x.io", "d@x.io"])


@given(st.lists(emails, max_size=8), st.lists(st.tuples(emails, st.booleans(), st.booleans()), max_size=8),
       st.sampled_from(["email", "name"]))
def test_every_user_lands_in_exactly_one_state(b24_emails: list[str], pachca_rows: list[tuple[str, bool, bool]],
                                               label: str) -> None:
    portal = [b24(i, e) for i, e in enumerate(b24_emails, 1)]
    workspace = [pachca(100 + i, e, bot=bot, suspended=gone) for i, (e, bot, gone) in enumerate(pachca_rows)]
    joined = match_by_email(portal, workspace, label=label)
    active = [u for u in workspace if not (u.bot or u.suspended)]
    states = joined.states
    assert states["matched"] * 2 + states["bitrix24_only"] + states["pachca_only"] + states["ambiguous"] == \
        len(portal) + len(active)
    by_id = {u.user_id: u for u in portal} | {u.user_id: u for u in workspace}
    for m in joined.matches:
        email = normalize_email(by_id[m.bitrix24_user_id].email)
        assert email
        assert email == normalize_email(by_id[m.pachca_user_id].email)
        # a match's e-mail belongs to exactly one user on each side
        assert [normalize_email(u.email) for u in portal].count(email) == 1
        assert [normalize_email(u.email) for u in active].count(email) == 1
