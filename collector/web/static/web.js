// The page's script: times in the viewer's time zone and a refresh from the
// JSON API every few seconds. Text from the API is only ever set with
// textContent or setAttribute, never parsed as HTML, and rows are updated in
// place so that a refresh does not flicker. When the API cannot be read the
// last figures stay on the page, greyed, under a banner that says why.
"use strict";

(function () {
  const body = document.body;
  const labels = JSON.parse(body.dataset.labels || "{}");
  const lang = body.dataset.lang || "en";
  const refreshMs = Number(body.dataset.refresh || 0) * 1000;
  const api = body.dataset.api || "";
  const SVG = "http://www.w3.org/2000/svg";
  let lastGood = Date.now();

  function label(key) {
    return Object.prototype.hasOwnProperty.call(labels, key) ? labels[key] : key;
  }

  // ---- times ---------------------------------------------------------------
  function pad(n) { return String(n).padStart(2, "0"); }

  function localTime(ms, withDate) {
    const d = new Date(ms);
    const clock = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (!withDate) { return clock; }
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      clock + ":" + pad(d.getSeconds());
  }

  function zoneName() {
    try {
      return Intl.DateTimeFormat(lang).resolvedOptions().timeZone || "";
    } catch (e) {
      return "";
    }
  }

  function localizeTimes(root) {
    const zone = zoneName();
    root.querySelectorAll("[data-ms]").forEach(function (node) {
      const ms = Number(node.getAttribute("data-ms"));
      if (!ms) { return; }
      if (node.hasAttribute("data-span")) {
        // A chart's time axis: the clock only within two days, else the date too.
        const span = Number(node.getAttribute("data-span"));
        const d = new Date(ms);
        node.textContent = (span > 2 * 86400000 ? pad(d.getMonth() + 1) + "-" +
          pad(d.getDate()) + " " : "") + localTime(ms, false);
      } else {
        node.textContent = localTime(ms, true) + (zone ? " " + zone : "");
        node.setAttribute("title", new Date(ms).toISOString());
      }
    });
    document.querySelectorAll(".zone").forEach(function (node) { node.textContent = zone; });
  }

  function ageText(seconds) {
    if (seconds === null || seconds === undefined) { return "-"; }
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) { return s + "s"; }
    if (s < 3600) { return Math.floor(s / 60) + "m" + pad(s % 60) + "s"; }
    if (s < 86400) { return Math.floor(s / 3600) + "h" + pad(Math.floor(s % 3600 / 60)) + "m"; }
    return Math.floor(s / 86400) + "d" + pad(Math.floor(s % 86400 / 3600)) + "h";
  }

  function figure(value) {
    if (value === null || value === undefined) { return "-"; }
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  // ---- building blocks -------------------------------------------------------
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (className) { node.className = className; }
    return node;
  }

  function cell(key, text, className) {
    const td = el("td", text, className);
    td.setAttribute("data-label", label(key));
    return td;
  }

  function badge(status) {
    const span = el("span", label(status), "badge st-" + status);
    span.setAttribute("data-status", status);
    return span;
  }

  function timeNode(ms) {
    if (!ms) { return document.createTextNode("-"); }
    const node = el("time", new Date(ms).toISOString());
    node.setAttribute("data-ms", String(ms));
    return node;
  }

  function hostLink(host) {
    const a = el("a", host);
    a.setAttribute("href", "/host/" + encodeURIComponent(host));
    return a;
  }

  function spark(runs, name) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 80 18");
    svg.setAttribute("width", "80");
    svg.setAttribute("height", "18");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label(name));
    (runs || []).forEach(function (points) {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points);
      svg.appendChild(line);
    });
    return svg;
  }

  // ---- the fleet ------------------------------------------------------------
  function valueCell(key, value, runs, sparkName) {
    const td = cell(key, null, "c-" + key + " num");
    td.appendChild(el("span", figure(value), "v"));
    td.appendChild(spark(runs, sparkName));
    return td;
  }

  function hostRow(host) {
    const tr = el("tr", null, "row st-" + host.status);
    tr.setAttribute("data-host", host.host);
    const name = cell("host", null, "c-host");
    name.appendChild(hostLink(host.host));
    tr.appendChild(name);
    const status = cell("status", null, "c-status");
    status.appendChild(badge(host.status));
    tr.appendChild(status);
    tr.appendChild(cell("seen", ageText(host.age_s), "c-seen num"));
    tr.appendChild(cell("stale", host.stale === "no" ? "" : label(host.stale),
      "c-stale stale-" + host.stale));
    tr.appendChild(valueCell("sessions", host.sessions, host.spark.sessions, "sessions"));
    tr.appendChild(cell("guests", figure(host.guests), "c-guests num"));
    tr.appendChild(valueCell("disk", host.disk_percent, host.spark.disk, "disk"));
    tr.appendChild(valueCell("rss", host.rss_mb, host.spark.rss, "rss"));
    return tr;
  }

  function sameRow(old, fresh) {
    // Rows are replaced only when something shown changed, so an unchanged
    // row is never touched and nothing flickers.
    return old.getAttribute("class") === fresh.getAttribute("class") &&
      old.textContent === fresh.textContent &&
      old.querySelectorAll("polyline").length === fresh.querySelectorAll("polyline").length &&
      Array.prototype.every.call(old.querySelectorAll("polyline"), function (line, i) {
        return line.getAttribute("points") ===
          fresh.querySelectorAll("polyline")[i].getAttribute("points");
      });
  }

  function updateHosts(hosts) {
    const tbody = document.querySelector("#hosts tbody");
    const existing = new Map();
    tbody.querySelectorAll("tr[data-host]").forEach(function (tr) {
      existing.set(tr.getAttribute("data-host"), tr);
    });
    let previous = null;
    hosts.forEach(function (host) {
      const fresh = hostRow(host);
      let row = existing.get(host.host);
      existing.delete(host.host);
      if (!row) {
        row = fresh;
      } else if (!sameRow(row, fresh)) {
        tbody.replaceChild(fresh, row);
        row = fresh;
      }
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (wanted !== row) { tbody.insertBefore(row, wanted); }
      previous = row;
    });
    existing.forEach(function (row) { row.remove(); });
    document.getElementById("host-count").textContent = String(hosts.length);
    const none = document.getElementById("no-hosts");
    if (none) { none.hidden = hosts.length > 0; }
  }

  function updateCounts(counts) {
    const box = document.getElementById("counts");
    const parts = [];
    ["CRITICAL", "WARNING", "UNKNOWN", "OK"].forEach(function (status) {
      if (counts[status]) {
        parts.push(el("span", label(status) + " " + counts[status], "count st-" + status));
        parts.push(document.createTextNode(" "));
      }
    });
    box.replaceChildren.apply(box, parts);
  }

  function updateAlerts(alerts) {
    const rows = alerts.map(function (alert) {
      const tr = el("tr", null, "alert-" + alert.state + " sev-" + alert.severity);
      const host = cell("host");
      host.appendChild(hostLink(alert.host));
      tr.appendChild(host);
      tr.appendChild(cell("check", alert.check));
      tr.appendChild(cell("state", label(alert.state === "pending" ? "pending_state" :
        alert.state), "alert-state"));
      tr.appendChild(cell("severity", label(alert.severity)));
      const since = cell("since");
      since.appendChild(timeNode(alert.since_ms));
      tr.appendChild(since);
      tr.appendChild(cell("summary", alert.summary));
      return tr;
    });
    const tbody = document.querySelector("#alerts tbody");
    tbody.replaceChildren.apply(tbody, rows);
    document.getElementById("no-alerts").hidden = alerts.length > 0;
  }

  function updateCollectors(collectors) {
    const rows = collectors.map(function (row) {
      const state = row.stalled ? "stalled" : (row.state || "running");
      const tr = el("tr", null, "collector-" + state);
      tr.appendChild(cell("collector", row.name));
      tr.appendChild(cell("heartbeat", ageText(row.age_s) + " " + label("ago")));
      tr.appendChild(cell("state", label(state)));
      tr.appendChild(cell("streams", figure(row.streams), "num"));
      tr.appendChild(cell("sharing", figure(row.sharing), "num"));
      tr.appendChild(cell("lag", figure(row.lag), "num"));
      tr.appendChild(cell("pending", figure(row.pending), "num"));
      return tr;
    });
    const tbody = document.querySelector("#collectors tbody");
    tbody.replaceChildren.apply(tbody, rows);
    document.getElementById("no-collectors").hidden = collectors.length > 0;
  }

  function showFleet(data) {
    updateCounts(data.counts);
    updateHosts(data.hosts);
    updateAlerts(data.alerts);
    updateCollectors(data.collectors);
    const now = document.getElementById("now");
    now.replaceChildren(timeNode(data.now_ms));
  }

  // ---- one host ---------------------------------------------------------------
  function showHost(data) {
    const status = document.getElementById("host-status");
    status.replaceChildren(badge(data.status));
    document.getElementById("host-age").textContent = ageText(data.age_s);
    const stale = document.getElementById("host-stale");
    stale.textContent = data.stale === "no" ? label("no") : label(data.stale);
    stale.className = "stale-" + data.stale;
    document.getElementById("host-sessions").textContent = figure(data.sessions);
    document.getElementById("host-guests").textContent = figure(data.guests);
    document.getElementById("now").replaceChildren(timeNode(data.now_ms));
  }

  // ---- refresh and the banner ---------------------------------------------------
  function setBanner(message) {
    const banner = document.getElementById("banner");
    const main = document.getElementById("main");
    if (!banner || !main) { return; }
    if (message) {
      banner.textContent = message;
      banner.hidden = false;
      main.classList.add("old");
    } else {
      banner.hidden = true;
      banner.textContent = "";
      main.classList.remove("old");
    }
  }

  function since() {
    return " (" + label("updated") + " " + localTime(lastGood, true) + ")";
  }

  function refresh() {
    fetch(api, { headers: { "Accept": "application/json" }, cache: "no-store",
                 credentials: "same-origin" })
      .then(function (response) {
        return response.json().then(function (data) {
          return { status: response.status, data: data };
        });
      })
      .then(function (answer) {
        if (answer.status === 503) {
          setBanner(label("redis_down") + ": " + label("redis_down_detail") + since());
          return;
        }
        if (answer.status !== 200) { return; }
        if (body.dataset.page === "fleet") { showFleet(answer.data); } else { showHost(answer.data); }
        lastGood = Date.now();
        setBanner(null);
        localizeTimes(document);
      })
      .catch(function () {
        setBanner(label("server_down") + ": " + label("redis_down_detail") + since());
      });
  }

  localizeTimes(document);
  if (api && refreshMs > 0) {
    refresh();
    window.setInterval(refresh, refreshMs);
  }
}());
