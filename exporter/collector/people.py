"""One person across both tools: the `people` section's join of Bitrix24 and Pachca users, made at render time."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import structlog

from exporter.config import PeopleConfig
from exporter.people import PeopleMatch, match_by_email
from exporter.render import Family
from exporter.snapshot import PortalSnapshot, ReminderTally, SourceState

log = structlog.get_logger()


class PeopleFamilies:
    """One person across both tools, joined at render time for each `people` pair, e.g.

    tasks_exporter_person_info{person="a@x.io",portal="acme",bitrix24_user_id="1",workspace="team",pachca_user_id="7"} 1
    tasks_exporter_people{portal="acme",workspace="team",state="matched"} 40.0

    Without a `people` section both families are there with no rows. Each e-mail that several users share is
    logged once (by user ids, never the e-mail), however often it renders.
    """

    def __init__(self, people: PeopleConfig | None) -> None:
        self._people = people
        self._reported: set[tuple[str, str, str]] = set()  # (side, portal or workspace, e-mail)
        self._lock = threading.Lock()

    def families(self, states: list[SourceState]) -> Iterator[Family]:
        person = Family.gauge(
            "tasks_exporter_person_info", "One person in both tools, value 1: a Bitrix24 user and a Pachca user "
            "with the same e-mail. person is the e-mail, or the Bitrix24 name with people.label: name.",
            labels=["person", "portal", "bitrix24_user_id", "workspace", "pachca_user_id"])
        people = Family.gauge(
            "tasks_exporter_people", "Users of a portal and a workspace by match state: matched (pairs), "
            "bitrix24_only, pachca_only, ambiguous (users of both sides whose e-mail is shared on one side).",
            labels=["portal", "workspace", "state"])
        portals = {s.key.target: s.data for s in states if isinstance(s.data, PortalSnapshot)}
        workspaces = {s.key.target: s.data for s in states if isinstance(s.data, ReminderTally)}
        if self._people is None:
            pairs: list[tuple[str, str]] = []
        elif self._people.pairs is None:  # no `pairs`: every portal with every workspace
            pairs = [(p, w) for p in portals for w in workspaces]
        else:
            pairs = [(pair.portal, pair.workspace) for pair in self._people.pairs]
        label = self._people.label if self._people else "email"
        for portal_name, workspace_name in pairs:
            portal, workspace = portals.get(portal_name), workspaces.get(workspace_name)
            if portal is None or workspace is None or workspace.users_read_at is None:
                continue  # a side not read yet: no series rather than a misleading count
            joined = match_by_email(portal.users, workspace.users, label=label)
            self._report(portal_name, workspace_name, joined)
            for m in joined.matches:
                person.add_metric([m.person, portal_name, str(m.bitrix24_user_id), workspace_name,
                                   str(m.pachca_user_id)], 1)
            for state, n in joined.states.items():
                people.add_metric([portal_name, workspace_name, state], n)
        yield from (person, people)

    def _report(self, portal: str, workspace: str, joined: PeopleMatch) -> None:
        for shared in joined.shared:
            target = portal if shared.side == "bitrix24" else workspace
            with self._lock:
                if (shared.side, target, shared.email) in self._reported:
                    continue
                self._reported.add((shared.side, target, shared.email))
            log.warning("people_email_shared", side=shared.side, target=target, user_ids=list(shared.user_ids),
                        hint="an e-mail several users carry matches nobody; they count as ambiguous")
