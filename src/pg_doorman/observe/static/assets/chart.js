// Small SVG charts drawn by hand: a time-series line chart with a hover readout, and sparklines.
// Every number drawn comes from the History samples; labels are set as text, never parsed.

import { h, s, replaceChildren, setText } from "./dom.js";

/** The smallest 1/2/5 x 10^k at or above `value` (the chart's top line); 1 for empty charts. */
export function niceCeiling(value) {
  if (!(value > 0) || !Number.isFinite(value)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power * (1 + 1e-9)) return step * power;
  }
  return 10 * power;
}

/** The time the x axis covers: the history so far in whole minutes (at least one), at most `windowMs`. */
export function chartSpan(samples, windowMs) {
  if (samples.length < 2) return Math.min(60000, windowMs);
  const history = samples[samples.length - 1].t - samples[0].t;
  return Math.min(windowMs, Math.max(60000, Math.ceil(history / 60000) * 60000));
}

/**
 * SVG path data for [x, y] points; null y breaks the line (a gap, not a drop to zero). With `step`, a value
 * holds until the next reading (for counts of connections, which are readings, not averages).
 */
export function pathData(points, step = false) {
  let d = "";
  let pen = false;
  let lastY = 0;
  for (const [x, y] of points) {
    if (y === null || y === undefined || !Number.isFinite(y)) {
      pen = false;
      continue;
    }
    if (pen && step && y !== lastY) d += `L${x.toFixed(1)},${lastY.toFixed(1)}`;
    d += `${pen ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    pen = true;
    lastY = y;
  }
  return d;
}

/**
 * A line chart in `container`: `new LineChart(container, {title, format, series: [{key, label}]})`, then
 * `update(samples, pick)` where pick(sample, key) -> value or null. Time runs over the last `windowMs`.
 */
export class LineChart {
  constructor(container, { title, format, series, windowMs = 10 * 60 * 1000, height = 150, step = false }) {
    this.format = format;
    this.step = step;
    this.series = series;
    this.windowMs = windowMs;
    this.height = height;
    this.samples = [];
    this.pick = () => null;
    this.hoverIndex = null;
    this.values = series.map(() => h("span", { class: "legend-value" }, "–"));
    this.legend = h(
      "div",
      { class: "legend" },
      series.map((def, i) => h("span", { class: `legend-item s${i}` }, h("i", { class: "swatch" }), def.label, " ", this.values[i])),
    );
    this.hoverTime = h("span", { class: "chart-hover-time" });
    this.plot = h("div", { class: "plot" });
    this.root = h(
      "section",
      { class: "card chart-card" },
      h("header", { class: "card-head" }, h("h3", null, title), this.hoverTime),
      this.plot,
      this.legend,
    );
    container.appendChild(this.root);
    this.plot.addEventListener("mousemove", (event) => this.hover(event));
    this.plot.addEventListener("mouseleave", () => {
      this.hoverIndex = null;
      this.draw();
    });
  }

  update(samples, pick) {
    this.samples = samples;
    this.pick = pick;
    this.draw();
  }

  geometry() {
    const width = Math.max(this.plot.clientWidth || 0, 200);
    return { width, height: this.height, left: 44, right: 8, top: 8, bottom: 18 };
  }

  hover(event) {
    if (this.samples.length === 0) return;
    const g = this.geometry();
    const box = this.plot.getBoundingClientRect();
    const now = this.samples[this.samples.length - 1].t;
    const span = chartSpan(this.samples, this.windowMs);
    const t = now - span + ((event.clientX - box.left - g.left) / (g.width - g.left - g.right)) * span;
    let best = 0;
    for (let i = 1; i < this.samples.length; i += 1) {
      if (Math.abs(this.samples[i].t - t) < Math.abs(this.samples[best].t - t)) best = i;
    }
    this.hoverIndex = best;
    this.draw();
  }

  draw() {
    const g = this.geometry();
    const samples = this.samples;
    const now = samples.length ? samples[samples.length - 1].t : Date.now();
    const span = chartSpan(samples, this.windowMs);
    const from = now - span;
    const values = this.series.map((def) => samples.map((sample) => this.pick(sample, def.key)));
    let top = 0;
    for (const list of values) for (const v of list) if (v !== null && v > top) top = v;
    top = niceCeiling(top);
    const innerW = g.width - g.left - g.right;
    const innerH = g.height - g.top - g.bottom;
    const x = (t) => g.left + ((t - from) / span) * innerW;
    const y = (v) => g.top + innerH - (v / top) * innerH;

    const grid = [0, 0.5, 1].map((f) =>
      s("g", { class: "grid" },
        s("line", { x1: g.left, x2: g.width - g.right, y1: y(top * f), y2: y(top * f) }),
        s("text", { x: g.left - 6, y: y(top * f) + 4, "text-anchor": "end" }, this.format(top * f))),
    );
    const minutes = Math.round(span / 60000);
    const axis = s("g", { class: "axis" },
      s("text", { x: g.left, y: g.height - 4 }, `-${minutes}m`),
      s("text", { x: g.width - g.right, y: g.height - 4, "text-anchor": "end" }, "now"));
    let drawn = 0;
    const lines = values.map((list, i) => {
      const points = list.map((v, j) => [x(samples[j].t), v === null ? null : y(v)]);
      drawn += points.filter(([, py]) => py !== null).length;
      return s("path", { class: `line s${i}`, d: pathData(points, this.step) });
    });
    const svg = s("svg", {
      class: "chart",
      width: g.width,
      height: g.height,
      viewBox: `0 0 ${g.width} ${g.height}`,
      role: "img",
      "data-points": drawn,
    }, grid, axis, lines);
    if (this.hoverIndex !== null && samples[this.hoverIndex]) {
      const hx = x(samples[this.hoverIndex].t);
      svg.appendChild(s("line", { class: "cursor", x1: hx, x2: hx, y1: g.top, y2: g.top + innerH }));
    }
    replaceChildren(this.plot, svg);

    const index = this.hoverIndex ?? samples.length - 1;
    this.values.forEach((node, i) => setText(node, index >= 0 ? this.format(values[i][index]) : "–"));
    setText(this.hoverTime, this.hoverIndex !== null ? new Date(samples[index].t).toLocaleTimeString() : "");
  }
}

/** A tiny line of the last values (nulls are gaps), scaled to its own maximum. */
export function sparkline(values, { width = 96, height = 22, className = "" } = {}) {
  const top = Math.max(...values.map((v) => (v === null ? 0 : v)), 0) || 1;
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values.map((v, i) => [i * step, v === null ? null : height - 1 - (v / top) * (height - 2)]);
  return s("svg", {
    class: `spark ${className}`, width, height, viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", "aria-hidden": "true",
  },
    s("path", { d: pathData(points) }));
}
