"""Property-based: any JSON (or bytes) from Bitrix24 gives a result or a typed error, never a crash."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import Bitrix24Config, Secret
from exporter.errors import ApiError
from exporter.snapshot import ApiTelemetry, PortalSnapshot
from exporter.sources.bitrix24 import Bitrix24Source, parse_counters
from exporter.sources.bitrix24_client import OperationPause, parse_batch
from exporter.sources.retries import RetryPolicy
from tests.conftest import ReplayTransport, run_cycle

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=20)
# shapes close to the real ones, with any values inside, find more than noise does
batch_like = st.fixed_dictionaries({"result": st.fixed_dictionaries({
    "result": json_values | st.dictionaries(st.sampled_from(["c0", "c1", "p50"]), json_values),
    "result_error": json_values,
    "result_time": json_values,
})})
user_page_like = st.fixed_dictionaries({"result": st.lists(json_values | st.fixed_dictionaries(
    {"ID": json_values, "NAME": json_values, "ACTIVE": json_values}), max_size=3),
    "total": json_values, "next": json_values})


@given(json_values | batch_like)
def test_parse_batch_returns_a_result_or_a_typed_error(body):
    try:
        result = parse_batch(body)
    except ApiError as exc:
        assert exc.code == "invalid_response"
    else:
        assert isinstance(result.results, dict) and isinstance(result.errors, dict)


@given(json_values)
def test_parse_counters_returns_numbers_none_or_a_typed_error(result):
    try:
        counters = parse_counters(result)
    except ApiError as exc:
        assert exc.code == "invalid_response"
    else:
        assert counters is None or all(isinstance(name, str) and isinstance(v, float) for name, v in counters)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values | batch_like | user_page_like | st.binary(max_size=30), min_size=1, max_size=4),
       st.sampled_from([200, 302, 400, 401, 429, 500, 503]))
def test_a_whole_cycle_over_any_answers_gives_a_snapshot_or_a_source_failure(answers, status):
    config = Bitrix24Config(name="p", webhook_url=Secret("https://p.example/rest/1/abc/"), roles=("all",))
    retry = RetryPolicy(attempts=2, rate_limit_attempts=2, base_delay=0.0, max_delay=0.0)
    source = Bitrix24Source(config, ApiTelemetry(), retry=retry, pause=OperationPause(default=0.0, least=0.0),
                            transport=ReplayTransport(answers, status))
    run_cycle(source, PortalSnapshot)
