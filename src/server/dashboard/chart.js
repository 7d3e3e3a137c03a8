// A small SVG line chart (no library): axes with rounded ticks, one polyline per series, dots
// with tooltips, and a legend.

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** About `count` round tick values covering [min, max]. */
export function niceTicks(min, max, count = 5) {
  if (!(max > min)) max = min + 1;
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks = [];
  for (let v = Math.floor(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

function fmt(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 100 || a < 0.01 ? v.toExponential(1) : Number(v.toPrecision(3)).toString();
}

/**
 * series: [{name, cls, points: [[x, y], ...]}]. Returns an <svg>; each line carries
 * data-series and data-points (the number of points drawn).
 */
export function lineChart({ series, width = 560, height = 240, xLabel = "", yLabel = "", integerX = true, title = "" }) {
  const pad = { l: 58, r: 14, t: 30, b: 38 };
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title || `${yLabel} by ${xLabel}` });
  const clean = series.map((s) => ({ ...s, points: s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)) }));
  const all = clean.flatMap((s) => s.points);
  if (!all.length) {
    svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no data yet"));
    return svg;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const yTicks = niceTicks(Math.min(0, ...ys), Math.max(...ys), 4);
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const px = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const py = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);

  for (const t of yTicks) {
    svg.append(el("line", { class: "gridline", x1: pad.l, x2: width - pad.r, y1: py(t), y2: py(t) }));
    svg.append(el("text", { x: pad.l - 6, y: py(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  const xTicks = niceTicks(x0, x1, 6).filter((t) => t >= x0 && t <= x1 && (!integerX || Number.isInteger(t)));
  for (const t of xTicks) {
    svg.append(el("line", { class: "axis", x1: px(t), x2: px(t), y1: height - pad.b, y2: height - pad.b + 4 }));
    svg.append(el("text", { x: px(t), y: height - pad.b + 16, "text-anchor": "middle" }, fmt(t)));
  }
  svg.append(el("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b }));
  svg.append(el("line", { class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b }));
  if (xLabel) svg.append(el("text", { x: (pad.l + width - pad.r) / 2, y: height - 6, "text-anchor": "middle" }, xLabel));
  if (yLabel) svg.append(el("text", { x: 12, y: (pad.t + height - pad.b) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${(pad.t + height - pad.b) / 2})` }, yLabel));

  let kx = pad.l;
  for (const s of clean) {
    if (!s.points.length) continue;
    const line = el("polyline", {
      class: `series ${s.cls}`,
      points: s.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" "),
      "data-series": s.name,
      "data-points": s.points.length,
    });
    svg.append(line);
    if (s.points.length <= 60) {
      for (const [x, y] of s.points) {
        const dot = el("circle", { class: `dot ${s.cls}`, cx: px(x).toFixed(1), cy: py(y).toFixed(1), r: 3 });
        dot.append(el("title", {}, `${s.name} at ${xLabel || "x"} ${x}: ${y.toPrecision(4)}`));
        svg.append(dot);
      }
    }
    svg.append(el("rect", { class: `key ${s.cls}`, x: kx, y: 10, width: 12, height: 4, rx: 1 }));
    const label = el("text", { x: kx + 16, y: 16 }, s.name);
    svg.append(label);
    kx += 24 + s.name.length * 6.5;
  }
  return svg;
}
