"""Pachca workspaces' families: reminders overall and per performer, users and their tags."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.render import Family
from exporter.snapshot import ReminderTally, SourceState


def workspace_families(states: list[SourceState]) -> Iterator[Family]:
    """Each workspace's reminder counts, overall and per performer, and its users, e.g.

    pachca_reminders{workspace="team",status="undone",kind="call",priority="2"} 4.0
    pachca_performer_reminders_overdue{workspace="team",performer_id="7"} 1.0
    pachca_reminder_oldest_overdue_seconds{workspace="team"} 3600.5
    pachca_user_info{workspace="team",user_id="7",name="Anna Petrova",department="Sales"} 1.0
    pachca_user_tag{workspace="team",user_id="7",tag="Backend"} 1.0
    """
    reminders = Family.gauge("pachca_reminders", "Pachca reminders by status, kind and priority.",
                             labels=["workspace", "status", "kind", "priority"])
    overdue = Family.gauge("pachca_reminders_overdue",
                           "Open (undone) reminders whose due_at is in the past.",
                           labels=["workspace", "kind", "priority"])
    due_soon = Family.gauge("pachca_reminders_due_soon",
                            "Open reminders due within the configured due_soon window.",
                            labels=["workspace", "kind"])
    no_due = Family.gauge("pachca_reminders_without_due_date", "Reminders with no due_at.",
                          labels=["workspace", "status"])
    performer = Family.gauge("pachca_performer_reminders",
                             "Reminders per performer (a reminder counts once for each performer).",
                             labels=["workspace", "performer_id", "status"])
    performer_overdue = Family.gauge("pachca_performer_reminders_overdue",
                                     "Overdue open reminders per performer.",
                                     labels=["workspace", "performer_id"])
    oldest = Family.gauge("pachca_reminder_oldest_overdue_seconds",
                          "How long the most overdue open reminder is past its due time (0 if none).",
                          labels=["workspace"])
    info = Family.gauge(
        "pachca_user_info", "A Pachca user, value 1: every active user GET /users lists, plus bots and "
        "deactivated users who perform reminders. name is empty with names: false; department is free text.",
        labels=["workspace", "user_id", "name", "department"])
    tags = Family.gauge("pachca_user_tag", "An employee tag (list_tags) of a user in pachca_user_info, value 1.",
                        labels=["workspace", "user_id", "tag"])
    users_read = Family.gauge(
        "pachca_users_last_read_timestamp_seconds", "Unix time GET /users was last read to the end; "
        "names, departments and tags are that old. Absent until the first good read.", labels=["workspace"])
    malformed = Family.gauge(
        "pachca_reminders_malformed", "Reminders in the last cycle with a field that could not be read; "
        "they are counted with the label value 'unknown' where that field mattered.", labels=["workspace"])
    for state in states:
        t = state.data
        assert isinstance(t, ReminderTally)
        ws = state.key.target
        for (status, kind, priority), n in sorted(t.by_status.items()):
            reminders.add_metric([ws, status, kind, priority], n)
        for (kind, priority), n in sorted(t.overdue.items()):
            overdue.add_metric([ws, kind, priority], n)
        for kind, n in sorted(t.due_soon.items()):
            due_soon.add_metric([ws, kind], n)
        for status, n in sorted(t.without_due_date.items()):
            no_due.add_metric([ws, status], n)
        for (pid, status), n in sorted(t.performer.items()):
            performer.add_metric([ws, str(pid), status], n)
        for pid, n in sorted(t.performer_overdue.items()):
            performer_overdue.add_metric([ws, str(pid)], n)
        oldest.add_metric([ws], t.oldest_overdue_seconds)
        malformed.add_metric([ws], t.malformed)
        for user in t.listed_users:
            uid = str(user.user_id)
            info.add_metric([ws, uid, user.name, user.department], 1)
            for tag in user.tags:
                tags.add_metric([ws, uid, tag], 1)
        if t.users_read_at is not None:
            users_read.add_metric([ws], t.users_read_at)
    yield from (reminders, overdue, due_soon, no_due, performer, performer_overdue, oldest, info, tags, users_read,
                malformed)
