"""The web console's pure JavaScript (formatting, the sample ring and rates, chart geometry), run in node.

The page's modules that touch no DOM are plain ES modules: node imports them as they are served, so these are
the same files the browser runs, checked with plain values.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "src" / "pg_doorman" / "observe" / "static" / "assets"


def run_node(body: str) -> str:
    node = shutil.which("node")
    assert node, "node is needed (scripts/setup.sh installs nodejs)"
    script = (
        'import assert from "node:assert/strict";\n'
        f"const format = await import({json.dumps((ASSETS / 'format.js').as_uri())});\n"
        f"const series = await import({json.dumps((ASSETS / 'series.js').as_uri())});\n"
        f"const chart = await import({json.dumps((ASSETS / 'chart.js').as_uri())});\n" + body + '\nconsole.log("ok");\n'
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_formatting() -> None:
    run_node(
        """
        assert.equal(format.compact(0), "0");
        assert.equal(format.compact(999), "999");
        assert.equal(format.compact(1234), "1.23k");
        assert.equal(format.compact(1.5e6), "1.5M");
        assert.equal(format.compact(0.5), "0.5");
        assert.equal(format.compact(null), "\\u2013");  // an en dash: no value yet
        assert.equal(format.compact(NaN), "\\u2013");
        assert.equal(format.rate(12.5), "12.5/s");
        assert.equal(format.micros(850), "850µs");
        assert.equal(format.micros(12345), "12.3ms");
        assert.equal(format.micros(999999), "1s");
        assert.equal(format.micros(1520000), "1.52s");
        assert.equal(format.seconds(185), "3m05s");
        assert.equal(format.seconds(7620), "2h07m");
        assert.equal(format.seconds(0.25), "0.25s");
        assert.equal(format.bytes(512), "512 B");
        assert.equal(format.bytes(1536), "1.5 KiB");
        assert.equal(format.settingValue(""), '""');
        assert.equal(format.settingValue([1, "a"]), '[1,"a"]');
        assert.equal(format.settingValue(null), "null");
        """
    )


def test_ring_keeps_the_newest_items_in_order() -> None:
    run_node(
        """
        const ring = new series.Ring(3);
        assert.equal(ring.last(), undefined);
        for (const i of [1, 2, 3, 4, 5]) ring.push(i);
        assert.deepEqual(ring.items(), [3, 4, 5]);
        assert.equal(ring.length, 3);
        assert.equal(ring.last(), 5);
        ring.clear();
        assert.deepEqual(ring.items(), []);
        """
    )


def test_rates_from_counter_deltas_and_resets() -> None:
    run_node(
        """
        assert.equal(series.counterRate(100, 300, 2), 100);
        assert.equal(series.counterRate(300, 100, 2), null);   // counter went back: pool recreated
        assert.equal(series.counterRate(1, 2, 0), null);
        assert.equal(series.counterRate(undefined, 2, 1), null);
        assert.equal(series.percentile({"0.99": 1500}, "0.99"), 1500);
        assert.equal(series.percentile({"0.99": 0}, "0.99"), null);
        assert.equal(series.percentile({}, "0.5"), null);

        const pool = (name, xacts, queries, p99) => ({
          name, xact_count: xacts, query_count: queries, errors: 0, bytes_received: 0, bytes_sent: 0,
          clients_active: 1, clients_idle: 2, clients_waiting: 0, servers_active: 1, servers_idle: 1,
          servers_other: 0, servers_opening: 1, query_percentiles_us: {"0.5": 100, "0.95": 200, "0.99": p99},
          xact_percentiles_us: {}, wait_percentiles_us: {},
        });
        const history = new series.History(10, 30);
        const first = history.add([pool("a/u", 10, 20, 900), pool("b/u", 0, 0, 5000)], 1000);
        assert.equal(first.total.tps, null);               // one reading is not a rate
        assert.equal(first.pools.get("a/u").tps, null);
        const second = history.add([pool("a/u", 30, 60, 900), pool("b/u", 4, 4, 5000)], 3000);
        assert.equal(second.pools.get("a/u").tps, 10);
        assert.equal(second.pools.get("a/u").qps, 20);
        assert.equal(second.total.tps, 12);                // summed over pools
        assert.equal(second.total.q99, 5000);              // the worst pool's latency, not a sum
        assert.equal(second.total.clients_idle, 4);
        assert.equal(second.pools.get("a/u").servers_other, 1);  // opening counts as other
        // A pool that appears later has no rate yet; one that restarted its counters has none either.
        const third = history.add([pool("a/u", 5, 6, 900), pool("c/u", 50, 50, 10)], 5000);
        assert.equal(third.pools.get("a/u").tps, null);
        assert.equal(third.pools.get("c/u").tps, null);
        // After a long gap (a sleeping tab) no rate is made up.
        const fourth = history.add([pool("a/u", 100, 100, 900)], 60000);
        assert.equal(fourth.total.tps, null);
        assert.deepEqual(history.series("tps", "a/u").map(([, v]) => v), [null, 10, null, null]);
        assert.deepEqual(history.series("tps").map(([t]) => t), [1000, 3000, 5000, 60000]);
        assert.deepEqual(history.series("tps", "nope/u").map(([, v]) => v), [null, null, null, null]);

        // A refresh right after a poll carries the last rates; the next poll's rate spans from the older one.
        const quick = new series.History(10, 30, 0.5);
        quick.add([pool("a/u", 0, 0, 1)], 0);
        quick.add([pool("a/u", 20, 20, 1)], 2000);
        assert.equal(quick.add([pool("a/u", 21, 21, 1)], 2100).pools.get("a/u").tps, 10);
        assert.equal(quick.last().total.tps, 10);
        assert.equal(quick.add([pool("a/u", 60, 60, 1)], 4000).pools.get("a/u").tps, 20);
        """
    )


def test_chart_geometry() -> None:
    run_node(
        """
        assert.equal(chart.niceCeiling(0), 1);
        assert.equal(chart.niceCeiling(7), 10);
        assert.equal(chart.niceCeiling(1.2), 2);
        assert.equal(chart.niceCeiling(230), 250);
        assert.equal(chart.niceCeiling(1000), 1000);
        assert.equal(chart.niceCeiling(Infinity), 1);
        assert.equal(chart.pathData([[0, 1], [1, 2], [2, null], [3, 4]]), "M0.0,1.0L1.0,2.0M3.0,4.0");
        assert.equal(chart.pathData([[0, null]]), "");
        assert.equal(chart.pathData([[0, 1], [1, 1], [2, 3]], true), "M0.0,1.0L1.0,1.0L2.0,1.0L2.0,3.0");
        const at = (...seconds) => seconds.map((t) => ({ t: t * 1000 }));
        assert.equal(chart.chartSpan([], 600000), 60000);
        assert.equal(chart.chartSpan(at(0, 2, 4), 600000), 60000);        // a young history: one minute
        assert.equal(chart.chartSpan(at(0, 130), 600000), 180000);        // grows by whole minutes
        assert.equal(chart.chartSpan(at(0, 5000), 600000), 600000);       // never past the window
        """
    )
