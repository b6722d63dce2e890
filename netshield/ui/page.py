"""The live view's one HTML page: inline CSS, an inline script that draws the graph as SVG.

The page needs nothing from the network but its own server: no external scripts, styles, fonts
or images. The graph it starts with is embedded as JSON (so it draws at load, before any
request), then `/api/events` (server-sent events) replaces it whenever the records change.

Guarantees: `render_page` escapes the embedded JSON so no value in it (a service name, an
identity, a reason's detail) can end the script element or become markup, and the script puts
every value into the document as text (`textContent`, attributes), never as HTML. The returned
Content-Security-Policy allows exactly the inline script and style of this page (by hash) and
connections back to the same origin, nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

COLORS: Mapping[str, str] = MappingProxyType(
    {
        "allow": "#2e9d4f",
        "deny": "#d62728",
        "revoked": "#8e44ad",
        "permitted": "#9aa5b1",
    }
)
"""Edge and marker colours; the tests look for the exact `deny` and `revoked` pixels."""

STYLE = """
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; font-family: "DejaVu Sans", "Liberation Sans", Arial,
  sans-serif; color: #1f2933; background: #f7f8fa; }
header { height: 44px; display: flex; align-items: center; gap: 18px; padding: 0 16px;
  background: #1f2933; color: #f7f8fa; font-size: 14px; }
header h1 { font-size: 16px; margin: 0; font-weight: 600; }
header .totals span { margin-right: 12px; }
header .totals .n-deny-h { color: #ff9b93; font-weight: 600; }
#status { margin-left: auto; font-size: 13px; }
#status.live::before { content: "\\25CF  "; color: #7bd88f; }
#status.down::before { content: "\\25CB  "; color: #f7b955; }
main { display: flex; height: calc(100% - 44px); }
#mesh { flex: 1; height: 100%; min-width: 0; }
aside { width: 330px; overflow-y: auto; padding: 10px 14px; background: #ffffff;
  border-left: 1px solid #d9dee4; font-size: 12.5px; }
aside h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: #52606d;
  margin: 14px 0 6px; }
aside ul { list-style: none; padding: 0; margin: 0; }
aside li { padding: 5px 0; border-bottom: 1px solid #eef0f3; }
aside .pair { font-weight: 600; }
aside .n-allow { color: #2e9d4f; }
aside .n-deny { color: #c0392b; font-weight: 600; }
aside .rev { color: #8e44ad; }
aside .muted { color: #7b8794; }
.node-label { font-size: 15px; font-weight: 600; text-anchor: middle; dominant-baseline: middle; }
.node-sub { font-size: 11.5px; text-anchor: middle; fill: #52606d; }
.edge-label { font-size: 13px; font-weight: 600; text-anchor: middle; paint-order: stroke;
  stroke: #f7f8fa; stroke-width: 5px; stroke-linejoin: round; }
.revoked-label { font-size: 12px; font-weight: 600; text-anchor: middle; paint-order: stroke;
  stroke: #f7f8fa; stroke-width: 4px; }
.empty { font-size: 16px; text-anchor: middle; fill: #7b8794; }
"""

SCRIPT = """
"use strict";
const NS = "http://www.w3.org/2000/svg";
const W = 900, H = 756, R = 44;
const C = JSON.parse(document.getElementById("colors").textContent);

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}
function txt(parent, x, y, s, cls, fill) {
  const t = el("text", {x: x, y: y, class: cls}, parent);
  if (fill) t.setAttribute("fill", fill);
  t.textContent = s;
  return t;
}
function html(tag, cls, s, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (s !== undefined) e.textContent = s;
  if (parent) parent.appendChild(e);
  return e;
}
function layout(nodes) {
  const pos = {};
  const n = nodes.length, cx = W / 2, cy = H / 2 + 10;
  const rx = W / 2 - 130, ry = H / 2 - 120;
  nodes.forEach((node, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
    pos[node.id] = n === 1 ? [cx, cy] : [cx + rx * Math.cos(a), cy + ry * Math.sin(a)];
  });
  return pos;
}
function unit(dx, dy) { const l = Math.hypot(dx, dy) || 1; return [dx / l, dy / l]; }
function curve(a, b, bend) {
  const [ux, uy] = unit(b[0] - a[0], b[1] - a[1]);
  const c = [(a[0] + b[0]) / 2 - uy * bend, (a[1] + b[1]) / 2 + ux * bend];
  const [sx, sy] = unit(c[0] - a[0], c[1] - a[1]);
  const [ex, ey] = unit(c[0] - b[0], c[1] - b[1]);
  const s = [a[0] + sx * R, a[1] + sy * R], e = [b[0] + ex * (R + 3), b[1] + ey * (R + 3)];
  const m = [0.25 * s[0] + 0.5 * c[0] + 0.25 * e[0], 0.25 * s[1] + 0.5 * c[1] + 0.25 * e[1]];
  const [nx, ny] = unit(-uy, ux);  // labels sit just outside the bend, off the line
  return {d: `M${s[0]},${s[1]} Q${c[0]},${c[1]} ${e[0]},${e[1]}`,
          mid: [m[0] + nx * 14, m[1] + ny * 14 + 4]};
}
function loop(a, bend) {
  const x = a[0], y = a[1] - R, h = 60 + bend;
  return {d: `M${x - 18},${y + 4} C${x - 70},${y - h} ${x + 70},${y - h} ${x + 18},${y + 2}`,
          mid: [x, y - h * 0.75]};
}
function defs(svg) {
  const d = el("defs", {}, svg);
  for (const kind of ["allow", "deny", "permitted"]) {
    const m = el("marker", {id: "arrow-" + kind, viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 12, markerHeight: 12, markerUnits: "userSpaceOnUse", orient: "auto"}, d);
    el("path", {d: "M0,0 L10,5 L0,10 z", fill: C[kind]}, m);
  }
}
function shortSerial(s) { return s.length > 10 ? s.slice(0, 8) + "\\u2026" : s; }

function drawGraph(g) {
  const svg = document.getElementById("mesh");
  svg.replaceChildren();
  defs(svg);
  if (!g.nodes.length) {
    txt(svg, W / 2, H / 2, "no connection records yet", "empty");
    return;
  }
  const pos = layout(g.nodes);
  const edgeLayer = el("g", {id: "edges"}, svg);
  const nodeLayer = el("g", {id: "nodes"}, svg);
  const labelLayer = el("g", {id: "labels"}, svg);
  for (const p of g.permitted_unused) {
    const geo = p.caller === p.callee ? loop(pos[p.caller], 0) : curve(pos[p.caller], pos[p.callee], 18);
    const grp = el("g", {class: "edge permitted", "data-caller": p.caller, "data-callee": p.callee,
      "data-decision": "permitted"}, edgeLayer);
    el("path", {d: geo.d, fill: "none", stroke: C.permitted, "stroke-width": 1.5,
      "stroke-dasharray": "3 5", "marker-end": "url(#arrow-permitted)"}, grp);
  }
  for (const e of g.edges) {
    const parts = [];
    if (e.allowed > 0) parts.push(["allow", e.allowed, 30, "\\u2713 " + e.allowed + " allowed"]);
    if (e.denied > 0) {
      const why = e.last_denied ? " \\u00b7 " + e.last_denied.reason : "";
      parts.push(["deny", e.denied, e.allowed > 0 ? 95 : 30, "\\u2717 " + e.denied + " denied" + why]);
    }
    for (const [kind, count, bend, label] of parts) {
      const geo = e.caller === e.callee ? loop(pos[e.caller], bend) : curve(pos[e.caller], pos[e.callee], bend);
      const grp = el("g", {class: "edge " + kind, "data-caller": e.caller, "data-callee": e.callee,
        "data-decision": kind, "data-count": count}, edgeLayer);
      const attrs = {d: geo.d, fill: "none", stroke: C[kind], "stroke-width": 4,
        "marker-end": "url(#arrow-" + kind + ")"};
      if (kind === "deny") attrs["stroke-dasharray"] = "12 6";
      el("path", attrs, grp);
      const t = el("title", {}, grp);
      t.textContent = e.caller + " \\u2192 " + e.callee + ": " + label;
      txt(labelLayer, geo.mid[0], geo.mid[1], label, "edge-label edge-count " + kind,
          kind === "deny" ? "#b3261e" : "#1e7b3a").setAttribute("data-edge", e.caller + ">" + e.callee);
    }
  }
  for (const n of g.nodes) {
    const [x, y] = pos[n.id];
    const grp = el("g", {class: "node" + (n.revoked ? " revoked" : ""), "data-node": n.id,
      "data-kind": n.kind, "data-revoked": n.revoked || ""}, nodeLayer);
    const attrs = {cx: x, cy: y, r: R, fill: n.revoked === "service" ? "#f3e8f8" : "#ffffff",
      stroke: n.kind === "service" ? "#34495e" : "#7b8794", "stroke-width": 2.5};
    if (n.kind === "unidentified" || n.kind === "address") attrs["stroke-dasharray"] = "5 4";
    if (n.kind === "native") attrs.fill = "#eaf2fb";
    el("circle", attrs, grp);
    let label = n.label;
    if (label.length > 14) label = label.slice(0, 13) + "\\u2026";
    txt(grp, x, y, label, "node-label");
    const sub = n.kind === "native" ? "native service" : n.kind === "unidentified" ? "no verified identity"
      : n.kind === "address" ? "address" : n.kind === "identity" ? "identity"
      : n.in_policy === false ? "not in policy" : n.enabled === false ? "disabled" : "";
    if (sub) txt(grp, x, y + R + 16, sub, "node-sub");
    if (n.revoked) {
      el("circle", {cx: x, cy: y, r: R + 8, fill: "none", stroke: C.revoked, "stroke-width": 4,
        "stroke-dasharray": "7 4", class: "revoked-ring"}, grp);
      const lines = n.revoked === "service" ? ["\\u2298 service revoked"]
        : n.revoked_instances.slice(0, 2).map(s => "\\u2298 revoked instance " + shortSerial(s));
      if (n.revoked !== "service" && n.revoked_instances.length > 2)
        lines.push("+" + (n.revoked_instances.length - 2) + " more");
      const below = y >= H / 2 + 10;  // badges on the outer side, away from most edges
      lines.forEach((s, i) => {
        const ty = below ? y + R + (sub ? 34 : 24) + 16 * i : y - R - 16 - 16 * (lines.length - 1 - i);
        txt(labelLayer, x, ty, s, "revoked-label", C.revoked).setAttribute("data-revoked-node", n.id);
      });
    }
  }
}

function drawPanel(g) {
  const t = g.totals;
  const totals = document.getElementById("totals");
  totals.replaceChildren();
  html("span", "", t.records + " records", totals);
  html("span", "", t.allowed + " allowed", totals);
  html("span", t.denied ? "n-deny-h" : "", t.denied + " denied", totals);
  html("span", "", t.revoked_nodes + " revoked", totals);
  const flows = document.getElementById("flows");
  flows.replaceChildren();
  if (!g.edges.length) html("li", "muted", "none yet", flows);
  for (const e of g.edges) {
    const li = html("li", "flow", undefined, flows);
    li.dataset.caller = e.caller; li.dataset.callee = e.callee;
    li.dataset.allowed = e.allowed; li.dataset.denied = e.denied;
    html("div", "pair", e.caller + " \\u2192 " + e.callee, li);
    const counts = html("div", "", undefined, li);
    html("span", "n-allow", e.allowed + " allowed", counts);
    counts.append(" \\u00b7 ");
    html("span", e.denied ? "n-deny" : "", e.denied + " denied", counts);
    if (e.streams) counts.append(" \\u00b7 " + e.streams + " as tunnel streams (" + e.tunnels + " tunnel(s) closed)");
    if (e.permitted === false) counts.append(" \\u00b7 not permitted by policy");
    if (e.last) {
      const last = html("div", "muted last", "last: " + e.last.decision + " " + e.last.reason + " at " + e.last.ts, li);
      last.title = e.last.detail;
    }
    if (e.last_denied && (!e.last || e.last_denied.conn_id !== e.last.conn_id))
      html("div", "muted", "last denial: " + e.last_denied.reason + ": " + e.last_denied.detail, li);
  }
  const revs = document.getElementById("revocations");
  revs.replaceChildren();
  if (!g.revocations.length) html("li", "muted", "none", revs);
  for (const r of g.revocations) {
    const what = r.kind === "instance" ? "instance " + r.target + " of " + r.service
      : r.kind === "service" ? "service " + r.target : "platform " + r.target;
    const from = r.sources.map(x => x === "cas" ? "the CAS feed" : "records").join(" and ");
    html("li", "rev revocation", what + " (from " + from + ")", revs);
  }
  const src = document.getElementById("sources");
  src.replaceChildren();
  for (const s of g.sources || []) {
    const li = html("li", "source", s.path, src);
    html("div", "muted", s.state + ", " + s.lines + " lines, " + s.skipped + " skipped" +
      (s.rotations ? ", " + s.rotations + " rotations" : "") + (s.error ? " \\u2014 " + s.error : ""), li);
  }
  if (g.cas) {
    const li = html("li", "source cas", "CAS " + g.cas.url, src);
    html("div", "muted", g.cas.reachable ? "reachable, policy version " + g.cas.policy_version
      : "unreachable" + (g.cas.error ? ": " + g.cas.error : ""), li);
  }
}

function draw(g) {
  drawGraph(g);
  drawPanel(g);
  document.getElementById("mesh").dataset.version = g.version;
}

draw(JSON.parse(document.getElementById("graph").textContent));
const status = document.getElementById("status");
const source = new EventSource("api/events");
source.addEventListener("graph", ev => { draw(JSON.parse(ev.data)); });
source.onopen = () => { status.textContent = "live"; status.className = "live"; };
source.onerror = () => { status.textContent = "reconnecting\\u2026"; status.className = "down"; };
"""

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>netshield \u00b7 mesh</title>
<link rel="icon" href="data:,">
<style>{style}</style>
</head>
<body>
<header>
<h1>netshield \u00b7 mesh</h1>
<div class="totals" id="totals"></div>
<div id="status" class="down">connecting\u2026</div>
</header>
<main>
<svg id="mesh" viewBox="0 0 900 756" preserveAspectRatio="xMidYMid meet" role="img"
 aria-label="services and the connections between them"></svg>
<aside>
<h2>Flows</h2><ul id="flows"></ul>
<h2>Revoked</h2><ul id="revocations"></ul>
<h2>Sources</h2><ul id="sources"></ul>
</aside>
</main>
<script id="graph" type="application/json">{graph}</script>
<script id="colors" type="application/json">{colors}</script>
<script>{script}</script>
</body>
</html>
"""


def embed_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no `<`, `>` or `&` appears literally."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def content_security_policy() -> str:
    """Only this page's inline script and style (by hash), and requests to its own origin."""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src '{_sha256(SCRIPT)}'",
            f"style-src '{_sha256(STYLE)}'",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def render_page(graph: dict[str, Any]) -> str:
    """The page with `graph` (a `/api/graph` document) embedded as its first picture."""
    return TEMPLATE.format(
        style=STYLE, script=SCRIPT, graph=embed_json(graph), colors=embed_json(dict(COLORS))
    )


__all__ = ["COLORS", "content_security_policy", "embed_json", "render_page"]
