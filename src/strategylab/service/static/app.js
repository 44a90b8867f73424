// Strategy Lab node dashboard: /status for the first picture, /events (server-sent events) after.
// Hand-written, no dependencies; every text goes in through textContent (never innerHTML).
"use strict";

(() => {
  const MAX_POINTS = 240;
  const MAX_SERIES = 8;
  const MAX_TIMELINE = 60;
  const MAX_REJECTIONS = 20;
  const COLORS = ["#4fa3e0", "#5fd49b", "#f0c55a", "#ff7b6e", "#b48ef0", "#5fd4d4", "#f09a5a", "#d4d45f"];

  const $ = (id) => document.getElementById(id);
  const series = new Map(); // symbol -> [{t, p}]
  const timeline = []; // {key, t, what, text, tone}
  const timelineKeys = new Set();
  const rejections = []; // {t, error}, newest first
  const rejectionKeys = new Set();
  let points = 0;
  let uptimeBase = null; // {uptime, at}
  let chartEnabled = true;
  let serverOffset = 0; // the service clock's time minus the browser's, in seconds
  const now = () => Date.now() / 1000 + serverOffset;

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.appendChild(child);
    return node;
  }

  function slug(text) {
    return String(text).replace(/[^A-Za-z0-9_.-]/g, "_");
  }

  function badge(state, label, testid) {
    const value = state === null || state === undefined ? "unknown" : String(state);
    const props = { className: "badge state-" + slug(value.toLowerCase()), text: label || value, "data-state": value };
    if (testid) props["data-testid"] = testid;
    return el("span", props);
  }

  function setBadge(node, state, label) {
    const value = state === null || state === undefined ? "unknown" : String(state);
    node.className = "badge state-" + slug(value.toLowerCase());
    node.textContent = label || value;
    node.setAttribute("data-state", value);
  }

  function text(id, value) {
    const node = $(id);
    if (node) node.textContent = value;
  }

  function num(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 0 : digits });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m ${String(r).padStart(2, "0")}s`;
    return `${r}s`;
  }

  function ms(value) {
    return value === null || value === undefined ? "–" : `${num(value, value < 10 ? 1 : 0)} ms`;
  }

  function clock(seconds) {
    const d = new Date(seconds * 1000);
    return d.toLocaleTimeString(undefined, { hour12: false });
  }

  function fill(tbodyParent, rows, emptyId) {
    const tbody = tbodyParent.querySelector("tbody");
    tbody.replaceChildren(...rows);
    const empty = $(emptyId);
    if (empty) empty.hidden = rows.length > 0;
  }

  // ---------------------------------------------------------------- status

  function renderHealth(health) {
    const checks = health ? health.checks : [];
    fill($("health-table"), checks.map((c) => el("tr", { "data-testid": "health-row-" + slug(c.name), "data-check": c.name },
      el("td", { text: c.name }),
      el("td", { text: c.component }),
      el("td", {}, badge(c.state, null, "health-badge-" + slug(c.name))),
      el("td", { className: "num", text: num(c.probes) }),
      el("td", { className: "num", text: num(c.failures) }),
      el("td", { className: "reason", text: c.last_reason || "" }),
    )), "health-empty");
    if (health) {
      setBadge($("probe-live"), health.liveness.ok ? "healthy" : "unhealthy", health.liveness.ok ? "ok" : "failing");
      setBadge($("probe-ready"), health.readiness.ok ? "healthy" : "unhealthy", health.readiness.ok ? "ok" : "failing");
    }
  }

  function renderBreakers(breakers) {
    const names = Object.keys(breakers || {}).sort();
    // A node that guards nothing with a breaker: say so, no empty table that reads as a fault.
    $("breakers-table").hidden = names.length === 0;
    fill($("breakers-table"), names.map((name) => {
      const b = breakers[name];
      return el("tr", { "data-testid": "breaker-row-" + slug(name) },
        el("td", { text: name }),
        el("td", {}, badge(b.state, null, "breaker-badge-" + slug(name))),
        el("td", { className: "num", text: b.failure_rate < 0 ? "–" : `${num(b.failure_rate, 1)} %` }),
        el("td", { className: "num", text: num(b.not_permitted) }),
      );
    }), "breakers-empty");
  }

  function renderRecoveries(active) {
    fill($("recoveries-table"), (active || []).map((r) => el("tr", {},
      el("td", { text: r.component }),
      el("td", { text: r.error_type }),
      el("td", { text: r.strategy || "starting" }),
      el("td", { className: "num", text: num(r.attempt) }),
      el("td", { className: "num", text: duration(r.elapsed) }),
    )), "recoveries-empty");
  }

  function renderStatistics(stats) {
    if (!stats) return;
    text("stat-errors", num(stats.total_errors));
    text("stat-success-rate", `${num(stats.success_rate * 100, 1)} %`);
    text("stat-p50", ms(stats.p50_ms));
    text("stat-p95", ms(stats.p95_ms));
    text("stat-p99", ms(stats.p99_ms));
    text("stat-escalations", num(stats.pattern_escalations));
    const dist = stats.error_type_distribution || {};
    const types = Object.keys(dist).sort((a, b) => dist[b] - dist[a]);
    const tbody = $("errors-table").querySelector("tbody");
    tbody.replaceChildren(...types.map((t) => el("tr", {}, el("td", { text: t }), el("td", { className: "num", text: num(dist[t]) }))));
  }

  function renderDegradation(degradation) {
    if (!degradation) {
      text("degradation-level", "–");
      fill($("features-table"), [], "features-empty");
      return;
    }
    text("degradation-level", `${degradation.level} / ${degradation.max_level}`);
    fill($("features-table"), degradation.features.map((f) => el("tr", { "data-testid": "feature-row-" + slug(f.name) },
      el("td", { text: f.name + (f.essential ? " (essential)" : "") }),
      el("td", { className: "num", text: num(f.priority) }),
      el("td", {}, badge(f.active ? "on" : "shed", null, "feature-badge-" + slug(f.name))),
    )), "features-empty");
  }

  function renderDataPath(s) {
    text("ingest-rate", `${num(s.ticks_per_s, 1)} ticks/s`);
    text("queue-depth", s.ingest ? num(s.ingest.queued) : "–");
    text("ingest-acked", s.ingest ? num(s.ingest.acknowledged) : "–");
    text("store-state", s.store ? s.store.state : "–");
    text("spool-pending", s.store ? num(s.store.spool_pending) : "–");
    text("feed-state", s.feed ? (s.feed.connected ? "connected" : "disconnected") : "–");
    text("risk-state", s.risk_state || "–");
    text("supervisor-restarts", s.supervisor ? num(s.supervisor.restarts_total) : "–");
  }

  // The trader child: the supervisor's view of the process (pid, status, restarts, last exit)
  // and the node's view of the engine (extra.trader: trading, risk state, positions, orders).
  function renderTrader(supervisor, trader, riskState) {
    const children = supervisor && Array.isArray(supervisor.children) ? supervisor.children : [];
    const child = children.find((c) => c.id === "trader");
    const info = trader && typeof trader === "object" ? trader : null;
    const card = $("card-trader");
    card.hidden = !child && !info;
    if (card.hidden) return;
    const status = child ? child.status : null;
    setBadge($("trader-status"), status, status ? `process ${status}` : "process unknown");
    const trading = info ? info.trading === true : null;
    setBadge($("trader-trading"), trading === null ? null : trading ? "trading" : "not_trading",
      trading === null ? "trading unknown" : trading ? "trading" : "not trading");
    const pid = child && child.pid !== null && child.pid !== undefined ? child.pid : info ? info.pid : null;
    text("trader-pid", pid === null || pid === undefined ? "none" : String(pid));
    const risk = (info && info.risk_state) || riskState;
    setBadge($("trader-risk"), risk ? String(risk).toLowerCase() : null, risk ? String(risk).toUpperCase() : "–");
    text("trader-open-orders", info ? num(info.open_orders) : "–");
    text("trader-restarts", child ? num(child.restarts) : "–");
    text("trader-last-exit", lastExit(supervisor, child));
    text("trader-book", info && info.book ? `book ${info.book}${info.resumed ? " · resumed after an unclean shutdown" : ""}` : "");
    const rows = [];
    const positions = info && info.positions && typeof info.positions === "object" ? info.positions : {};
    for (const strategy of Object.keys(positions).sort()) {
      const held = positions[strategy];
      const bySymbol = held && typeof held === "object" ? held : { [strategy]: held };
      const name = held && typeof held === "object" ? strategy : "";
      for (const symbol of Object.keys(bySymbol).sort()) {
        const units = bySymbol[symbol];
        if (typeof units !== "number" || units === 0) continue;
        rows.push(el("tr", { "data-testid": "trader-position" },
          el("td", { text: name }), el("td", { text: symbol }), el("td", { className: "num", text: num(units, 6) })));
      }
    }
    fill($("trader-positions"), rows, "trader-positions-empty");
    $("trader-positions").hidden = rows.length === 0;
    const kill = info && info.kill && typeof info.kill === "object" ? info.kill : null;
    $("trader-kill").hidden = !kill;
    if (kill) {
      const parts = ["kill switch:"];
      if (kill.complete === true) parts.push("orders cancelled at the exchange");
      else if (kill.complete === false) parts.push(`NOT confirmed cancelled: ${(kill.left_open || []).join(", ") || "unknown"}`);
      if (typeof kill.halted_ms === "number") parts.push(`halted in ${num(kill.halted_ms, 1)} ms`);
      if (kill.snapshot) parts.push(`snapshot ${kill.snapshot}`);
      if (kill.note) parts.push(kill.note);
      text("trader-kill", parts.join(" · "));
    }
  }

  function lastExit(supervisor, child) {
    // The supervisor's last record of the trader's exit (reason, what it did, when), else the
    // child's last exit status; "none" while it never exited.
    const history = supervisor && Array.isArray(supervisor.history) ? supervisor.history : [];
    const last = history.filter((r) => r.child_id === "trader").pop();
    if (last) {
      const parts = [last.reason || `exit status ${last.exit_status}`];
      if (last.outcome) parts.push(String(last.outcome).replace(/_/g, " "));
      if (typeof last.time === "number") parts.push(clock(last.time));
      return parts.join(" · ");
    }
    if (child && child.last_reason) return child.last_reason;
    if (child && child.last_exit_status !== null && child.last_exit_status !== undefined) return `exit status ${child.last_exit_status}`;
    return "none";
  }

  function renderKill(kill) {
    const node = $("kill-switch");
    if (kill) {
      const reason = kill.reason ? `: ${kill.reason}` : "";
      setBadge(node, "pulled", `KILL SWITCH PULLED${reason}`.slice(0, 120));
    } else {
      setBadge(node, "healthy", "kill switch armed");
    }
  }

  function renderChartState(enabled) {
    chartEnabled = enabled;
    $("chart-box").hidden = !enabled;
    $("chart-shed").hidden = enabled;
  }

  function summary(data) {
    const ctx = data.context && typeof data.context === "object" ? data.context : {};
    const parts = [];
    const component = data.component || ctx.component;
    const type = data.error_type || ctx.error_type;
    if (component) parts.push(component);
    if (type) parts.push(type);
    if (data.strategy) parts.push(data.strategy);
    if (data.success === true) parts.push("recovered");
    if (data.success === false) parts.push("not recovered");
    if (typeof data.duration_ms === "number") parts.push(`${num(data.duration_ms, 1)} ms`);
    if (!parts.length) {
      for (const [k, v] of Object.entries(data).slice(0, 4)) {
        if (v === null || typeof v !== "object") parts.push(`${k}=${v}`);
      }
    }
    if (ctx.message) parts.push(String(ctx.message).slice(0, 120));
    return parts.join(" · ");
  }

  function renderAudit(records) {
    for (const r of records || []) {
      const t = Date.parse(r.timestamp) / 1000;
      const data = r.data || {};
      const at = Number.isNaN(t) ? now() : t;
      if (r.kind === "kill_switch") addKill(at, data, `audit:${r.seq}`);
      else addTimeline(`audit:${r.seq}`, at, r.kind, summary(data), toneOf(r.kind, data));
    }
  }

  // The kill switch's records (audit kind "kill_switch", and the node's "kill_switch" events):
  // {event: "triggered" | "step" | "trigger_joined" | "finished", ...}. A step shows its name,
  // outcome and duration. Steps and the end are keyed by what they are, so the same step seen
  // as an event and then in /status's audit is listed once.
  const STEP_OUTCOME = { ok: "ok", timed_out: "timed out", failed: "failed" };

  function stepLine(step) {
    const parts = [step.step || step.name || "?", STEP_OUTCOME[step.outcome] || String(step.outcome || "?")];
    if (typeof step.duration_ms === "number") parts.push(`${num(step.duration_ms, 1)} ms`);
    if (step.error) parts.push(String(step.error).slice(0, 160));
    return parts.join(" · ");
  }

  function addKill(t, d, fallbackKey) {
    const event = d.event;
    if (event === "step") {
      const name = d.step || d.name || "?";
      addTimeline(`kill:step:${name}`, t, `kill step ${name}`, stepLine(d), d.outcome === "ok" ? "warn" : "bad");
    } else if (event === "finished") {
      const steps = Array.isArray(d.steps) ? d.steps : [];
      const failed = steps.filter((x) => x.outcome !== "ok").map((x) => x.name);
      const parts = [`exit ${d.exit_code ?? "?"}`];
      if (typeof d.duration_ms === "number") parts.push(`${num(d.duration_ms, 1)} ms`);
      parts.push(failed.length ? `failed: ${failed.join(", ")}` : `${steps.length} steps ok`);
      addTimeline("kill:finished", t, "kill switch finished", parts.join(" · "), "bad");
      // Each step at its own end: the trigger's time plus its elapsed_ms (else the report's).
      const start = Date.parse(d.triggered_time) / 1000;
      for (const x of steps) {
        const end = Number.isNaN(start) || typeof x.elapsed_ms !== "number" ? t : start + x.elapsed_ms / 1000;
        addKill(end, { event: "step", step: x.name, ...x }, null);
      }
    } else if (event === "triggered" || event === undefined) {
      addTimeline("kill:triggered", t, "kill switch pulled", [d.reason, d.source].filter(Boolean).join(" · "), "bad");
    } else {
      addTimeline(fallbackKey || `ev:${++eventSeq}`, t, `kill switch ${String(event).replace(/_/g, " ")}`,
        [d.reason, d.source].filter(Boolean).join(" · "), "bad");
    }
  }

  function toneOf(kind, data) {
    const k = String(kind).toLowerCase();
    if (data && (data.success === false || data.current === "unhealthy")) return "bad";
    if (data && (data.success === true || data.current === "healthy")) return "ok";
    if (/fail|kill|shutdown|unhealthy|open|shed|reject/.test(k)) return "bad";
    if (/finish|recovered|restore|healthy|closed/.test(k)) return "ok";
    return "warn";
  }

  // ---------------------------------------------------------------- resume and configuration

  function renderResumed(r) {
    const box = $("resumed");
    if (!r || typeof r !== "object") {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    text("resumed-reason", r.reason ? String(r.reason) : "–");
    text("resumed-snapshot", r.snapshot_time ? String(r.snapshot_time) : "no snapshot (marker only)");
    const from = Object.entries(r.resume_from || {}).map(([symbol, seq]) => `${symbol} ${num(seq)}`);
    text("resumed-from", from.length ? from.join(", ") : "–");
    text("resumed-cleared", r.cleared ? "marker cleared" : "marker kept");
    const warnings = Array.isArray(r.warnings) ? r.warnings : [];
    $("resumed-warnings").replaceChildren(...warnings.slice(0, 10).map((w) => el("li", { text: String(w) })));
  }

  // A rejection reaches the page twice (the "config" event, then every status's last_error,
  // keyed by its attempt time): the same error within 30 s of an entry is that entry.
  function addRejection(key, t, error) {
    const message = String(error || "rejected");
    if (rejectionKeys.has(key)) return;
    rejectionKeys.add(key);
    if (rejections.some((r) => r.error === message && Math.abs(r.t - t) < 30)) return;
    rejections.unshift({ t, error: message });
    rejections.sort((a, b) => b.t - a.t);
    while (rejections.length > MAX_REJECTIONS) rejections.pop();
    $("config-rejected").replaceChildren(...rejections.map((r) => el("li", { "data-testid": "config-rejected-entry" },
      el("span", { className: "when", text: clock(r.t) }),
      el("span", { className: "detail", text: `config rejected: ${r.error}` }),
    )));
    $("config-rejected-empty").hidden = true;
  }

  function renderConfig(cfg) {
    if (!cfg || typeof cfg !== "object") {
      setBadge($("config-badge"), "unknown", "–");
      text("config-state", "no configuration file");
      return;
    }
    const rejected = cfg.last_error !== null && cfg.last_error !== undefined;
    setBadge($("config-badge"), rejected ? "unhealthy" : "healthy", rejected ? "last reload rejected" : "in force");
    const parts = [cfg.path || "", `version ${num(cfg.version)}`, `${num(cfg.rejections)} rejected`];
    text("config-state", parts.filter(Boolean).join(" · "));
    if (rejected) {
      const t = typeof cfg.last_attempt === "number" ? cfg.last_attempt : now();
      addRejection(`status:${t}`, t, cfg.last_error);
    }
  }

  function renderStatus(s) {
    text("node-name", s.node);
    document.title = `Strategy Lab · ${s.node}`;
    if (typeof s.time === "number") serverOffset = s.time - Date.now() / 1000;
    uptimeBase = { uptime: s.uptime, at: performance.now() };
    text("uptime", duration(s.uptime));
    renderHealth(s.health);
    renderBreakers(s.breakers);
    renderRecoveries(s.active_recoveries);
    renderStatistics(s.statistics);
    renderDegradation(s.degradation);
    renderDataPath(s);
    renderKill(s.kill_switch);
    renderChartState(s.chart ? s.chart.enabled : true);
    renderAudit(s.audit);
    const extra = s.extra && typeof s.extra === "object" ? s.extra : {};
    renderResumed(extra.resumed);
    renderConfig(extra.config);
    renderTrader(s.supervisor, extra.trader, s.risk_state);
  }

  // ---------------------------------------------------------------- timeline

  function addTimeline(key, t, what, detail, tone) {
    if (timelineKeys.has(key)) return;
    timelineKeys.add(key);
    timeline.push({ t, what, detail, tone });
    timeline.sort((a, b) => b.t - a.t);
    while (timeline.length > MAX_TIMELINE) timeline.pop();
    $("timeline").replaceChildren(...timeline.map((e) => el("li", { className: "tl-" + e.tone, "data-testid": "timeline-entry" },
      el("span", { className: "when", text: clock(e.t) }),
      el("span", { className: "what", text: e.what }),
      el("span", { className: "detail", text: e.detail }),
    )));
    $("timeline-empty").hidden = timeline.length > 0;
  }

  let eventSeq = 0;

  function onHealth(d) {
    const name = d.check || d.name;
    if (name) {
      const node = document.querySelector(`[data-testid="health-badge-${CSS.escape(slug(name))}"]`);
      if (node && d.current) setBadge(node, d.current);
    }
    const what = `health ${d.current || ""}`.trim();
    addTimeline(`ev:${++eventSeq}`, now(), what, `${d.component || name || ""} ${d.reason || ""}`.trim(), toneOf(what, d));
  }

  function onRecovery(d) {
    const what = d.kind ? `recovery ${d.kind}` : "recovery";
    addTimeline(`ev:${++eventSeq}`, now(), what, summary(d.outcome || d) || d.detail || "", toneOf(what, d.outcome || d));
  }

  function onDegradation(d) {
    const what = `${d.action || "degradation"} ${d.feature || ""}`.trim();
    addTimeline(`ev:${++eventSeq}`, now(), what, `level ${d.level ?? "?"} · ${d.trigger || ""}`, toneOf(what, d));
    if (d.feature === "live_chart" || d.feature === "price_chart") renderChartState(d.action !== "shed");
  }

  function onKill(d) {
    renderKill(d);
    addKill(now(), d, null);
  }

  function onAdmin(d) {
    // The node's audit of an admin action: {action, target, outcome, ...}.
    const ok = d.outcome !== "rejected";
    const what = "admin " + (d.action || "action") + (ok ? "" : " refused");
    const detail = [d.target, d.reason, d.error].filter((x) => typeof x === "string" && x).join(" · ");
    addTimeline(`ev:${++eventSeq}`, now(), what, detail, ok ? "warn" : "bad");
  }

  function onConfig(d) {
    const ok = d.accepted !== false && d.ok !== false;
    const detail = d.error || d.reason || (Array.isArray(d.changed) ? d.changed.join(", ") : "");
    addTimeline(`ev:${++eventSeq}`, now(), ok ? "config reloaded" : "config rejected", detail, ok ? "ok" : "bad");
    if (ok) {
      setBadge($("config-badge"), "healthy", "in force");
    } else {
      setBadge($("config-badge"), "unhealthy", "last reload rejected");
      addRejection(`ev:${eventSeq}`, now(), d.error || d.reason);
    }
  }

  // ---------------------------------------------------------------- chart

  function onPrice(d) {
    if (!chartEnabled) return;
    const t = d.t;
    for (const [symbol, p] of Object.entries(d.prices || {})) {
      if (typeof p !== "number" || !Number.isFinite(p)) continue;
      let s = series.get(symbol);
      if (!s) {
        if (series.size >= MAX_SERIES) continue;
        s = [];
        series.set(symbol, s);
      }
      s.push({ t, p });
      if (s.length > MAX_POINTS) s.shift();
      points += 1;
    }
    $("price-chart").setAttribute("data-points", String(points));
    drawChart();
  }

  function drawChart() {
    const canvas = $("price-chart");
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 900, h = canvas.clientHeight || 260;
    if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const pad = { l: 48, r: 10, t: 10, b: 20 };
    let tMin = Infinity, tMax = -Infinity, yMin = Infinity, yMax = -Infinity;
    for (const s of series.values()) {
      const base = s[0].p;
      for (const q of s) {
        const y = (q.p / base - 1) * 100;
        tMin = Math.min(tMin, q.t); tMax = Math.max(tMax, q.t);
        yMin = Math.min(yMin, y); yMax = Math.max(yMax, y);
      }
    }
    ctx.strokeStyle = "#263241"; ctx.fillStyle = "#8594a6"; ctx.font = "11px system-ui, sans-serif"; ctx.lineWidth = 1;
    if (!Number.isFinite(tMin)) {
      ctx.fillText("waiting for prices…", pad.l, h / 2);
      return;
    }
    if (yMax - yMin < 0.02) { yMax += 0.01; yMin -= 0.01; }
    if (tMax === tMin) tMax = tMin + 1;
    const x = (t) => pad.l + (t - tMin) / (tMax - tMin) * (w - pad.l - pad.r);
    const y = (v) => pad.t + (1 - (v - yMin) / (yMax - yMin)) * (h - pad.t - pad.b);
    for (let i = 0; i <= 4; i++) {
      const v = yMin + (yMax - yMin) * i / 4;
      ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(w - pad.r, y(v)); ctx.stroke();
      ctx.fillText(`${v >= 0 ? "+" : ""}${v.toFixed(2)}%`, 2, y(v) + 4);
    }
    ctx.fillText(clock(tMin), pad.l, h - 4);
    const right = clock(tMax);
    ctx.fillText(right, w - pad.r - ctx.measureText(right).width, h - 4);
    const legend = [];
    let i = 0;
    for (const [symbol, s] of series) {
      const color = COLORS[i++ % COLORS.length];
      const base = s[0].p;
      ctx.strokeStyle = color; ctx.lineWidth = 1.6;
      ctx.beginPath();
      s.forEach((q, j) => { const px = x(q.t), py = y((q.p / base - 1) * 100); if (j) ctx.lineTo(px, py); else ctx.moveTo(px, py); });
      if (s.length === 1) { ctx.arc(x(s[0].t), y(0), 2, 0, Math.PI * 2); }
      ctx.stroke();
      const swatch = el("span", { className: "swatch" });
      swatch.style.background = color;
      legend.push(el("li", { "data-testid": "legend-" + slug(symbol) }, swatch, el("span", { text: symbol }), el("span", { className: "px", text: num(s[s.length - 1].p, 4) })));
    }
    $("chart-legend").replaceChildren(...legend);
  }

  // ---------------------------------------------------------------- wiring

  function json(handler) {
    return (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch (err) { return; }
      try { handler(data); } catch (err) { console.error(err); }
    };
  }

  async function load() {
    try {
      const response = await fetch("/status", { cache: "no-store" });
      if (response.ok) renderStatus(await response.json());
    } catch (err) {
      setBadge($("connection"), "unhealthy", "unreachable");
    }
  }

  function connect() {
    const source = new EventSource("/events");
    source.onopen = () => { setBadge($("connection"), "healthy", "live"); };
    source.onerror = () => { setBadge($("connection"), "degraded", "reconnecting"); };
    source.addEventListener("status", json(renderStatus));
    source.addEventListener("price", json(onPrice));
    source.addEventListener("health", json(onHealth));
    source.addEventListener("recovery", json(onRecovery));
    source.addEventListener("degradation", json(onDegradation));
    source.addEventListener("kill_switch", json(onKill));
    source.addEventListener("config", json(onConfig));
    source.addEventListener("admin", json(onAdmin));
  }

  setInterval(() => {
    if (uptimeBase) text("uptime", duration(uptimeBase.uptime + (performance.now() - uptimeBase.at) / 1000));
  }, 1000);

  load().then(connect);
})();
