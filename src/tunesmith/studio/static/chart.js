// A dependency-free line chart: drawLines(svg, {name: [[x, y], ...]}) draws each series with a legend.
function drawLines(svg, series) {
  const colors = ["#0b57d0", "#b3261e", "#137333", "#8a5a00"];
  const names = Object.keys(series).filter(n => series[n].length);
  const pts = names.flatMap(n => series[n]);
  svg.innerHTML = "";
  if (!pts.length) { svg.insertAdjacentHTML("beforeend", '<text x="10" y="20">no points yet</text>'); return; }
  const W = svg.clientWidth || 600, H = svg.clientHeight || 220, P = 36;
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1, y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = x => P + (x - x0) / ((x1 - x0) || 1) * (W - 2 * P), sy = y => H - P + (y0 - y) / ((y1 - y0) || 1) * (H - 2 * P);
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; svg.appendChild(e); return e; };
  add("text", {x: 4, y: 14, "font-size": 11}, y1.toFixed(3)); add("text", {x: 4, y: H - P, "font-size": 11}, y0.toFixed(3));
  add("text", {x: P, y: H - 8, "font-size": 11}, "step " + x0); add("text", {x: W - P - 40, y: H - 8, "font-size": 11}, "step " + x1);
  names.forEach((n, i) => {
    const d = series[n].map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
    add("path", {d: d, fill: "none", stroke: colors[i % 4], "stroke-width": 2});
    series[n].forEach(p => { const c = add("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: colors[i % 4]}); c.appendChild(document.createElementNS(ns, "title")).textContent = n + " @ step " + p[0] + ": " + p[1].toFixed(4); });
    add("text", {x: W - P - 90, y: 16 + 14 * i, fill: colors[i % 4], "font-size": 12}, n);
  });
}
