// The side panel: the context inspector of a reply, a conversation's memory (summary and stored
// turns, forget one) and its settings. Text goes in through textContent only.
"use strict";

import { button, el, h } from "./dom.js";
import { api, cidPath } from "./api.js";

const day = (t) => new Date(t * 1000).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
const when = (t) => new Date(t * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });

// Per-reply inspection records and timings, kept in this browser (the server keeps the latest).
const RECORD_PREFIX = "memchat.reply.";
const MAX_RECORDS = 400;
export const records = {
  get(cid, seq) {
    try { return JSON.parse(localStorage.getItem(`${RECORD_PREFIX}${cid}.${seq}`) || "null"); }
    catch { return null; }
  },
  put(cid, seq, record) {
    const keys = JSON.parse(localStorage.getItem(`${RECORD_PREFIX}index`) || "[]");
    const key = `${RECORD_PREFIX}${cid}.${seq}`;
    keys.push(key);
    while (keys.length > MAX_RECORDS) localStorage.removeItem(keys.shift());
    try {
      localStorage.setItem(key, JSON.stringify(record));
      localStorage.setItem(`${RECORD_PREFIX}index`, JSON.stringify(keys));
    } catch { /* storage full: the inspector falls back to the server's latest record */ }
  },
};

function show(kind, title) {
  const panel = el("panel");
  panel.hidden = false;
  panel.dataset.kind = kind;
  el("panel-title").textContent = title;
  document.body.classList.add("panel-open");
  const body = el("panel-body");
  body.replaceChildren();
  return body;
}

export function closePanel() {
  el("panel").hidden = true;
  el("panel").dataset.kind = "";
  document.body.classList.remove("panel-open");
}

export const panelShows = (kind) => !el("panel").hidden && el("panel").dataset.kind === kind;

// ---- context inspector ----

/** Show what memory packed into the prompt of reply `seq`, and why. */
export async function openInspector(state, seq, record) {
  const body = show("context", `Context of reply #${seq}`);
  let source = "Recorded when this reply was made.";
  if (!record) {
    const lastReply = [...state.messages].reverse().find((m) => m.role === "assistant");
    if (lastReply && lastReply.seq === seq) {
      try {
        record = (await api(`${cidPath(state.cid)}/context`)).context;
        source = "The server's latest record for this conversation (this browser kept none for the reply).";
      } catch { /* none kept since the server started */ }
    }
  }
  if (!record) {
    body.appendChild(h("p", "muted", "No inspection record of this reply is kept: it was made in another browser, or before the server last started. New replies always have one."));
    return;
  }
  body.appendChild(h("p", "muted", source));
  const totals = h("dl", "totals");
  for (const [k, v] of [["Prompt", `${record.prompt_tokens} tokens`], ["History budget", `${record.budget} tokens`],
    ["History used", `${record.history_tokens} tokens`], ["Built in", `${record.build_ms} ms`]]) {
    totals.append(h("dt", null, k), h("dd", null, v));
  }
  body.appendChild(totals);
  const sections = h("table", "sections");
  const head = h("tr");
  head.append(h("th", null, "Section"), h("th", null, "Tokens"));
  sections.appendChild(head);
  for (const name of ["summary", "recalled", "recent"]) {
    const row = h("tr");
    row.dataset.section = name;
    row.append(h("td", null, name), h("td", "num", String(record.sections[name] ?? 0)));
    sections.appendChild(row);
  }
  body.appendChild(sections);
  await summaryUsed(state, record, body);
  const bySeq = new Map(state.messages.map((m) => [m.seq, m]));
  const recalled = record.turns.filter((t) => t.reason === "recalled");
  const recent = record.turns.filter((t) => t.reason === "recent");
  body.appendChild(turnList("Recalled turns", "ctx-recalled", recalled, bySeq, record.sections.recalled,
    "Older turns memory judged relevant to the message, best first."));
  body.appendChild(turnList("Recent turns", "ctx-recent", recent, bySeq, record.sections.recent,
    "The newest turns, kept verbatim."));
}

async function summaryUsed(state, record, body) {
  const box = h("section", "ctx-summary");
  box.appendChild(h("h3", null, "Summary"));
  if (!record.summary_version) {
    box.appendChild(h("p", "muted", "No summary was used."));
    body.appendChild(box);
    return;
  }
  box.appendChild(h("p", "muted", `Version ${record.summary_version}, covering turns 1–${record.summary_upto}, ${record.sections.summary} tokens.`));
  try {
    const now = await api(`${cidPath(state.cid)}/summary`);
    if (now.version === record.summary_version) box.appendChild(h("blockquote", "summary-text", now.text));
    else box.appendChild(h("p", "muted", `Since replaced by version ${now.version} (see Memory).`));
  } catch { /* the conversation is gone */ }
  body.appendChild(box);
}

function turnList(title, cls, turns, bySeq, tokens, help) {
  const box = h("section", cls);
  box.appendChild(h("h3", null, `${title} (${turns.length}) · ${tokens ?? 0} tokens`));
  box.appendChild(h("p", "muted", help));
  const list = h("ol", "turns");
  for (const t of turns) {
    const li = h("li", "turn");
    li.dataset.seq = t.seq;
    const m = bySeq.get(t.seq);
    const facts = [`#${t.seq}`, t.speaker || t.role, day(t.time)];
    if (t.score !== null && t.score !== undefined) facts.push(`score ${Number(t.score).toFixed(2)}`);
    facts.push(`${t.tokens} tokens`);
    li.appendChild(h("div", "turn-head", facts.join(" · ")));
    li.appendChild(h("div", "turn-text", m ? m.text : "(forgotten since)"));
    list.appendChild(li);
  }
  if (!turns.length) list.appendChild(h("li", "muted", "None."));
  box.appendChild(list);
  return box;
}

// ---- memory: the summary and the stored turns ----

/** Show and edit the conversation's summary; list, search and forget its stored turns. */
export async function openMemory(state) {
  const body = show("memory", "Memory");
  if (!state.cid) {
    body.appendChild(h("p", "muted", "Start the conversation first: memory belongs to a conversation."));
    return;
  }
  const cid = state.cid;
  const [summary, data] = await Promise.all([api(`${cidPath(cid)}/summary`), api(`${cidPath(cid)}/messages`)]);
  body.appendChild(summaryEditor(state, cid, summary));
  const turns = h("section", "memory-turns");
  turns.appendChild(h("h3", null, `Stored turns (${data.messages.length})`));
  const search = h("input", "turn-search");
  search.id = "turn-search";
  search.type = "search";
  search.placeholder = "Search stored turns";
  const list = h("ol", "turns");
  list.id = "turn-list";
  const fill = () => {
    const q = search.value.trim().toLowerCase();
    list.replaceChildren();
    for (const m of data.messages) {
      if (q && !m.text.toLowerCase().includes(q)) continue;
      list.appendChild(storedTurn(state, cid, m));
    }
    if (!list.children.length) list.appendChild(h("li", "muted", q ? "No stored turn matches." : "Nothing stored yet."));
  };
  search.addEventListener("input", fill);
  turns.append(search, list);
  body.appendChild(turns);
  fill();
}

function summaryEditor(state, cid, summary) {
  const box = h("section", "memory-summary");
  box.appendChild(h("h3", null, "Summary"));
  const info = h("p", "muted summary-info");
  const describe = (s) => {
    info.textContent = s.text
      ? `Version ${s.version}${s.covers ? `, covering turns ${s.covers[0]}–${s.covers[1]}` : ""}, ${s.tokens} tokens.`
      : "No summary yet: memchat folds older turns into one as the conversation grows. You can write one.";
  };
  describe(summary);
  const area = h("textarea", "summary-edit");
  area.id = "summary-edit";
  area.rows = 6;
  area.value = summary.text;
  let version = summary.version;
  const save = button("Save summary", "primary", async () => {
    try {
      const saved = await api(`${cidPath(cid)}/summary`, { method: "PUT", body: { text: area.value, version } });
      version = saved.version;
      describe({ ...summary, ...saved, covers: saved.text ? summary.covers : null });
      flash(save, "Saved");
    } catch (e) {
      info.textContent = e.message;
    }
  });
  box.append(info, area, save);
  return box;
}

function storedTurn(state, cid, m) {
  const li = h("li", "turn");
  li.dataset.seq = m.seq;
  li.appendChild(h("div", "turn-head", `#${m.seq} · ${m.speaker || m.role} · ${when(m.time)}${m.status !== "completed" ? ` · ${m.status}` : ""}`));
  li.appendChild(h("div", "turn-text", m.text));
  const forget = button("Forget", "forget danger", async () => {
    if (!forget.classList.contains("confirm")) {
      forget.classList.add("confirm");
      forget.textContent = "Forget for good?";
      return;
    }
    try {
      const done = await api(`${cidPath(cid)}/messages/${m.seq}`, { method: "DELETE" });
      li.remove();
      if (done.summary_cleared) el("status").textContent = "The summary covered that turn, so it was cleared; it is rebuilt from the remaining turns.";
      await state.refresh();
    } catch (e) {
      forget.textContent = e.message;
    }
  });
  li.appendChild(forget);
  return li;
}

function flash(btn, text) {
  const was = btn.textContent;
  btn.textContent = text;
  setTimeout(() => { btn.textContent = was; }, 1200);
}

// ---- settings ----

/** Edit the conversation's system prompt, temperature and reply limit. */
export async function openSettings(state) {
  const body = show("settings", "Settings");
  if (!state.cid) {
    // Settings belong to a stored conversation: start an empty one to hold them.
    const conv = await api("/api/conversations", { method: "POST", body: {} });
    state.cid = conv.id;
    await state.refresh();
    return;
  }
  const cid = state.cid;
  const data = await api(`${cidPath(cid)}/settings`);
  const form = h("form", "settings");
  const d = data.defaults;
  const system = field(form, "System prompt", "textarea", "set-system", data.settings.system_prompt ?? "", d.system_prompt);
  const temp = field(form, "Temperature", "input", "set-temperature", data.settings.temperature ?? "", String(d.temperature));
  Object.assign(temp, { type: "number", step: "0.05", min: data.limits.temperature[0], max: data.limits.temperature[1] });
  const max = field(form, "Max reply tokens", "input", "set-max-tokens", data.settings.max_tokens ?? "", String(d.max_tokens));
  Object.assign(max, { type: "number", step: "1", min: data.limits.max_tokens[0], max: data.limits.max_tokens[1] });
  form.appendChild(h("p", "muted", "Empty fields follow the server's defaults (shown greyed)."));
  const note = h("p", "muted settings-note");
  const save = h("button", "primary", "Save settings");
  save.type = "submit";
  const reset = button("Use server defaults", "", () => { system.value = ""; temp.value = ""; max.value = ""; });
  const row = h("div", "row");
  row.append(save, reset);
  form.append(row, note);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const num = (v, parse) => (v.trim() === "" ? null : parse(v));
    try {
      await api(`${cidPath(cid)}/settings`, { method: "PUT", body: {
        system_prompt: system.value.trim() ? system.value : null,
        temperature: num(temp.value, parseFloat),
        max_tokens: num(max.value, (v) => parseInt(v, 10)),
      } });
      note.textContent = "Saved: the next reply uses these.";
    } catch (err) {
      note.textContent = err.message;
    }
  });
  body.appendChild(form);
}

function field(form, label, tag, id, value, placeholder) {
  const wrap = h("label", "field");
  wrap.appendChild(h("span", null, label));
  const input = h(tag);
  input.id = id;
  input.value = value;
  input.placeholder = placeholder;
  if (tag === "textarea") input.rows = 4;
  wrap.appendChild(input);
  form.appendChild(wrap);
  return input;
}
