// trio-gateway Control UI (SPEC 13). No framework, no build step, nothing from the network:
// status and log lines arrive over server-sent events (/v1/events); the page's API calls are
// authenticated by an HttpOnly session cookie, never by a token kept in the page.
"use strict";

const $ = (id) => document.getElementById(id);
const UNBLOCKING = new Set(["embedded_run", "delivery_attempt"]); // containers, not blockers
const LOG_LINES = 200;

let source = null;
let latest = null;
let countdown = null; // {deadline: local seconds, budget, started: local seconds}
let queueSeen = "";
const QUEUE_SHOWN = 50;
// The gateway sends a snapshot only when something changed, not because the clock moved: the
// page runs the uptime clock itself from the last snapshot's figure.
let uptime = null; // {seconds at the snapshot, local seconds then}

// --- helpers ----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 10) return `${value.toFixed(1)} s`;
  if (value < 120) return `${Math.round(value)} s`;
  if (value < 7200) return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
  return `${(value / 3600).toFixed(1)} h`;
}

function now() {
  return performance.now() / 1000;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const reply = await fetch(path, init);
  const data = await reply.json().catch(() => ({}));
  if (reply.status === 401) showLogin(data.message || "please log in");
  if (!reply.ok) throw new Error(`${data.error || reply.status}: ${data.message || ""}`);
  return data;
}

// --- login ------------------------------------------------------------------------------

function showLogin(message) {
  if (source) source.close();
  source = null;
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setState("offline");
}

async function login(body) {
  const reply = await fetch("/v1/ui/login", {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  if (!reply.ok) {
    const data = await reply.json().catch(() => ({}));
    throw new Error(data.message || `login failed (${reply.status})`);
  }
}

async function start() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await login({ token: $("token").value });
      $("token").value = "";
      await connect();
    } catch (err) {
      $("login-error").textContent = err.message;
    }
  });
  $("logout").addEventListener("click", async () => {
    await fetch("/v1/ui/logout", { method: "POST", credentials: "same-origin" });
    showLogin("logged out");
  });
  $("restart").addEventListener("click", () => confirmDrain("restart"));
  $("stop").addEventListener("click", () => confirmDrain("stop"));
  requestAnimationFrame(tick);
  // Codes expire with no event to say so: the list is read again every minute as well.
  setInterval(() => { if (!$("dashboard").hidden) refreshPairing(); }, 60000);

  // `trio-gateway dashboard` puts a one-time code in the fragment (never sent to a server).
  const code = new URLSearchParams(location.hash.slice(1)).get("code");
  if (code) {
    history.replaceState(null, "", location.pathname);
    try {
      await login({ code });
    } catch (err) {
      showLogin(err.message);
      return;
    }
  }
  await connect();
}

async function connect() {
  try {
    await api("GET", "/v1/status");
  } catch (err) {
    if ($("login").hidden) setState("offline");
    return;
  }
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  if (source) source.close();
  source = new EventSource("/v1/events");
  source.addEventListener("status", (event) => render(JSON.parse(event.data)));
  source.addEventListener("log", (event) => appendLog(JSON.parse(event.data)));
  refreshPairing();
  source.addEventListener("error", () => {
    setState("offline");
    // The browser reconnects by itself; if the cookie is gone, the status call shows the login.
    api("GET", "/v1/status").catch(() => {});
  });
}

// --- rendering --------------------------------------------------------------------------

function setState(state) {
  $("state").dataset.state = state;
  $("state").textContent = state;
  const live = state === "running";
  $("restart").disabled = !live;
  $("stop").disabled = !(live || state === "draining");
}

function render(status) {
  latest = status;
  setState(status.state);
  $("version").textContent = status.version ? `v${status.version}` : "";
  $("generation").textContent = status.generation;
  uptime = { base: status.uptimeSeconds, at: now() };
  paintUptime();
  $("queue-pending").textContent = status.queue.pending;
  $("queue-failed").textContent = status.queue.failed;
  renderDrain(status);
  renderWork(status);
  renderSessions(status);
  renderChannels(status);
  renderDrains(status);
  const queueKey = `${status.queue.pending}/${status.queue.failed}`;
  if (queueKey !== queueSeen) {
    queueSeen = queueKey;
    refreshQueue();
  }
}

function isStalled(status, unit) {
  if ((status.stalled || []).includes(unit.sessionId || "-")) return true;
  const limit = status.stallThresholdSeconds;
  return limit !== null && limit !== undefined && unit.lastProgressAgeSeconds >= limit;
}

function renderDrain(status) {
  const drain = status.drain;
  $("drain").hidden = !drain;
  if (!drain) {
    countdown = null;
    return;
  }
  countdown = { deadline: now() + drain.remainingSeconds, budget: drain.force ? 0 : drain.timeoutSeconds };
  $("drain-kind").textContent = drain.kind;
  $("drain-forced").hidden = !drain.force;
  $("drain-budget").textContent = seconds(drain.timeoutSeconds);
  $("drain-elapsed").textContent = seconds(drain.elapsedSeconds);
  const blockers = status.work
    .filter((u) => !UNBLOCKING.has(u.kind))
    .sort((a, b) => b.lastProgressAgeSeconds - a.lastProgressAgeSeconds);
  $("blockers").replaceChildren(
    ...(blockers.length
      ? blockers.map((u) => el("li", { class: isStalled(status, u) ? "stalled blocker" : "blocker" },
          `${u.kind} in session ${u.sessionId || "-"}: no progress for ${seconds(u.lastProgressAgeSeconds)}`,
          ` (last: ${u.lastProgress || "–"})`))
      : [el("li", { class: "muted" }, "nothing: the drain is finishing")]),
  );
  paintCountdown();
}

function paintCountdown() {
  if (countdown) {
    const left = Math.max(0, countdown.deadline - now());
    const share = countdown.budget > 0 ? left / countdown.budget : 0;
    $("drain-bar").style.width = `${(Math.min(1, share) * 100).toFixed(2)}%`;
    $("drain-remaining").textContent = seconds(left);
  }
}

function paintUptime() {
  if (uptime) $("uptime").textContent = seconds(uptime.base + now() - uptime.at);
}

function tick() {
  paintCountdown();
  paintUptime();
  requestAnimationFrame(tick);
}

function renderWork(status) {
  const rows = status.work.map((u) =>
    el("tr", { class: isStalled(status, u) ? "stalled" : "", "data-kind": u.kind },
      el("td", {}, u.kind), el("td", {}, u.sessionId || "–"), el("td", {}, seconds(u.ageSeconds)),
      el("td", {}, u.lastProgress || "–"), el("td", {}, seconds(u.lastProgressAgeSeconds))));
  $("work").replaceChildren(...rows);
  $("work-empty").hidden = rows.length > 0;
}

function renderSessions(status) {
  const stalled = new Set(status.stalled || []);
  $("sessions").replaceChildren(...status.sessions.map((s) => {
    const o = s.origin;
    return el("tr", { class: stalled.has(s.id) ? "stalled" : "" },
      el("td", {}, s.id), el("td", {}, s.agent), el("td", {}, s.state),
      el("td", {}, o ? `${o.channel}:${o.to}` : "–"), el("td", {}, s.queueDepth));
  }));
  const more = (status.sessionsTotal || 0) - status.sessions.length;
  $("sessions-more").hidden = more <= 0;
  $("sessions-more").textContent = `… and ${more} more (GET /v1/sessions lists them all)`;
}

function renderChannels(status) {
  const channels = status.channels;
  $("channels-card").hidden = !Array.isArray(channels);
  if (!Array.isArray(channels)) return;
  $("channels").replaceChildren(...channels.map((c) => {
    const inbound = c.inbound || {};
    return el("tr", { class: inbound.state === "paused" ? "stalled" : "" },
      el("td", {}, c.channel), el("td", {}, c.accountId || "–"), el("td", {}, inbound.mode || "–"),
      el("td", {}, inbound.state || "–"), el("td", {}, inbound.messages ?? "–"),
      el("td", {}, inbound.lastMessageAgeSeconds == null ? "–" : `${seconds(inbound.lastMessageAgeSeconds)} ago`));
  }));
}

function renderDrains(status) {
  const drains = status.drains || [];
  const chart = $("drains-chart");
  const W = 640, H = 180, top = 14, bottom = 30, left = 40;
  const scale = Math.max(1, ...drains.map((d) => Math.max(d.waitedSeconds, d.forced ? 0 : d.timeoutSeconds))) * 1.1;
  const y = (v) => H - bottom - (v / scale) * (H - top - bottom);
  const slot = (W - left) / Math.max(drains.length, 10);
  const parts = [
    svg("line", { class: "axis", x1: left, x2: W, y1: y(0), y2: y(0) }),
    svg("text", { x: 2, y: y(scale / 1.1) + 4 }, seconds(scale / 1.1)),
    svg("text", { x: 2, y: y(0) + 4 }, "0 s"),
  ];
  drains.forEach((d, i) => {
    const x = left + i * slot + slot * 0.15, w = slot * 0.7;
    const bar = svg("rect", {
      class: `drain ${d.timedOut ? "timed-out" : "clean"}`, x, width: w,
      y: y(d.waitedSeconds), height: Math.max(1, y(0) - y(d.waitedSeconds)),
      "data-waited": d.waitedSeconds, "data-budget": d.timeoutSeconds,
    });
    bar.append(svg("title", {}, `${d.kind}${d.forced ? " (forced)" : ""}: ${d.waitedSeconds.toFixed(2)} s of a `
      + `${seconds(d.timeoutSeconds)} budget; ${d.abortedWork.length} unit(s) cut`));
    parts.push(bar);
    if (!d.forced) {
      parts.push(svg("line", { class: "budget", x1: x - 4, x2: x + w + 4, y1: y(d.timeoutSeconds), y2: y(d.timeoutSeconds) }));
      parts.push(svg("text", { class: "budget-label", x: x + w / 2, y: y(d.timeoutSeconds) - 4, "text-anchor": "middle" },
        `budget ${seconds(d.timeoutSeconds)}`));
    }
    parts.push(svg("text", { x: x + w / 2, y: H - bottom + 14, "text-anchor": "middle" }, `${d.waitedSeconds.toFixed(2)}s`));
  });
  chart.replaceChildren(...parts);
  const last = drains[drains.length - 1];
  $("last-drain").textContent = last
    ? `Last: ${last.kind}${last.forced ? " (forced)" : ""} took ${last.waitedSeconds.toFixed(2)} s against a budget of `
      + `${seconds(last.timeoutSeconds)}; ${last.timedOut ? `deadline reached, ${last.abortedWork.length} unit(s) cut: `
      + last.abortedWork.join(", ") : "all work finished in time"}. Bars: time taken; dashed line: budget.`
    : "No drain yet in this process. Bars: time taken; dashed line: budget.";
}

async function refreshQueue() {
  let data;
  try {
    // Only what the page shows: the first entries of each list, and how many there are.
    data = await api("GET", `/v1/deliveries?limit=${QUEUE_SHOWN}`);
  } catch (err) {
    return;
  }
  $("dead-letters").replaceChildren(...data.failed.map((e) => el("tr", { "data-id": e.id },
    el("td", {}, e.id), el("td", {}, e.channel), el("td", {}, e.to), el("td", {}, e.attempts),
    el("td", { class: "wrap reason" }, e.failedReason || e.lastError || "–"),
    el("td", {}, el("button", { type: "button", class: "retry", onclick: () => retry(e.id) }, "Retry")))));
  $("dead-empty").hidden = data.failed.length > 0;
  showMore("dead-more", data.total.failed - data.failed.length);
  showMore("pending-more", data.total.pending - data.pending.length);
  $("pending").replaceChildren(...data.pending.map((e) => el("tr", { "data-id": e.id },
    el("td", {}, e.id), el("td", {}, e.channel), el("td", {}, e.to), el("td", {}, e.attempts),
    el("td", {}, e.state === "sending" ? "sending" : e.nextAttemptAt), el("td", { class: "wrap" }, e.lastError || "–"))));
}

function showMore(id, more) {
  $(id).hidden = more <= 0;
  $(id).textContent = `… and ${more} more (trio-gateway delivery list shows them all)`;
}

async function retry(id) {
  try {
    await api("POST", `/v1/deliveries/${encodeURIComponent(id)}/retry`, {});
  } catch (err) {
    alert(err.message);
  }
  refreshQueue();
}

// --- pairing: pending codes with an Approve button (SPEC 15) -------------------------------

// An [ACCESS] log line (a code offered, a sender approved or revoked) refreshes the list; a
// stranger's flood of refusals refreshes it at most once a second.
const PAIRING_REFRESH_MS = 1000;
let pairingTimer = null;

function schedulePairing() {
  if (pairingTimer === null) pairingTimer = setTimeout(() => { pairingTimer = null; refreshPairing(); }, PAIRING_REFRESH_MS);
}

function minutesLeft(iso) {
  const left = Math.max(0, (Date.parse(iso) - Date.now()) / 1000);
  return `in ${Math.floor(left / 60)} min`;
}

async function refreshPairing() {
  let data;
  try {
    data = await api("GET", "/v1/pairing");
  } catch (err) {
    return;
  }
  $("pairing-pending").replaceChildren(...data.pending.map((p) => el("tr", { "data-code": p.code },
    el("td", {}, p.channel), el("td", {}, p.accountId), el("td", {}, p.sender), el("td", { class: "code" }, p.code),
    el("td", {}, minutesLeft(p.expiresAt)),
    el("td", {}, el("button", { type: "button", class: "approve", onclick: () => approve(p) }, "Approve")))));
  $("pairing-empty").hidden = data.pending.length > 0;
  $("pairing-approved").replaceChildren(...data.approvals.map((a) => el("tr", {},
    el("td", {}, a.channel), el("td", {}, a.accountId), el("td", {}, a.sender), el("td", {}, a.approvedAt))));
  $("pairing-approved-empty").hidden = data.approvals.length > 0;
}

async function approve(p) {
  $("pairing-error").textContent = "";
  try {
    await api("POST", "/v1/pairing/approve", { channel: p.channel, code: p.code });
  } catch (err) {
    $("pairing-error").textContent = err.message;
  }
  refreshPairing();
}

function appendLog(record) {
  if (record.tag === "ACCESS") schedulePairing();
  const fields = Object.entries(record)
    .filter(([k]) => !["ts", "level", "tag", "message"].includes(k))
    .map(([k, v]) => ` ${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join("");
  const head = [record.ts.slice(11, 23), record.level, record.tag ? `[${record.tag}]` : "", record.message];
  const line = head.filter((part) => part).join(" ") + fields;
  const log = $("log");
  log.append(el("li", { class: record.level }, line));
  while (log.children.length > LOG_LINES) log.firstChild.remove();
  log.scrollTop = log.scrollHeight;
}

// --- restart and stop, behind a confirmation ---------------------------------------------

function confirmDrain(kind) {
  const dialog = $("confirm");
  const budget = latest ? seconds(latest.drainTimeoutSeconds) : "the configured";
  $("confirm-text").textContent = kind === "restart"
    ? `Restart the gateway? Running work gets ${budget} to finish, then it is cancelled; interrupted turns resume in the next generation.`
    : `Stop the gateway? Running work gets ${budget} to finish, then it is cancelled, and the process exits.`;
  $("confirm-force").checked = false;
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    try {
      await api("POST", `/v1/gateway/${kind}`, { force: $("confirm-force").checked });
    } catch (err) {
      alert(err.message);
    }
  };
  dialog.showModal();
}

document.addEventListener("DOMContentLoaded", start);
