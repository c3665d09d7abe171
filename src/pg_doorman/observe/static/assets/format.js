// Number, duration, byte and time formatting for the console (pure functions: unit-tested with node).

const SI = ["", "k", "M", "G", "T", "P"];

/** 1234 -> "1.23k"; small values keep up to `digits` significant digits; null/NaN -> "–". */
export function compact(value, digits = 3) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const sign = value < 0 ? "-" : "";
  let v = Math.abs(value);
  let i = 0;
  while (v >= 1000 && i < SI.length - 1) {
    v /= 1000;
    i += 1;
  }
  if (v === 0) return "0";
  const text = v >= 100 || (i === 0 && Number.isInteger(v)) ? String(Math.round(v)) : v.toPrecision(digits);
  return sign + trimZeros(text) + SI[i];
}

function trimZeros(text) {
  return text.includes(".") && !text.includes("e") ? text.replace(/\.?0+$/, "") : text;
}

/** A rate per second: "0", "0.5/s", "1.2k/s". */
export function rate(perSecond) {
  if (perSecond === null || perSecond === undefined || !Number.isFinite(perSecond)) return "–";
  return compact(perSecond) + "/s";
}

/** Microseconds as a human duration: 850µs, 12.3ms, 1.52s, 3m05s. */
export function micros(us) {
  if (us === null || us === undefined || !Number.isFinite(us)) return "–";
  if (us < 999.5) return `${Math.round(us)}µs`;
  if (us < 999_500) return `${trimZeros((us / 1000).toPrecision(3))}ms`;
  return seconds(us / 1_000_000);
}

/** Seconds as a human duration: 0.25s, 42s, 3m05s, 2h07m, 3d04h. */
export function seconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  if (s < 10) return `${trimZeros(s.toPrecision(3))}s`;
  if (s < 60) return `${Math.round(s)}s`;
  const total = Math.floor(s);
  const d = Math.floor(total / 86400);
  const h = Math.floor((total % 86400) / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  if (d > 0) return `${d}d${pad(h)}h`;
  if (h > 0) return `${h}h${pad(m)}m`;
  return `${m}m${pad(sec)}s`;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

/** Bytes with binary units: 512 B, 1.5 KiB, 230 MiB. */
export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  const text = i === 0 ? String(Math.round(v)) : trimZeros(v.toPrecision(3));
  return `${text} ${units[i]}`;
}

/** A Unix time (seconds) as local HH:MM:SS, with the date when it is not today. */
export function clock(unixSeconds, now = Date.now()) {
  if (!Number.isFinite(unixSeconds)) return "–";
  const at = new Date(unixSeconds * 1000);
  const time = `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}`;
  const today = new Date(now);
  if (at.toDateString() === today.toDateString()) return time;
  return `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ${time}`;
}

/** A configuration value as one line of text (objects and lists as JSON). */
export function settingValue(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "string") return value === "" ? '""' : value;
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}
