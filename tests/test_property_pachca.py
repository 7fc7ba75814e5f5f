"""Property-based: any JSON (or bytes) from Pachca gives a tally or a typed error, never a crash."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import PachcaConfig, Secret
from exporter.snapshot import ApiTelemetry, ReminderTally
from exporter.sources.pachca import PachcaSource, TallyBuilder
from exporter.sources.pachca_client import parse_page
from tests.conftest import NO_WAIT, json_values, replaying, run_cycle

reminder_like = st.fixed_dictionaries({
    "id": json_values | st.integers(1, 50), "kind": json_values | st.sampled_from(["call", "email"]),
    "status": json_values | st.sampled_from(["done", "undone"]), "priority": json_values | st.integers(1, 3),
    "due_at": json_values | st.sampled_from(["2020-06-05T09:00:00.000Z", "2999-01-01T00:00:00Z", "garbage"]),
    "performer_ids": json_values | st.lists(st.integers(1, 5), max_size=3), "all_day": json_values})
page_like = st.fixed_dictionaries({
    "data": st.lists(reminder_like | json_values, max_size=4) | json_values,
    "meta": st.fixed_dictionaries({"paginate": st.fixed_dictionaries({
        "next_page": json_values | st.sampled_from(["a", "b"]), "has_next": json_values})}) | json_values,
})


@given(st.dictionaries(st.text(max_size=6), json_values) | page_like, st.lists(json_values, max_size=3))
def test_parse_page_reads_any_meta_leniently(body, data):
    page = parse_page({**body, "data": data})  # the client checked `data` is a list before this
    assert page.data == data
    assert page.next_page is None or isinstance(page.next_page, str)
    assert page.has_next in (None, True, False)


@given(st.lists(reminder_like | json_values, max_size=20))
def test_tally_builder_counts_any_records_without_crashing(records):
    builder = TallyBuilder(now=1_700_000_000.0, due_soon=86400.0)
    builder.add_page(records)
    tally = builder.result({})
    assert tally.total == sum(tally.by_status.values())
    assert sum(tally.overdue.values()) <= tally.total
    assert tally.oldest_overdue_seconds >= 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(page_like | json_values | st.binary(max_size=30), min_size=1, max_size=4),
       st.sampled_from([200, 400, 401, 403, 429, 500, 503]))
def test_a_whole_cycle_over_any_answers_gives_a_tally_or_a_source_failure(answers, status):
    def source(url: str) -> PachcaSource:
        config = PachcaConfig(name="w", token=Secret("t0ken-xyz"), base_url=f"{url}/v1", max_pages=5)
        return PachcaSource(config, ApiTelemetry(), retry=NO_WAIT)

    server = run_cycle(source, replaying(answers, status, headers={"Retry-After": "0"}), ReminderTally)
    # bounded: the page cap times the tries of each page, and a few pages of users
    assert len(server.requests) <= 5 * NO_WAIT.attempts * NO_WAIT.rate_limit_attempts + 10
