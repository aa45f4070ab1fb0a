// kmsemu lab dashboard: everything on the page is rendered from one state
// object, which arrives from GET /lab/api/state, from the Server-Sent Events
// stream /lab/events (at connect and on every change), and in the answer to
// a clock change (a host fault change answers the faults, shown at once). Rendering rebuilds each table's innerHTML from one string,
// so every text from the state goes through esc(): workstation names come
// from the network and are attacker-controlled.
"use strict";

(() => {
  const API_STATE = "/lab/api/state";
  const API_CLOCK = "/lab/api/clock";
  const API_FAULTS = "/api/host/faults";
  const EVENTS = "/lab/events";
  const TOKEN_KEY = "kmsemu_token";
  const OK_HRESULT = "0x00000000";
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;
  // what a threshold means in the catalog: 25 client OS, 5 server OS or Office
  const THRESHOLD_LABELS = { 25: "clients", 5: "servers/Office" };

  const $ = (selector) => document.querySelector(selector);

  let current = null;        // the newest state shown
  let acceptAnyVersion = true; // after (re)connecting, the server may have restarted
  let renderPending = false;
  let receivedAt = 0;        // performance.now() when `current` arrived (ticks the clock)
  let events = null;
  let retryTimer = null;
  let retryDelay = RETRY_MIN_MS;
  let busy = false;          // a clock change is in flight
  let faultBusy = false;     // a host fault change is in flight

  // ---------------------------------------------------------------- helpers

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function esc(value) {
    if (value === null || value === undefined) return "";
    return String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  // "2026-11-29 21:40:00" in UTC, or "" for a missing or unreadable time
  function formatTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }

  function timeCell(iso) {
    if (!iso) return '<span class="muted">–</span>';
    return `<time datetime="${esc(iso)}">${esc(formatTime(iso))}</time>`;
  }

  // seconds ahead of real time as "+7d 0h" ("-1d 0h" behind, minutes when not whole hours)
  function formatOffset(seconds) {
    const total = Math.round(Number(seconds) || 0);
    if (Math.abs(total) < 60) return "";
    const sign = total < 0 ? "-" : "+";
    let rest = Math.abs(total);
    const days = Math.floor(rest / 86400);
    rest -= days * 86400;
    const hours = Math.floor(rest / 3600);
    const minutes = Math.floor((rest - hours * 3600) / 60);
    return `${sign}${days}d ${hours}h` + (minutes ? ` ${minutes}m` : "");
  }

  // a KMS interval in minutes, readably: 120 -> "2 h", 10080 -> "7 d"
  function formatMinutes(minutes) {
    const m = Number(minutes);
    if (!Number.isFinite(m)) return "";
    if (m >= 1440 && m % 1440 === 0) return `${m / 1440} d`;
    if (m >= 60 && m % 60 === 0) return `${m / 60} h`;
    return `${m} min`;
  }

  // a CMID's first two groups, enough to tell machines apart at a glance (full one in the title)
  function shortId(guid) {
    const text = String(guid || "");
    return text.length > 16 ? `${text.slice(0, 13)}…` : text;
  }

  function isFailure(hresult) {
    return hresult !== null && hresult !== undefined &&
      String(hresult).toLowerCase() !== OK_HRESULT;
  }

  function setText(selector, text) {
    const el = $(selector);
    if (el.textContent !== text) el.textContent = text;
  }

  let messageTimer = null;

  // errors stay until the next successful action; information fades after a while
  function showMessage(text, kind = "error") {
    const el = $("#message");
    clearTimeout(messageTimer);
    el.textContent = text;
    el.className = `message ${kind}`;
    el.hidden = false;
    if (kind !== "error") messageTimer = setTimeout(clearMessage, 5000);
  }

  function clearMessage() {
    const el = $("#message");
    clearTimeout(messageTimer);
    el.hidden = true;
    el.textContent = "";
  }

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  function authHeaders() {
    const t = token();
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  // the message of an {"error": {"code", "message"}} body, or a fallback
  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return String(body.error.message);
    } catch {
      // not JSON: fall through
    }
    return `HTTP ${response.status} ${response.statusText}`.trim();
  }

  // ------------------------------------------------------------------ state

  function accept(state) {
    if (!state || typeof state !== "object") return;
    if (!acceptAnyVersion && current && Number(state.version) < Number(current.version)) return;
    acceptAnyVersion = false;
    current = state;
    receivedAt = performance.now();
    if (!renderPending) {
      renderPending = true;
      requestAnimationFrame(() => {
        renderPending = false;
        render(current);
      });
    }
  }

  async function loadState() {
    try {
      const response = await fetch(API_STATE, {
        headers: { Accept: "application/json", ...authHeaders() },
        cache: "no-store",
      });
      if (response.status === 401) {
        showMessage(token()
          ? `The lab refused this token (${await errorMessage(response)}): check it and press Save again.`
          : "This lab needs the admin token to show its state: enter it above and press Save.");
        return false;
      }
      if (!response.ok) {
        showMessage(`Could not read the lab state: ${await errorMessage(response)}`);
        return false;
      }
      accept(await response.json());
      return true;
    } catch (err) {
      showMessage(`Could not reach the lab: ${err.message}`);
      return false;
    }
  }

  // --------------------------------------------------------- live updates

  function setLive(status) {
    const el = $("#live");
    el.textContent = status;
    el.className = `live is-${status}`;
  }

  function connect(status = "reconnecting") {
    clearTimeout(retryTimer);
    if (events) events.close();
    setLive(events ? status : "connecting");
    const source = new EventSource(EVENTS);
    events = source;
    source.addEventListener("open", () => {
      if (events !== source) return;
      retryDelay = RETRY_MIN_MS;
      acceptAnyVersion = true;
      setLive("live");
    });
    source.addEventListener("state", (event) => {
      if (events !== source) return;
      try {
        accept(JSON.parse(event.data));
      } catch (err) {
        showMessage(`The lab sent a state this page cannot read: ${err.message}`);
      }
    });
    source.addEventListener("error", () => {
      if (events !== source) return;
      setLive("reconnecting");
      // CONNECTING: the browser retries by itself. CLOSED: it gave up (the
      // server refused the stream, e.g. 401), so find out why and retry later.
      if (source.readyState === EventSource.CLOSED) {
        loadState();
        retryTimer = setTimeout(() => connect(), retryDelay);
        retryDelay = Math.min(retryDelay * 2, RETRY_MAX_MS);
      }
    });
  }

  // ------------------------------------------------------------- render

  function render(state) {
    renderHeader(state);
    renderHost(state);
    renderCounts(state.counts || []);
    renderClients(state.clients || []);
    renderRequests(state.requests || []);
    renderDns(state.dns || {});
    renderMak((state.mak && state.mak.keys) || []);
    renderFaults(state.host_faults || {});
    setText("#state-version", `state version ${state.version ?? "?"}`);
  }

  function renderHeader(state) {
    tickClock();
    const offset = formatOffset(state.clock_offset);
    const offsetEl = $("#clock-offset");
    setText("#clock-offset", offset);
    offsetEl.hidden = !offset;
    offsetEl.title = offset ? "The lab clock is ahead of real time by this much" : "";

    const readOnly = state.read_only !== false;
    $("#read-only-hint").hidden = !readOnly;
    setClockEnabled(!readOnly && !busy);
    setFaultsEnabled(!readOnly && !faultBusy);
  }

  // the lab clock keeps running between states: now + time since it arrived
  function tickClock() {
    if (!current || !current.now) return;
    const base = new Date(current.now).getTime();
    if (Number.isNaN(base)) {
      setText("#lab-now", String(current.now));
      return;
    }
    const now = new Date(base + (performance.now() - receivedAt));
    const iso = now.toISOString().replace(/\.\d+Z$/, "Z");
    const el = $("#lab-now");
    el.setAttribute("datetime", iso);
    setText("#lab-now", `${formatTime(iso)} UTC`);
  }

  function setClockEnabled(enabled) {
    document.querySelectorAll("[data-advance], #clock-reset, #advance-form input, " +
      "#advance-form button").forEach((el) => {
      el.disabled = !enabled;
    });
  }

  function setFaultsEnabled(enabled) {
    document.querySelectorAll("#fault-form select, #fault-form input, #fault-form button, " +
      "#faults button").forEach((el) => {
      el.disabled = !enabled;
    });
    if (enabled) syncFaultKind();
  }

  // the HRESULT field is for a status, the delay field for slow only
  function syncFaultKind() {
    const kind = $("#fault-kind").value;
    $("#fault-hresult").disabled = kind !== "" || $("#fault-kind").disabled;
    $("#fault-delay").hidden = kind !== "slow";
    $("#fault-delay").disabled = kind !== "slow" || $("#fault-kind").disabled;
  }

  // a fault as `kmsemu host fault show` words it
  function faultText(f) {
    const parts = [`Fault ${f.id}: ${f.kind}`];
    if (f.kind === "slow") parts.push(`delay ${f.delay}s`);
    if (f.product) parts.push(`product ${f.product}`);
    if (f.client) parts.push(`client ${f.client}`);
    parts.push(f.remaining === null || f.remaining === undefined
      ? "until cleared" : `${f.remaining} time(s) left`);
    if (f.expires) parts.push(`expires ${formatTime(new Date(f.expires * 1000).toISOString())} UTC`);
    return parts.join(", ");
  }

  function renderFaults(doc) {
    const faults = doc.faults || [];
    const fired = Object.entries(doc.fired || {}).map(([kind, n]) => `${kind} ×${n}`);
    setText("#faults-fired", fired.length ? `fired: ${fired.join(", ")}` : "");
    const locked = !current || current.read_only !== false || faultBusy;
    $("#faults").innerHTML = faults.length
      ? faults.map((f) =>
        `<li class="fault" data-id="${esc(f.id)}"><span class="fault-what">${esc(faultText(f))}</span>` +
        `<button type="button" class="secondary" data-clear="${esc(f.id)}"${locked ? " disabled" : ""}>` +
        `Clear</button></li>`).join("")
      : '<li class="empty">No fault set: the host answers normally.</li>';
  }

  function renderHost(state) {
    const host = state.host || {};
    const listen = (host.listen || []).map((a) => `<code>${esc(a)}</code>`).join(" ") || "–";
    let html =
      `<dt>Listening</dt><dd>${listen}</dd>` +
      `<dt>ePID</dt><dd><code class="epid" title="${esc(host.epid)}">${esc(host.epid || "–")}</code></dd>` +
      `<dt>Minimum count</dt><dd>${esc(host.min_count ?? "–")}</dd>` +
      `<dt>Activation interval</dt><dd>${esc(formatMinutes(host.activation_interval))}</dd>` +
      `<dt>Renewal interval</dt><dd>${esc(formatMinutes(host.renewal_interval))}</dd>`;
    $("#host").innerHTML = html;

    const totals = state.totals || {};
    const failed = Number(totals.failed) || 0;
    html =
      `<div class="total"><span class="total-value">${esc(totals.requests ?? 0)}</span>` +
      `<span class="total-label">requests</span></div>` +
      `<div class="total${failed ? " has-failed" : ""}" title="requests the host refused (slmgr /dlv: failed requests)">` +
      `<span class="total-value">${esc(failed)}</span>` +
      `<span class="total-label">refused</span></div>` +
      `<div class="total" title="answered with a count below the client's threshold: 0xC004F038 on the client">` +
      `<span class="total-value">${esc(Number(totals.below_threshold) || 0)}</span>` +
      `<span class="total-label">below threshold</span></div>`;
    $("#totals").innerHTML = html;
  }

  function thresholdText(t) {
    const label = THRESHOLD_LABELS[t];
    return label ? `${t} (${label})` : String(t);
  }

  function renderCounts(counts) {
    if (!counts.length) {
      $("#counts").innerHTML = '<p class="empty">No application counted yet.</p>';
      return;
    }
    let html = "";
    for (const app of counts) {
      const count = Number(app.count) || 0;
      const thresholds = (app.thresholds || []).map(Number).filter(Number.isFinite)
        .sort((a, b) => a - b);
      const lowest = thresholds.length ? thresholds[0] : 0;
      const highest = thresholds.length ? thresholds[thresholds.length - 1] : Math.max(count, 1);
      const met = thresholds.length > 0 && count >= lowest;
      const full = thresholds.length > 0 && count >= highest;
      const percent = Math.min(100, (count / highest) * 100);
      const described = [...thresholds].reverse();
      const text = described.length
        ? `${count} of ${[thresholdText(described[0]), ...described.slice(1).map(thresholdText)].join(" · ")}`
        : String(count);
      let ticks = "";
      for (const t of thresholds) {
        if (t < highest) {
          ticks += `<span class="tick${count >= t ? " reached" : ""}" style="left:${(t / highest) * 100}%"` +
            ` title="${esc(thresholdText(t))}"></span>`;
        }
      }
      const cls = `count${met ? " met" : ""}${full ? " full" : ""}`;
      html +=
        `<div class="${cls}" data-application="${esc(app.application)}">` +
        `<div class="count-head"><span class="count-app">${esc(app.application)}</span>` +
        `<span class="count-text">${esc(text)}</span></div>` +
        `<div class="bar" role="meter" aria-label="${esc(app.application)} count"` +
        ` aria-valuemin="0" aria-valuemax="${esc(highest)}" aria-valuenow="${esc(count)}">` +
        `<span class="fill" style="width:${percent.toFixed(1)}%"></span>${ticks}</div>` +
        `<div class="count-note">${met ? (full ? "every product activates" :
          `products needing ${esc(lowest)} activate`) : `${esc(lowest - count)} more to the first threshold`}` +
        `</div></div>`;
    }
    $("#counts").innerHTML = html;
  }

  function clientMatches(client, needle) {
    if (!needle) return true;
    const hay = [client.name, ...(client.names || []), client.cmid, client.product,
      client.peer, client.hresult, client.error, client.licence && client.licence.text,
      client.licence && client.licence.state, client.duplicate ? "duplicate" : ""]
      .join(" ").toLowerCase();
    return hay.includes(needle);
  }

  function renderClients(clients) {
    const needle = $("#client-filter").value.trim().toLowerCase();
    const body = $("#clients tbody");
    if (!clients.length) {
      body.innerHTML = '<tr class="empty"><td colspan="8">No client has asked yet.</td></tr>';
      setText("#clients-shown", "");
      return;
    }
    const rows = [];
    let shown = 0;
    for (const c of clients) {
      if (!clientMatches(c, needle)) continue;
      shown += 1;
      const licence = c.licence || {};
      const state = String(licence.state || "unknown").replace(/[^a-z_-]/gi, "");
      const others = (c.names || []).filter((n) => n !== c.name);
      const failed = isFailure(c.hresult);
      rows.push(
        `<tr class="client${c.duplicate ? " duplicate" : ""}" data-cmid="${esc(c.cmid)}">` +
        `<td class="name"><span class="ws">${esc(c.name)}</span>` +
        (c.duplicate ? ' <span class="badge warn" title="One CMID sent by more than one ' +
          'workstation name: a cloned image that was not sysprepped">duplicate CMID</span>' : "") +
        (c.vm ? ' <span class="badge">VM</span>' : "") +
        (others.length ? `<div class="aka">also sent as ${others.map((n) =>
          `<span class="ws">${esc(n)}</span>`).join(", ")}</div>` : "") +
        `</td>` +
        `<td><code class="cmid" title="${esc(c.cmid)}">${esc(shortId(c.cmid))}</code></td>` +
        `<td class="product">${esc(c.product || "–")}</td>` +
        `<td class="licence state-${state}" title="${licence.expires ? `expires ${esc(formatTime(licence.expires))} UTC` : ""}">` +
        `${esc(licence.text || "")}</td>` +
        `<td class="result${failed ? " failed" : ""}"` +
        (c.reported_status ? ` title="the client reports ${esc(c.reported_status)}"` : "") +
        `><code>${esc(c.hresult)}</code>` +
        (c.error ? ` <span class="err">${esc(c.error)}</span>` : "") +
        `</td>` +
        `<td>${timeCell(c.last_request)}</td>` +
        `<td class="num">${esc(c.requests)}</td>` +
        `<td><code>${esc(c.peer)}</code></td>` +
        `</tr>`);
    }
    body.innerHTML = rows.length ? rows.join("")
      : '<tr class="empty"><td colspan="8">No client matches the filter.</td></tr>';
    setText("#clients-shown", needle ? `${shown} of ${clients.length}`
      : `${clients.length} client${clients.length === 1 ? "" : "s"}`);
  }

  function renderRequests(requests) {
    const body = $("#requests tbody");
    if (!requests.length) {
      body.innerHTML = '<tr class="empty"><td colspan="8">No request yet.</td></tr>';
      return;
    }
    const rows = requests.map((r) => {
      const failed = isFailure(r.hresult);
      const why = [r.error, r.reason].filter((s, i, all) => s && all.indexOf(s) === i);
      return `<tr class="request${failed ? " failed" : ""}" data-id="${esc(r.id)}">` +
        `<td class="num muted">${esc(r.id)}</td>` +
        `<td>${timeCell(r.time)}</td>` +
        `<td><span class="ws">${esc(r.client || "–")}</span></td>` +
        `<td class="product">${esc(r.product || "–")}</td>` +
        `<td class="hresult"><code>${esc(r.hresult)}</code></td>` +
        `<td>${why.map((s) => `<span class="err">${esc(s)}</span>`).join(" · ")}</td>` +
        `<td class="num">${esc(r.count)}</td>` +
        `<td><code>${esc(r.peer)}</code></td>` +
        `</tr>`;
    });
    body.innerHTML = rows.join("");
  }

  function renderDns(dns) {
    setText("#dns-zone", dns.zone ? `zone ${dns.zone}${dns.listen ? ` on ${dns.listen}` : ""}` : "");
    const records = dns.records || [];
    $("#dns tbody").innerHTML = records.length
      ? records.map((r) =>
        `<tr class="record"><td><code>${esc(r.name)}</code></td><td>${esc(r.type)}</td>` +
        `<td class="num">${esc(r.ttl)}</td><td><code>${esc(r.data)}</code></td></tr>`).join("")
      : '<tr class="empty"><td colspan="4">No record published.</td></tr>';
  }

  function renderMak(keys) {
    const nowMs = current && current.now ? new Date(current.now).getTime() : Date.now();
    $("#mak tbody").innerHTML = keys.length
      ? keys.map((k) => {
        const used = Number(k.used) || 0;
        const limit = Number(k.limit) || 0;
        const percent = limit > 0 ? Math.min(100, (used / limit) * 100) : 0;
        const expired = k.expires && new Date(k.expires).getTime() <= nowMs;
        const exhausted = limit > 0 && used >= limit;
        let status = '<span class="badge ok">active</span>';
        if (k.blocked) status = '<span class="badge bad">blocked</span>';
        else if (expired) status = '<span class="badge bad">expired</span>';
        else if (exhausted) status = '<span class="badge warn">used up</span>';
        const expires = k.expires ? `<div class="muted small">expires ${timeCell(k.expires)}</div>` : "";
        const cls = `key${k.blocked ? " blocked" : ""}${expired ? " expired" : ""}${exhausted ? " exhausted" : ""}`;
        return `<tr class="${cls}" data-fingerprint="${esc(k.fingerprint)}">` +
          `<td><code>…${esc(k.last5)}</code> <span class="muted small">${esc(k.fingerprint)}</span></td>` +
          `<td class="product">${esc(k.product || "–")}</td>` +
          `<td><div class="usage"><span class="usage-text">${esc(used)} / ${esc(limit)}</span>` +
          `<span class="bar small" aria-hidden="true"><span class="fill" style="width:${percent.toFixed(1)}%"></span></span></div></td>` +
          `<td class="num">${esc(k.remaining)}</td>` +
          `<td>${status}${expires}</td></tr>`;
      }).join("")
      : '<tr class="empty"><td colspan="5">No MAK key added yet.</td></tr>';
  }

  // ------------------------------------------------------------- actions

  async function changeClock(body) {
    if (busy) return;
    busy = true;
    setClockEnabled(false);
    try {
      const response = await fetch(API_CLOCK, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json", ...authHeaders() },
        body: JSON.stringify(body),
        cache: "no-store",
      });
      if (!response.ok) {
        const why = await errorMessage(response);
        showMessage(response.status === 401
          ? `The lab refused the clock change: ${why} Check the admin token.`
          : `The clock did not change: ${why}`);
        return;
      }
      clearMessage();
      accept(await response.json());
    } catch (err) {
      showMessage(`Could not reach the lab: ${err.message}`);
    } finally {
      busy = false;
      if (current) setClockEnabled(current.read_only === false);
    }
  }

  // POST or DELETE /api/host/faults[/id]; the answer holds the faults now in force
  async function changeFaults(method, path, body) {
    if (faultBusy) return;
    faultBusy = true;
    setFaultsEnabled(false);
    try {
      const response = await fetch(path, {
        method,
        headers: { "Content-Type": "application/json", Accept: "application/json", ...authHeaders() },
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
      if (!response.ok) {
        const why = await errorMessage(response);
        showMessage(response.status === 401 || response.status === 403
          ? `The lab refused the fault change: ${why} Check the admin token.`
          : `The host's faults did not change: ${why}`);
        return;
      }
      const doc = await response.json();
      clearMessage();
      if (current) current.host_faults = { faults: doc.faults, fired: doc.fired };
      renderFaults(doc);
    } catch (err) {
      showMessage(`Could not reach the lab: ${err.message}`);
    } finally {
      faultBusy = false;
      if (current) {
        setFaultsEnabled(current.read_only === false);
        renderFaults(current.host_faults || {});
      }
    }
  }

  function setFault() {
    const kind = $("#fault-kind").value || $("#fault-hresult").value.trim();
    if (!kind) {
      showMessage("Choose a network fault, or type an HRESULT such as 0xC004F042.");
      return;
    }
    const body = { kind };
    const times = $("#fault-times").value.trim();
    if (times) body.times = Number(times);
    const delay = $("#fault-delay").value.trim();
    if (kind === "slow" && delay) body.delay = delay;
    changeFaults("POST", API_FAULTS, body);
  }

  function saveToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // storage disabled: the cookie still lets the page read
    }
    // the cookie authenticates reads (the state and the event stream, which
    // cannot send headers); writes send the Authorization header
    document.cookie = value
      ? `${TOKEN_KEY}=${encodeURIComponent(value)}; path=/; SameSite=Strict`
      : `${TOKEN_KEY}=; path=/; SameSite=Strict; max-age=0`;
  }

  function init() {
    $("#token").value = token();

    $("#token-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = $("#token").value.trim();
      saveToken(value);
      clearMessage();
      if (await loadState()) {
        showMessage(value ? "Token saved for this browser session." : "Token cleared.", "info");
      }
      connect("connecting"); // the stream's view (read-only or not) depends on the cookie
    });

    document.querySelectorAll("[data-advance]").forEach((button) => {
      button.addEventListener("click", () => changeClock({ advance: button.dataset.advance }));
    });
    $("#clock-reset").addEventListener("click", () => changeClock({ reset: true }));
    $("#advance-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("#advance-by").value.trim();
      if (value) changeClock({ advance: value });
    });
    $("#fault-kind").addEventListener("change", syncFaultKind);
    $("#fault-form").addEventListener("submit", (event) => {
      event.preventDefault();
      setFault();
    });
    $("#fault-clear").addEventListener("click", () => changeFaults("DELETE", API_FAULTS));
    $("#faults").addEventListener("click", (event) => {
      const button = event.target.closest("[data-clear]");
      if (button) changeFaults("DELETE", `${API_FAULTS}/${encodeURIComponent(button.dataset.clear)}`);
    });
    $("#client-filter").addEventListener("input", () => {
      if (current) renderClients(current.clients || []);
    });

    setInterval(tickClock, 1000);
    loadState();
    connect();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
