"""Our text-format writer against prometheus_client's own: the same families, samples and values after parsing,
with label values that need escaping and values that are not plain numbers; and the SQLSTATE roll-up."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pg_doorman.observe.metrics import render_text, sqlstate_rollup


class Fixed:
    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("pg_doorman_g", 'help with "quotes", \\ and\nnewline', labels=["user", "database"])
        gauge.add_metric(['we"ird\\user', "line\nbreak"], 1.5)
        gauge.add_metric(["plain", "db"], float("inf"))
        gauge.add_metric(["nan", "db"], float("nan"))
        gauge.add_metric(["big", "db"], 12345678901234567890.0)
        yield gauge
        counter = CounterMetricFamily("pg_doorman_c", "a counter", labels=["type"])
        counter.add_metric(["total"], 42)
        yield counter
        histogram = HistogramMetricFamily("pg_doorman_h_seconds", "a histogram", labels=["database"])
        histogram.add_metric(["db"], [("0.005", 1.0), ("0.5", 3.0), ("+Inf", 4.0)], 0.75)
        yield histogram
        bare = GaugeMetricFamily("pg_doorman_bare", "no labels")
        bare.add_metric([], 0.000123)
        yield bare


def parsed(text: str) -> list[tuple[str, str, str, list[tuple[str, dict[str, str], str]]]]:
    return [
        (f.name, f.type, f.documentation, [(s.name, s.labels, repr(float(s.value))) for s in f.samples])
        for f in text_string_to_metric_families(text)
    ]


def test_render_text_parses_like_prometheus_client_output() -> None:
    ours = render_text(Fixed().collect()).decode()
    reference = generate_latest(Fixed()).decode()  # type: ignore[arg-type]
    assert parsed(ours) == parsed(reference)
    assert 'pg_doorman_c_total{type="total"} 42\n' in ours
    assert 'pg_doorman_h_seconds_bucket{database="db",le="+Inf"} 4\n' in ours
    assert "# TYPE pg_doorman_c_total counter\n" in ours


def test_sqlstate_rollup() -> None:
    assert sqlstate_rollup("08006") == "08"
    assert sqlstate_rollup("53300") == "53"
    assert sqlstate_rollup("57P01") == "57"
    assert sqlstate_rollup("25P02") == "25P02"
    assert sqlstate_rollup("25001") == "other"
    assert sqlstate_rollup("26000") == "26000"
    assert sqlstate_rollup("42P01") == "other"
