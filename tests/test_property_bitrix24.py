"""Property-based: any JSON (or bytes) from Bitrix24 gives a result or a typed error, never a crash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import Bitrix24Config, Secret
from exporter.errors import ApiError
from exporter.snapshot import ApiTelemetry, PortalSnapshot
from exporter.sources.bitrix24 import Bitrix24Source
from exporter.sources.bitrix24_answers import parse_counters
from exporter.sources.bitrix24_client import parse_batch
from tests.conftest import NO_PAUSE, NO_WAIT, json_values, replaying, run_cycle

# shapes close to the real ones, with any values inside, find more than noise does
batch_like = st.fixed_dictionaries({"result": st.fixed_dictionaries({
    "result": json_values | st.dictionaries(st.sampled_from(["c0", "c1", "p50"]), json_values),
    "result_error": json_values,
    "result_time": json_values,
})})
user_page_like = st.fixed_dictionaries({"result": st.lists(json_values | st.fixed_dictionaries(
    {"ID": json_values, "NAME": json_values, "ACTIVE": json_values}), max_size=3),
    "total": json_values, "next": json_values})


UNREADABLE = object()


def parse_or_refuse(parse: Callable[[Any], Any], body: Any) -> Any:
    """What `parse` makes of `body`, or UNREADABLE when it refuses it with the ApiError for an unreadable
    answer (any other exception fails the test)."""
    try:
        return parse(body)
    except ApiError as exc:
        if exc.code != "invalid_response":
            raise
        return UNREADABLE


@given(json_values | batch_like)
def test_parse_batch_returns_a_result_or_a_typed_error(body):
    result = parse_or_refuse(parse_batch, body)
    assert result is UNREADABLE or (isinstance(result.results, dict) and isinstance(result.errors, dict))


@given(json_values)
def test_parse_counters_returns_numbers_none_or_a_typed_error(result):
    counters = parse_or_refuse(parse_counters, result)
    assert counters is UNREADABLE or counters is None or all(isinstance(name, str) and isinstance(v, float)
                                                              for name, v in counters)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values | batch_like | user_page_like | st.binary(max_size=30), min_size=1, max_size=4),
       st.sampled_from([200, 302, 400, 401, 429, 500, 503]))
def test_a_whole_cycle_over_any_answers_gives_a_snapshot_or_a_source_failure(answers, status):
    def source(url: str) -> Bitrix24Source:
        config = Bitrix24Config(name="p", webhook_url=Secret(f"{url}/rest/1/abc/"), roles=("all",))
        return Bitrix24Source(config, ApiTelemetry(), retry=NO_WAIT, pause=NO_PAUSE)

    run_cycle(source, replaying(answers, status), PortalSnapshot)
