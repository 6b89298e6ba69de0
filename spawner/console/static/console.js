// gpuhub console: renders each page from the console's JSON API and refreshes it every few seconds.
// Plain DOM building (never innerHTML with data), so names from the hub cannot inject markup.
"use strict";

const body = document.body;
const API = body.dataset.api;
const XSRF = body.dataset.xsrf;
const CAN_MANAGE = body.dataset.canManage === "yes";
const PAGE = body.dataset.page;
const REFRESH_MS = 5000;
const view = document.getElementById("view");
const statusLine = document.getElementById("status");
let editing = false; // a quota form is open: refreshing would throw away what is typed

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children.flat()) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(API + path, {
    credentials: "same-origin",
    ...options,
    headers: { "X-XSRFToken": XSRF, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = { message: `the console answered ${response.status}` };
  }
  if (!response.ok) {
    const error = new Error(data.message || `the console answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// --- formatting ------------------------------------------------------------------------
function ago(iso) {
  if (!iso) return "";
  return duration((Date.now() - Date.parse(iso)) / 1000);
}
function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}
function when(iso) {
  if (!iso) return "";
  return new Date(iso).toISOString().replace("T", " ").slice(0, 16) + " UTC";
}
function gib(bytes) {
  return (bytes / 1024 ** 3).toFixed(1) + " GiB";
}
function hours(h) {
  // null: the hub could not read the usage records; unknown is not "nothing used".
  return h === null ? "unknown" : `${Number(h || 0).toFixed(2)} h`;
}
function shortUuid(uuid) {
  return uuid.length > 16 ? uuid.slice(0, 12) + "…" + uuid.slice(-4) : uuid;
}
function meter(percent, label) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  return el("span", { class: "meter", title: label || `${p.toFixed(0)}%` }, el("span", { style: `width:${p}%` }), el("b", {}, label || `${p.toFixed(0)}%`));
}
function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))), el("tbody", {}, rows));
}
function problem(error) {
  return el("p", { class: "error", role: "alert" }, error.message);
}

// --- GPUs ------------------------------------------------------------------------------
function holderCells(holder) {
  if (!holder) return [el("td", { class: "free" }, "free"), el("td"), el("td")];
  if (holder.hidden) return [el("td", { class: "muted" }, "held (not visible to you)"), el("td"), el("td")];
  const who = holder.server ? `${holder.user} / ${holder.server}` : holder.user;
  return [
    el("td", { class: "holder" }, el("strong", {}, who), holder.charged_to ? el("small", {}, ` charged to ${holder.charged_to}`) : null),
    el("td", {}, holder.profile || ""),
    el("td", { title: when(holder.since) }, holder.since ? `${ago(holder.since)} ago` : ""),
  ];
}

function activityCell(t) {
  if (!t) return el("td", { class: "muted" }, "no sample yet");
  if (!t.ok) return el("td", { class: "warn" }, `no reading: ${t.error || "NVML failed"}`);
  if (t.activity === null || t.activity === undefined) {
    const util = t.utilization !== null && t.utilization !== undefined ? ` (utilization ${t.utilization}%)` : "";
    return el("td", { class: "muted" }, `no activity figure: ${t.no_activity_reason || "none available"}${util}`);
  }
  return el("td", {}, meter(t.activity, `${Number(t.activity).toFixed(0)}% ${t.activity_source || ""}`.trim()));
}

function memoryCell(t) {
  if (!t || !t.ok || !t.memory_total) return el("td", { class: "muted" }, "");
  return el("td", {}, meter((100 * t.memory_used) / t.memory_total, `${gib(t.memory_used)} / ${gib(t.memory_total)}`));
}

function quarantineCell(device) {
  if (!device.quarantine || !device.quarantine.length) return el("td");
  const cell = el("td", { class: "quarantine" }, el("span", { class: "badge bad" }, "quarantined"), " ", device.quarantine.join("; "));
  if (device.liftable && CAN_MANAGE) {
    const button = el("button", { type: "button", class: "action" }, "Release");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await api(`gpus/${encodeURIComponent(device.uuid)}/lift`, { method: "POST", body: "{}" });
        await refresh();
      } catch (e) {
        cell.append(problem(e));
        button.disabled = false;
      }
    });
    cell.append(" ", button);
  } else if (!device.liftable) {
    cell.append(el("small", { class: "muted" }, " (clears itself once its cause is gone)"));
  }
  return cell;
}

function renderGpus(data) {
  const s = data.summary;
  const parts = [
    el("p", { class: "summary" }, `${s.gpus} GPUs, ${s.devices} devices: `, el("strong", {}, `${s.held} held`), `, ${s.free} free, `, el("span", { class: s.quarantined ? "bad" : "" }, `${s.quarantined} quarantined`), `. Telemetry every ${data.telemetry_interval} s.`),
  ];
  for (const gpu of data.gpus) {
    const rows = gpu.devices.map((d) =>
      el(
        "tr",
        { "data-device": d.uuid, class: d.quarantine && d.quarantine.length ? "quarantined" : d.holder ? "held" : "" },
        el("td", { title: d.uuid }, d.kind === "mig" ? `MIG ${d.mig_profile || ""}` : "whole GPU", el("br"), el("code", {}, shortUuid(d.uuid))),
        holderCells(d.holder),
        activityCell(d.telemetry),
        memoryCell(d.telemetry),
        quarantineCell(d)
      )
    );
    parts.push(
      el(
        "section",
        { class: "gpu", "data-gpu": gpu.uuid },
        el("h2", {}, `GPU ${gpu.index} · ${gpu.model}`, gpu.mig ? el("span", { class: "badge" }, "MIG") : null, el("code", {}, gpu.uuid)),
        table(["Device", "Holder", "Profile", "Since", "Activity", "Memory", "Quarantine"], rows, "No devices.")
      )
    );
  }
  if (!data.gpus.length) parts.push(el("p", { class: "empty" }, "This hub has no GPUs (CPU servers only)."));
  return parts;
}

// --- Queue -----------------------------------------------------------------------------
function wants(entry) {
  const kind = entry.mig_profile ? `MIG ${entry.mig_profile}` : entry.model || "GPU";
  return `${entry.count} × ${kind}`;
}

function removeButton(entry) {
  if (!CAN_MANAGE) return null;
  const button = el("button", { type: "button", class: "action" }, "Remove");
  let armed = false;
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = "Remove: sure?";
      setTimeout(() => {
        armed = false;
        button.textContent = "Remove";
      }, 5000);
      return;
    }
    button.disabled = true;
    const path = `queue/${encodeURIComponent(entry.user)}` + (entry.server ? `/${encodeURIComponent(entry.server)}` : "");
    try {
      await api(path, { method: "DELETE" });
      await refresh();
    } catch (e) {
      button.after(problem(e));
      button.disabled = false;
    }
  });
  return button;
}

function renderQueue(data) {
  const rows = data.queue.map((q) =>
    el(
      "tr",
      { "data-waiter": `${q.user}/${q.server}` },
      el("td", {}, q.position),
      el("td", {}, el("strong", {}, q.user), q.server ? ` / ${q.server}` : ""),
      el("td", {}, wants(q)),
      el("td", {}, q.charged_to || ""),
      el("td", {}, q.priority),
      el("td", { title: when(q.since) }, duration(q.waited_s)),
      el("td", {}, removeButton(q))
    )
  );
  return [
    el("p", { class: "summary" }, `${data.queue.length} waiting.`),
    table(["Position", "Who", "Wants", "Charged to", "Priority", "Waited", ""], rows, "Nobody is waiting for a GPU."),
  ];
}

// --- Quotas and budgets ------------------------------------------------------------------
const LABELS = {
  profiles: "Profiles",
  max_devices_per_user: "Devices per user",
  max_devices_per_group: "Devices per group",
  priority: "Priority",
  gpu_hours_per_user: "GPU-hours per user",
  gpu_hours_per_group: "GPU-hours per group",
};
const HINTS = {
  profiles: "slugs, comma-separated, or *",
  max_devices_per_user: "whole number; none: no limit; empty: as configured",
  max_devices_per_group: "whole number; none: no limit; empty: as configured",
  priority: "whole number, higher goes first",
  gpu_hours_per_user: "e.g. 20/week; none: no budget",
  gpu_hours_per_group: "e.g. 500/month; none: no budget",
};

function shown(value) {
  if (value === null || value === undefined) return "—";
  if (Array.isArray(value)) return value.join(", ") || "(none)";
  return String(value);
}

function asText(value) {
  if (value === undefined) return "";
  if (value === null) return "none"; // set here: no limit, whatever the config says
  return Array.isArray(value) ? value.join(", ") : String(value);
}

// The form's text -> the JSON a quota takes. Text that is not a whole number stays text, so the
// hub's own validation names the key (one schema: the spawner's).
function fromForm(key, text) {
  text = text.trim();
  if (text === "") return undefined;
  if (key !== "profiles" && /^(none|null|unlimited)$/i.test(text)) return null; // as `gpuhub quota set key=none`
  if (key === "profiles") return text === "*" ? "*" : text.split(",").map((p) => p.trim()).filter(Boolean);
  if (key.startsWith("gpu_hours")) return text;
  return /^-?\d+$/.test(text) ? Number(text) : text;
}

function quotaForm(group, keys, card) {
  const own = group.properties || {};
  const inputs = {};
  const error = el("p", { class: "error", role: "alert", hidden: true });
  const form = el(
    "form",
    { class: "quota-form", "data-group": group.name },
    keys.map((key) => {
      inputs[key] = el("input", { name: key, value: asText(own[key]), placeholder: group.config && group.config[key] !== undefined ? `config: ${shown(group.config[key])}` : HINTS[key] });
      return el("label", {}, el("span", {}, LABELS[key] || key), inputs[key], el("small", {}, HINTS[key] || ""));
    }),
    error,
    el("button", { type: "submit", class: "primary" }, "Save"),
    " ",
    el("button", { type: "button", onclick: () => { editing = false; refresh(); } }, "Cancel")
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const quota = {};
    for (const key of keys) {
      const value = fromForm(key, inputs[key].value);
      if (value !== undefined) quota[key] = value;
    }
    try {
      await api(`quotas/${encodeURIComponent(group.name)}`, { method: "PUT", body: JSON.stringify(quota) });
      editing = false;
      await refresh();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  });
  card.replaceChildren(card.firstChild, form);
  inputs[keys[0]].focus();
}

function budgetLine(b) {
  if (!b) return null;
  const parts = [`${b.budget}`];
  if (b.used_hours !== undefined) parts.push(`used ${hours(b.used_hours)}`);
  if (b.refills_at) parts.push(`refills ${when(b.refills_at)}`);
  return parts.join(" · ");
}

function renderQuotas(data) {
  const keys = data.keys;
  const cards = data.groups.map((g) => {
    const eff = g.effective || {};
    const rows = keys.map((key) => {
      const from = g.properties && g.properties[key] !== undefined ? "set here" : g.config && g.config[key] !== undefined ? "config" : "";
      return el("tr", {}, el("th", {}, LABELS[key] || key), el("td", { "data-key": key }, shown(eff[key])), el("td", { class: "muted" }, from));
    });
    const budgets = g.budgets || {};
    const card = el(
      "section",
      { class: "group", "data-group": g.name },
      el("h2", {}, g.name, el("small", {}, ` ${g.members} members`)),
      el(
        "div",
        {},
        el("table", { class: "quota" }, el("tbody", {}, rows)),
        g.problems && g.problems.length ? el("ul", { class: "problems" }, g.problems.map((p) => el("li", { class: "bad" }, p))) : null,
        budgets.group ? el("p", {}, "Group budget: ", budgetLine(budgets.group)) : null,
        budgets.user ? el("p", {}, "Per-user budget: ", budgetLine(budgets.user), budgets.user.members ? ` (each of ${budgets.user.members.length} members)` : "") : null,
        CAN_MANAGE && g.editable ? el("button", { type: "button", class: "action edit", onclick: () => { editing = true; quotaForm(g, keys, card); } }, "Edit") : null
      )
    );
    return card;
  });
  const audit = (data.audit || []).map((a) =>
    el("tr", {}, el("td", {}, when(a.at)), el("td", {}, a.who), el("td", {}, a.action), el("td", {}, a.target), el("td", {}, el("code", {}, JSON.stringify(a.old))), el("td", {}, el("code", {}, JSON.stringify(a.new))))
  );
  return [
    el("p", { class: "summary" }, "Default for everyone: ", keys.map((k) => `${LABELS[k] || k} ${shown((data.default || {})[k])}`).join(" · ")),
    cards.length ? el("div", { class: "groups" }, cards) : el("p", { class: "empty" }, "No groups you may see."),
    el("h2", {}, "Audit trail"),
    table(["When", "Who", "What", "Target", "Old", "New"], audit, "No changes recorded yet."),
  ];
}

// --- Usage -----------------------------------------------------------------------------
const usageQuery = { since: "30d", until: "", by: "user" };

function chart(bars) {
  if (!bars.length) return el("p", { class: "empty" }, "No GPU use in this period.");
  const rowH = 22, labelW = 180, width = 720, barW = width - labelW - 90;
  const shownBars = bars.slice(0, 40);
  const picture = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${rowH * shownBars.length + 4}`, role: "img", "aria-label": "GPU-hours bar chart" });
  shownBars.forEach((b, i) => {
    const y = i * rowH + 2;
    const w = Math.max(1, (barW * b.percent) / 100);
    const culled = b.gpu_hours > 0 ? ((b.by_reason["gpu-idle"] || 0) / b.gpu_hours) * w : 0;
    picture.append(
      svg("text", { x: labelW - 6, y: y + 14, "text-anchor": "end" }, b.key.length > 24 ? b.key.slice(0, 23) + "…" : b.key),
      svg("rect", { x: labelW, y, width: w, height: rowH - 6, class: "bar" }, svg("title", {}, `${b.key}: ${b.gpu_hours} GPU-hours`)),
      culled > 0 ? svg("rect", { x: labelW + w - culled, y, width: culled, height: rowH - 6, class: "bar culled" }) : "",
      svg("text", { x: labelW + w + 6, y: y + 14 }, hours(b.gpu_hours))
    );
  });
  const more = bars.length > shownBars.length ? el("p", { class: "muted" }, `${bars.length - shownBars.length} more in the CSV export.`) : null;
  return [picture, el("p", { class: "legend" }, el("span", { class: "swatch" }), " GPU-hours ", el("span", { class: "swatch culled" }), " of them ended by GPU-idle culling"), more];
}

function controls() {
  const since = el("input", { name: "since", value: usageQuery.since, size: 12, title: "ISO date or 7d, 12h" });
  const until = el("input", { name: "until", value: usageQuery.until, size: 12, placeholder: "now" });
  const by = el("select", { name: "by" }, ["user", "group", "profile", "device", "model", "reason"].map((k) => el("option", { value: k, selected: k === usageQuery.by }, k)));
  const csv = el("a", { class: "button", href: `${API}usage.csv?${new URLSearchParams(usageQuery)}`, download: true }, "Export CSV");
  const apply = () => {
    usageQuery.since = since.value.trim();
    usageQuery.until = until.value.trim();
    usageQuery.by = by.value;
    refresh();
  };
  by.addEventListener("change", apply);
  return el(
    "form",
    { class: "controls", onsubmit: (e) => { e.preventDefault(); apply(); } },
    el("label", {}, "Since ", since),
    el("label", {}, "Until ", until),
    el("label", {}, "By ", by),
    el("button", { type: "submit" }, "Show"),
    " ",
    csv
  );
}

function renderUsage(data) {
  const reasons = data.end_reasons.map((r) => el("tr", {}, el("td", {}, r.reason), el("td", {}, r.meaning), el("td", {}, hours(r.gpu_hours))));
  const budgets = data.budgets.map((b) =>
    el("tr", {}, el("td", {}, b.group), el("td", {}, b.scope === "user" ? b.user : "(whole group)"), el("td", {}, b.budget), el("td", {}, b.percent_used === null ? hours(b.used_hours) : meter(b.percent_used, `${hours(b.used_hours)} used`)), el("td", {}, b.left_hours === null ? "" : hours(b.left_hours)), el("td", {}, when(b.refills_at)))
  );
  return [
    controls(),
    el("p", { class: "summary" }, `${hours(data.total_hours)} from ${when(data.since)} to ${when(data.until)}, by ${data.by}. GPU-idle culling took back `, el("strong", {}, hours(data.culled_hours)), "."),
    chart(data.bars),
    el("h2", {}, "End reasons"),
    table(["Reason", "Meaning", "GPU-hours"], reasons, "No servers in this period."),
    el("h2", {}, "Budgets"),
    table(["Group", "User", "Budget", "Used", "Left", "Refills"], budgets, "No GPU-hour budgets set."),
  ];
}

// --- refresh loop ----------------------------------------------------------------------
const PAGES = {
  gpus: () => api("gpus").then(renderGpus),
  queue: () => api("queue").then(renderQueue),
  quotas: () => api("quotas").then(renderQuotas),
  usage: () => api(`usage?${new URLSearchParams(usageQuery)}`).then(renderUsage),
};

async function refresh() {
  if (editing) return;
  try {
    const parts = await PAGES[PAGE]();
    if (editing) return;
    const focused = document.activeElement && view.contains(document.activeElement) ? document.activeElement.name : null;
    view.replaceChildren(...parts.flat().filter(Boolean));
    if (focused) {
      const again = view.querySelector(`[name="${focused}"]`);
      if (again) again.focus();
    }
    statusLine.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${every() / 1000} s.`;
    statusLine.className = "status";
  } catch (e) {
    statusLine.textContent = `Could not update: ${e.message}`;
    statusLine.className = "status error";
  }
}

// Usage sums the records of a whole period: less often than the live pages.
function every() {
  return PAGE === "usage" ? REFRESH_MS * 6 : REFRESH_MS;
}

async function loop() {
  await refresh();
  setTimeout(loop, every());
}
loop();
