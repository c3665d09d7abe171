// Client-side history of the pools: a ring of samples, rates from counter deltas, and the series the charts draw.
// Pure (no DOM, no fetch): unit-tested with node.

/** A fixed-size ring: push is O(1), the oldest item goes when full. */
export class Ring {
  constructor(capacity) {
    this.capacity = Math.max(1, capacity | 0);
    this.buffer = [];
    this.start = 0;
  }

  push(item) {
    if (this.buffer.length < this.capacity) {
      this.buffer.push(item);
    } else {
      this.buffer[this.start] = item;
      this.start = (this.start + 1) % this.capacity;
    }
  }

  get length() {
    return this.buffer.length;
  }

  /** Items oldest first. */
  items() {
    return this.buffer.slice(this.start).concat(this.buffer.slice(0, this.start));
  }

  last() {
    if (this.buffer.length === 0) return undefined;
    return this.buffer[(this.start + this.buffer.length - 1) % this.buffer.length];
  }

  clear() {
    this.buffer = [];
    this.start = 0;
  }
}

/** Per-second rate of a counter between two readings; null when it went back (pool recreated, restart). */
export function counterRate(before, after, elapsedSeconds) {
  if (!Number.isFinite(before) || !Number.isFinite(after) || !(elapsedSeconds > 0)) return null;
  if (after < before) return null;
  return (after - before) / elapsedSeconds;
}

/** The microsecond value of percentile `q` ("0.5", "0.99", ...) in an API percentiles dict, null when absent. */
export function percentile(dict, q) {
  if (!dict || typeof dict !== "object") return null;
  const value = dict[q];
  return Number.isFinite(value) && value > 0 ? value : null;
}

const COUNTERS = [
  ["tps", "xact_count"],
  ["qps", "query_count"],
  ["eps", "errors"],
  ["recv", "bytes_received"],
  ["sent", "bytes_sent"],
];

/** What a sample keeps of one pool: rates from the previous reading, gauges and percentiles as they are. */
export function poolPoint(previous, current, elapsedSeconds) {
  const point = {};
  for (const [name, field] of COUNTERS) {
    point[name] = previous ? counterRate(previous[field], current[field], elapsedSeconds) : null;
  }
  point.clients_active = current.clients_active ?? 0;
  point.clients_idle = current.clients_idle ?? 0;
  point.clients_waiting = current.clients_waiting ?? 0;
  point.servers_active = current.servers_active ?? 0;
  point.servers_idle = current.servers_idle ?? 0;
  point.servers_other = (current.servers_other ?? 0) + (current.servers_opening ?? 0);
  point.q50 = percentile(current.query_percentiles_us, "0.5");
  point.q95 = percentile(current.query_percentiles_us, "0.95");
  point.q99 = percentile(current.query_percentiles_us, "0.99");
  point.x50 = percentile(current.xact_percentiles_us, "0.5");
  point.x99 = percentile(current.xact_percentiles_us, "0.99");
  point.w99 = percentile(current.wait_percentiles_us, "0.99");
  return point;
}

const SUMMED = ["tps", "qps", "eps", "recv", "sent", "clients_active", "clients_idle", "clients_waiting",
  "servers_active", "servers_idle", "servers_other"];
const WORST = ["q50", "q95", "q99", "x50", "x99", "w99"];

/** All pools as one point: counts and rates summed; latencies are the worst pool's (a sum would mean nothing). */
export function totalPoint(points) {
  const total = {};
  for (const name of SUMMED) {
    let sum = null;
    for (const point of points) {
      if (point[name] !== null && point[name] !== undefined) sum = (sum ?? 0) + point[name];
    }
    total[name] = sum;
  }
  for (const name of WORST) {
    let worst = null;
    for (const point of points) {
      if (point[name] !== null && point[name] !== undefined) worst = Math.max(worst ?? 0, point[name]);
    }
    total[name] = worst;
  }
  return total;
}

/** A pool's key in samples: "database/user" as the API names it. */
export function poolKey(pool) {
  return pool.name ?? `${pool.database}/${pool.user}`;
}

/**
 * The history the charts draw from: `add(pools, atMs)` with each /api/pools answer. A sample is
 * {t, pools: Map(key -> point), total}; the first reading of a pool has no rates yet (null), and neither
 * has a reading after a gap longer than `maxGapSeconds` (the tab slept: a rate over it would mislead).
 */
export class History {
  constructor(capacity = 300, maxGapSeconds = 30, minGapSeconds = 0.5) {
    this.ring = new Ring(capacity);
    this.maxGapSeconds = maxGapSeconds;
    this.minGapSeconds = minGapSeconds;
    this.previous = null; // the reading rates are taken from: {t, pools: Map(key -> raw pool)}
  }

  add(pools, atMs) {
    const before = this.previous;
    const elapsed = before ? (atMs - before.t) / 1000 : 0;
    // A reading right after another (a button asked for a refresh) would make a noisy rate out of a few
    // counts: it keeps the last rates and its gauges, and the next reading takes its rates over the longer span.
    const tooSoon = before !== null && elapsed >= 0 && elapsed < this.minGapSeconds;
    const usable = before !== null && elapsed > 0 && elapsed <= this.maxGapSeconds;
    const lastSample = this.ring.last();
    const points = new Map();
    const raw = new Map();
    for (const pool of pools) {
      const key = poolKey(pool);
      raw.set(key, pool);
      const point = poolPoint(usable ? before.pools.get(key) : undefined, pool, elapsed);
      if (tooSoon) {
        const carried = lastSample?.pools.get(key);
        for (const [name] of COUNTERS) point[name] = carried ? carried[name] : null;
      }
      points.set(key, point);
    }
    const sample = { t: atMs, pools: points, total: totalPoint([...points.values()]) };
    if (!usable && !tooSoon) for (const [name] of COUNTERS) sample.total[name] = null;
    this.ring.push(sample);
    if (!tooSoon) this.previous = { t: atMs, pools: raw };
    return sample;
  }

  samples() {
    return this.ring.items();
  }

  last() {
    return this.ring.last();
  }

  /** [t, value] pairs of one measure, for all pools (key null) or one pool; samples without it are gaps (null). */
  series(measure, key = null) {
    return this.samples().map((sample) => {
      const point = key === null ? sample.total : sample.pools.get(key);
      const value = point ? point[measure] : null;
      return [sample.t, value === undefined ? null : value];
    });
  }
}
