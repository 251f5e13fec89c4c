//! The org timeline as a page for a person: one self-contained HTML document (no
//! external assets) whose script polls `GET /api/orgs/{org}/timeline` every second and
//! redraws the table, newest first, with the filters as form fields.
//!
//! Invariants:
//! * the page holds no data of its own: every row comes from the JSON endpoint, so what
//!   a reader sees is what the API answers (and a test that finds rows in the DOM has
//!   shown the script ran);
//! * event text is inserted with `textContent`, never as HTML, so a message cannot
//!   inject markup;
//! * an `admin_token` in the page's query string is sent on as a bearer header and
//!   kept in the URL only because the reader put it there.

/// The page; the org is read from its own path.
pub const TIMELINE_HTML: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vWorkspace timeline</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.3rem; }
form { display: flex; flex-wrap: wrap; gap: .5rem; margin-bottom: 1rem; }
label { display: flex; flex-direction: column; font-size: .8rem; }
input { font: inherit; padding: .2rem .4rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f3f3f5; position: sticky; top: 0; }
td.kind { font-weight: 600; }
#status { font-size: .8rem; color: #666; }
</style>
</head>
<body>
<h1>Timeline of <span id="org"></span></h1>
<form id="filters">
  <label>cluster<input name="cluster"></label>
  <label>namespace<input name="namespace"></label>
  <label>application<input name="application"></label>
  <label>operation<input name="operation"></label>
  <label>kind<input name="kind"></label>
</form>
<p id="status">loading…</p>
<table>
<thead><tr><th>occurred</th><th>kind</th><th>reason</th><th>message</th><th>cluster</th>
<th>namespace</th><th>application</th><th>operation</th><th>event id</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<script>
"use strict";
const parts = location.pathname.split("/");
const org = decodeURIComponent(parts[parts.length - 2]);
document.getElementById("org").textContent = org;
const pageQuery = new URLSearchParams(location.search);
const token = pageQuery.get("admin_token");
const form = document.getElementById("filters");
for (const input of form.elements) {
  if (pageQuery.has(input.name)) input.value = pageQuery.get(input.name);
  input.addEventListener("input", refresh);
}
form.addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
const columns = ["occurred_at", "kind", "reason", "message", "cluster_id", "namespace",
                 "application_instance", "operation_id", "event_id"];
async function refresh() {
  const q = new URLSearchParams();
  for (const input of form.elements) if (input.value) q.set(input.name, input.value);
  const headers = token ? { "Authorization": "Bearer " + token } : {};
  try {
    const r = await fetch("/api/orgs/" + encodeURIComponent(org) + "/timeline?" + q, { headers, cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const body = await r.json();
    const rows = document.createDocumentFragment();
    for (const ev of body.events) {
      const tr = document.createElement("tr");
      tr.id = "event-" + ev.event_id;
      tr.dataset.kind = ev.kind;
      for (const c of columns) {
        const td = document.createElement("td");
        td.className = c === "kind" ? "kind" : "";
        td.textContent = ev[c] === undefined ? "" : ev[c];
        if (c === "occurred_at") td.title = "received " + ev.received_at;
        tr.appendChild(td);
      }
      rows.appendChild(tr);
    }
    document.getElementById("rows").replaceChildren(rows);
    document.getElementById("status").textContent =
      body.events.length + " events, updated " + new Date().toISOString();
  } catch (err) {
    document.getElementById("status").textContent = "update failed: " + err.message;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"##;
