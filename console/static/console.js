// Shoal console: confirmed actions and live updates by polling the JSON API every 2 s.
// Data from the server is only ever written with textContent, never as HTML.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const admin = document.querySelector('meta[name="admin"]').content === "1";
  const page = document.body.dataset.page;
  const flash = document.getElementById("flash");
  const POLL_MS = 2000;

  function say(text, isError) {
    flash.textContent = text;
    flash.className = isError ? "error" : "ok";
  }

  async function getJSON(url) {
    const r = await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}});
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  }

  // Actions: a confirm() step, then a POST carrying the CSRF token.
  document.addEventListener("click", async function (ev) {
    const b = ev.target.closest("button.action");
    if (!b) return;
    ev.preventDefault();
    if (!window.confirm(b.dataset.confirm)) return;
    b.disabled = true;
    try {
      const r = await fetch(b.dataset.url, {
        method: "POST", credentials: "same-origin",
        headers: {"X-CSRF-Token": csrf, "Content-Type": "application/json"},
        body: b.dataset.body || "{}",
      });
      const data = await r.json().catch(function () { return {}; });
      if (!r.ok) { say(data.error || ("failed: " + r.status), true); return; }
      say(b.textContent + ": done" + (data.count !== undefined ? " (" + data.count + " jobs)" : ""), false);
      refresh();
    } catch (err) {
      say(String(err), true);
    } finally {
      b.disabled = false;
    }
  });

  function setText(el, value) {
    const text = value === null || value === undefined ? "-" : String(value);
    if (el && el.textContent !== text) el.textContent = text;
  }

  function age(s) {
    if (s === null || s === undefined) return "-";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function cell(q, f) {
    return document.querySelector('[data-q="' + CSS.escape(q) + '"][data-f="' + f + '"]');
  }

  async function refreshOverview() {
    const data = await getJSON("/api/queues");
    for (const q of data.queues) {
      for (const s of ["ready", "scheduled", "running", "failed"]) {
        const c = cell(q.name, s);
        if (c) setText(c.querySelector("a") || c, q.counts[s].shown);
      }
      setText(cell(q.name, "throughput"), q.throughput_reporting ? Math.round(q.throughput_per_minute) : "-");
      setText(cell(q.name, "live_workers"), q.live_workers);
      setText(cell(q.name, "oldest_ready_age"), age(q.oldest_ready_age));
      const p = cell(q.name, "paused");
      if (p) {
        setText(p, q.paused ? "paused" : "active");
        p.className = q.paused ? "paused" : "active";
        const row = p.closest("tr");
        row.querySelectorAll("button.action").forEach(function (b) {
          b.hidden = b.dataset.url.endsWith("/pause") ? q.paused : !q.paused;
        });
      }
    }
  }

  function short(iso) { return iso ? iso.slice(0, 19).replace("T", " ") : null; }

  async function refreshJobs() {
    const data = await getJSON("/api/jobs" + window.location.search);
    const byId = new Map(data.jobs.map(function (j) { return [String(j.id), j]; }));
    document.querySelectorAll("#jobs tbody tr[data-id]").forEach(function (tr) {
      const j = byId.get(tr.dataset.id);
      if (!j) { tr.classList.add("gone"); return; }
      tr.classList.remove("gone");
      const td = tr.children;
      setText(td[3], j.state);
      td[3].className = "state " + j.state;
      setText(td[4], j.attempts + "/" + j.max_attempts);
      setText(td[6], short(j.finished_at));
      setText(td[7], j.last_error);
    });
  }

  function renderErrors(box, errors) {
    box.replaceChildren();
    if (!errors.length) {
      const p = document.createElement("p");
      p.className = "note";
      p.textContent = "No failed attempt recorded.";
      box.append(p);
      return;
    }
    for (const x of errors) {
      const s = document.createElement("section");
      s.className = "attempt";
      const h = document.createElement("h3");
      h.textContent = "Attempt " + x.attempt + " at " + x.at + (x.worker_id ? " on " + x.worker_id : "");
      const p = document.createElement("p");
      p.className = "err";
      p.textContent = x.error;
      const pre = document.createElement("pre");
      pre.className = "traceback";
      pre.textContent = x.traceback || "";
      s.append(h, p, pre);
      box.append(s);
    }
  }

  async function refreshJob() {
    const box = document.querySelector(".actions[data-job]");
    const j = await getJSON("/api/jobs/" + box.dataset.job);
    for (const dd of document.querySelectorAll("dl.job dd[data-f]")) {
      const f = dd.dataset.f;
      setText(dd, f === "attempts" ? j.attempts + "/" + j.max_attempts : j[f]);
    }
    box.querySelectorAll("button.action").forEach(function (b) {
      b.hidden = b.dataset.url.endsWith("/retry") ? !["failed", "cancelled"].includes(j.state)
        : !["pending", "running"].includes(j.state);
    });
    const errs = document.getElementById("errors");
    if (String(j.errors.length) !== errs.dataset.count) {
      renderErrors(errs, j.errors);
      errs.dataset.count = String(j.errors.length);
    }
  }

  const refreshers = {overview: refreshOverview, jobs: refreshJobs, job: refreshJob};
  let busy = false;
  async function refresh() {
    const fn = refreshers[page];
    if (!fn || busy) return;
    busy = true;
    try {
      await fn();
      document.body.dataset.updated = String(Date.now());
    } catch (err) {
      say("live update failed: " + err.message + " (retrying)", true);
    } finally {
      busy = false;
    }
  }
  if (refreshers[page]) {
    const errs = document.getElementById("errors");
    if (errs) errs.dataset.count = String(errs.querySelectorAll("section.attempt").length);
    window.setInterval(refresh, POLL_MS);
  }
  void admin;
})();
