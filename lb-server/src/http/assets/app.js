// lb-server's status page: renders the state the daemon pushes on
// /api/events (server-sent events, one "state" event per change, at most
// two a second, and one every two seconds regardless). Everything is built
// with textContent: names and labels come from backends and are never
// parsed as HTML.
"use strict";

const KINDS = ["FAILOVER", "FAILFAST", "FAILSAFE", "FORKING", "BROADCAST", "MULTICAST"];
// No event for this long: the daemon is taken as unreachable.
const SILENCE_MS = 6000;

let source = null;
let lastEvent = 0;

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

function pct(x, digits = 1) {
  return (100 * x).toFixed(digits) + "%";
}

function num(x) {
  if (x >= 1e6) return (x / 1e6).toFixed(1) + "M";
  if (x >= 1e4) return (x / 1e3).toFixed(1) + "k";
  return String(x);
}

function version(v) {
  const gen = Math.floor(v / 4294967296);
  return gen + "." + (v % 4294967296);
}

function kind(k) {
  return typeof k === "number" ? (KINDS[k] || String(k)) : String(k || "FAILOVER");
}

function pairs(m) {
  return Object.entries(m || {}).map(([k, v]) => k + "=" + v).sort().join(", ");
}

function stateOf(i) {
  if (i.drained) return "draining";
  if (i.health === "ejected") return "ejected";
  if (i.health === "circuit_open") return "circuit open";
  return "healthy";
}

function bar(cls, fraction, label) {
  const b = el("div", "bar " + cls);
  const fill = el("span");
  fill.style.width = Math.max(0, Math.min(1, fraction)) * 100 + "%";
  b.append(fill, el("em", "", label));
  return b;
}

// --- one service ---------------------------------------------------------

const COLUMNS = [
  ["Instance", "id"], ["Address", "addr"], ["Zone", "zone"], ["Labels", "labels"],
  ["State", "state"], ["Utilization", "util"], ["Active", "num"], ["QPS", "num"],
  ["Weight", "weight"], ["Share", "share"], ["Calls", "num"], ["Failed", "num"],
];

function section(name) {
  let s = document.querySelector(`section[data-service="${CSS.escape(name)}"]`);
  if (s) return s;
  s = el("section", "service");
  s.dataset.service = name;
  const head = el("h2");
  head.append(el("span", "name", name), el("span", "policy"), el("span", "params"));
  const filter = el("input", "filter");
  filter.type = "search";
  filter.placeholder = "filter instances";
  filter.addEventListener("input", () => applyFilter(s));
  const table = el("table", "instances");
  const tr = el("tr");
  for (const [title, cls] of COLUMNS) tr.append(el("th", cls, title));
  table.append(el("thead"), el("tbody"));
  table.tHead.append(tr);
  s.append(head, el("div", "facts"), el("div", "settings"), filter, table);
  return s;
}

function applyFilter(s) {
  const q = s.querySelector(".filter").value.trim().toLowerCase();
  for (const tr of s.querySelectorAll("tbody tr")) {
    tr.hidden = q !== "" && !tr.dataset.text.includes(q);
  }
}

function renderService(s, svc) {
  const head = s.querySelector("h2");
  head.querySelector(".policy").textContent = svc.policy ? svc.policy.name : "";
  const params = (svc.non_default_params || [])
    .map((p) => p + "=" + ((svc.policy && svc.policy.params) || {})[p]);
  head.querySelector(".params").textContent = params.join(" ");

  const insts = svc.instances || [];
  const counts = {};
  for (const i of insts) counts[stateOf(i)] = (counts[stateOf(i)] || 0) + 1;
  const grpclb = svc.grpclb ? svc.grpclb.streams : 0;
  const xds = svc.xds_streams || 0;
  const facts = [
    ["list", version(svc.version) + " (" + svc.list_len + " entries)"],
    ["instances", insts.length + (insts.length ? " (" + Object.entries(counts).map(([k, n]) => n + " " + k).join(", ") + ")" : "")],
    ["clients", svc.subscribers + " lb-client, " + grpclb + " grpclb, " + xds + " xDS"],
    ["utilization", pct(svc.utilization || 0)],
    ["shedding", pct(svc.drop_fraction || 0)],
    ["dropped", num(svc.dropped || 0) + " by clients, " + num(svc.no_backend || 0) + " with no backend"],
  ];
  const f = s.querySelector(".facts");
  f.replaceChildren(...facts.map(([k, v]) => {
    const d = el("span", "fact");
    d.dataset.fact = k;
    d.append(el("b", "", k), document.createTextNode(" " + v));
    return d;
  }));

  const settings = s.querySelector(".settings");
  const parts = [];
  const cluster = svc.cluster && svc.cluster.default_mode;
  if (cluster) parts.push(el("span", "mode", "cluster mode: " + kind(cluster.kind)));
  for (const [method, mode] of Object.entries((svc.cluster && svc.cluster.methods) || {})) {
    parts.push(el("span", "mode", method + ": " + kind(mode.kind)));
  }
  for (const r of svc.rules || []) {
    const rule = r.rule || {};
    const when = [pairs(rule.when_request) && "request " + pairs(rule.when_request),
      pairs(rule.when_client) && "client " + pairs(rule.when_client),
      rule.when_client_id && "client id " + rule.when_client_id].filter(Boolean).join(", ");
    const what = rule.instance ? "instance " + rule.instance : pairs(rule.select) || "all";
    const flags = [rule.exclusive && "exclusive", rule.strict && "strict"].filter(Boolean).join(", ");
    const d = el("span", "rule" + (r.selected === 0 ? " warn" : ""),
      "rule " + rule.name + ": " + (when || "any call") + " → " + what +
      (flags ? " [" + flags + "]" : "") + " selects " + r.selected +
      (r.selected === 0 ? " (matches no instance)" : ""));
    d.dataset.rule = rule.name;
    parts.push(d);
  }
  settings.replaceChildren(...parts);

  const body = s.querySelector("tbody");
  const rows = new Map([...body.rows].map((tr) => [tr.dataset.instance, tr]));
  const maxWeight = Math.max(1e-9, ...insts.map((i) => i.effective_weight));
  const ordered = [...insts].sort((a, b) => a.instance_id.localeCompare(b.instance_id));
  ordered.forEach((i, n) => {
    let tr = rows.get(i.instance_id);
    rows.delete(i.instance_id);
    if (!tr) {
      tr = el("tr");
      tr.dataset.instance = i.instance_id;
      for (const [, cls] of COLUMNS) tr.append(el("td", cls));
    }
    if (body.rows[n] !== tr) body.insertBefore(tr, body.rows[n] || null);
    renderInstance(tr, i, maxWeight);
  });
  for (const tr of rows.values()) tr.remove();
  applyFilter(s);
}

function renderInstance(tr, i, maxWeight) {
  const state = stateOf(i);
  const load = i.load;
  tr.dataset.state = state;
  tr.dataset.share = i.share;
  tr.dataset.weight = i.effective_weight;
  tr.dataset.override = i.weight_override;
  tr.dataset.text = [i.instance_id, i.address, i.zone, pairs(i.labels), state].join(" ").toLowerCase();
  const c = tr.cells;
  c[0].textContent = i.instance_id;
  c[0].title = i.attachment;
  c[1].textContent = i.address;
  c[2].textContent = i.zone;
  c[3].textContent = pairs(i.labels);
  const badge = el("span", "badge " + state.replace(" ", "-"), state);
  if (state === "ejected" && i.ejected_for_ms) badge.title = "re-admitted in " + (i.ejected_for_ms / 1000).toFixed(1) + " s";
  c[4].replaceChildren(badge);
  c[5].replaceChildren(load ? bar("util", load.cpu_utilization, pct(load.cpu_utilization, 0)) : el("span", "none", "no report"));
  c[6].textContent = load ? num(load.active_requests) : "";
  c[7].textContent = load && load.qps != null ? load.qps.toFixed(0) : "";
  const w = i.effective_weight.toFixed(2) + (i.weight_override ? " (set " + i.weight_override + ")" : "");
  c[8].replaceChildren(bar("weight", i.effective_weight / maxWeight, w));
  c[9].replaceChildren(bar("share", i.share, pct(i.share)));
  c[10].textContent = num(i.calls_finished);
  c[11].textContent = num(i.calls_failed);
  c[11].classList.toggle("bad", i.calls_failed > 0);
}

function render(state) {
  lastEvent = Date.now();
  setConn("up", "live");
  $("daemon").textContent = "v" + state.version + " · " + (state.store_fault ? "store failing: " + state.store_fault : "store ok");
  $("daemon").classList.toggle("bad", !!state.store_fault);
  const main = $("services");
  const seen = new Set();
  state.services.forEach((svc, n) => {
    const s = section(svc.name);
    seen.add(svc.name);
    if (main.children[n] !== s) main.insertBefore(s, main.children[n] || null);
    renderService(s, svc);
  });
  for (const s of [...main.children]) if (!seen.has(s.dataset.service)) s.remove();
  if (state.services.length === 0) main.replaceChildren(el("p", "empty", "No services yet: nothing has registered and no policy is set."));
}

// --- connection and session -----------------------------------------------

function connect() {
  if (source) source.close();
  setConn("connecting", "connecting…");
  source = new EventSource("/api/events");
  source.addEventListener("state", (e) => render(JSON.parse(e.data)));
  source.addEventListener("end", (e) => {
    source.close();
    source = null;
    showLogin(e.data);
  });
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) {
      // Refused (not a broken connection): ask why.
      source = null;
      setTimeout(start, 1000);
    }
    setConn("down", "daemon unreachable: retrying");
  };
}

function showLogin(why) {
  setConn("down", "signed out");
  $("login").hidden = false;
  $("logout").hidden = true;
  const err = $("login-error");
  err.hidden = !why;
  err.textContent = why || "";
}

async function start() {
  let r;
  try {
    r = await fetch("/api/session", { cache: "no-store" });
  } catch (e) {
    setConn("down", "daemon unreachable: retrying");
    setTimeout(start, 1000);
    return;
  }
  if (r.status === 401 || r.status === 403) {
    showLogin(r.status === 403 ? (await r.text()).trim() : "");
    return;
  }
  const session = await r.json().catch(() => ({}));
  $("login").hidden = true;
  $("logout").hidden = !session.cookie;
  connect();
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  const r = await fetch("/login", {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: "token=" + encodeURIComponent(token),
  }).catch(() => null);
  $("token").value = "";
  if (r && r.ok) {
    start();
  } else {
    showLogin(r ? (await r.text()).trim() : "the daemon is unreachable");
  }
});

$("logout").addEventListener("click", async () => {
  if (source) source.close();
  source = null;
  await fetch("/logout", { method: "POST" }).catch(() => null);
  $("services").replaceChildren();
  showLogin("");
});

setInterval(() => {
  if (source && lastEvent && Date.now() - lastEvent > SILENCE_MS) {
    setConn("down", "daemon unreachable: no update for " + Math.round((Date.now() - lastEvent) / 1000) + " s");
  }
}, 1000);

start();
