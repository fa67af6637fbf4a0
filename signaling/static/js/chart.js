// Small charts drawn as inline SVG (no chart library, nothing from a CDN; the
// strict CSP allows it: SVG elements built with createElementNS, text through
// textContent). The SVG has a viewBox, so it scales to the width of its box,
// 360 px phones included; role="img" with a label that says what it shows,
// and each point or bar has a <title> for a pointer or a screen reader.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 200;
const PAD = { left: 44, right: 10, top: 12, bottom: 30 };

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function frame(label) {
  const svg = el("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label,
    preserveAspectRatio: "xMidYMid meet",
  });
  svg.append(el("title", {}, label));
  return svg;
}

// A "nice" top for the y axis: 1, 2 or 5 × a power of ten, at least `max`.
export function niceMax(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

function yAxis(svg, top, format) {
  const plotBottom = HEIGHT - PAD.bottom;
  for (const fraction of [0, 0.5, 1]) {
    const y = plotBottom - fraction * (plotBottom - PAD.top);
    svg.append(el("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y }));
    svg.append(el("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end" },
                  format(top * fraction)));
  }
}

// points: [{x: Date, y: number, label: string}] in time order.
export function lineChart(points, { label, format = String, timeFormat }) {
  const svg = frame(label);
  const top = niceMax(Math.max(...points.map((p) => p.y)));
  yAxis(svg, top, format);
  const t0 = points[0].x.getTime();
  const span = Math.max(points[points.length - 1].x.getTime() - t0, 1);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const xy = points.map((p) => [
    PAD.left + (points.length === 1 ? plotW / 2 : ((p.x.getTime() - t0) / span) * plotW),
    PAD.top + plotH - (p.y / top) * plotH,
  ]);
  const line = xy.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
  const base = PAD.top + plotH;
  svg.append(el("path", {
    class: "area", d: `${line}L${xy[xy.length - 1][0].toFixed(1)},${base}L${xy[0][0].toFixed(1)},${base}Z`,
  }));
  svg.append(el("path", { class: "series", d: line }));
  xy.forEach(([x, y], i) => {
    const dot = el("circle", { class: "point", cx: x.toFixed(1), cy: y.toFixed(1), r: 3 });
    dot.append(el("title", {}, points[i].label));
    svg.append(dot);
  });
  svg.append(el("text", { x: PAD.left, y: HEIGHT - 8 }, timeFormat(points[0].x)));
  svg.append(el("text", { x: WIDTH - PAD.right, y: HEIGHT - 8, "text-anchor": "end" },
                timeFormat(points[points.length - 1].x)));
  return svg;
}

// bars: [{y: number, label: string, short: string}], drawn left to right.
export function barChart(bars, { label, format = String }) {
  const svg = frame(label);
  const top = niceMax(Math.max(...bars.map((b) => b.y)));
  yAxis(svg, top, format);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const slot = plotW / bars.length;
  const barW = Math.max(Math.min(slot * 0.7, 48), 2);
  bars.forEach((bar, i) => {
    const h = (bar.y / top) * plotH;
    const x = PAD.left + i * slot + (slot - barW) / 2;
    const rect = el("rect", {
      class: "bar", x: x.toFixed(1), y: (PAD.top + plotH - h).toFixed(1),
      width: barW.toFixed(1), height: Math.max(h, bar.y > 0 ? 1 : 0).toFixed(1),
    });
    rect.append(el("title", {}, bar.label));
    svg.append(rect);
  });
  if (bars.length <= 12) {
    bars.forEach((bar, i) => svg.append(el("text", {
      x: (PAD.left + (i + 0.5) * slot).toFixed(1), y: HEIGHT - 8, "text-anchor": "middle",
    }, bar.short)));
  }
  return svg;
}
