// memchat browser client: conversations, streaming chat, stop / regenerate / edit, reconnects.
// Frame names match server/protocol.py. Model and stored text reach the page only through
// textContent (see markdown.js): it can never inject markup or script.
"use strict";

import { button, el, h } from "./dom.js";
import { api, apiKey, askForKey, cidPath } from "./api.js";
import { copyText, renderMarkdown } from "./markdown.js";
import { closePanel, openInspector, openMemory, openSettings, panelShows, records } from "./panels.js";

const FRAMES = {
  CHAT_SEND: "chat.send",
  CHAT_REGENERATE: "chat.regenerate",
  CHAT_EDIT: "chat.edit",
  RESPONSE_CANCEL: "response.cancel",
  CONVERSATION_CREATED: "conversation.created",
  RESPONSE_CREATED: "response.created",
  RESPONSE_DELTA: "response.delta",
  RESPONSE_DONE: "response.done",
  CONTEXT: "context",
  ERROR: "error",
};


export const state = {
  ws: null, connected: false, retry: 500, opened: false,
  cid: null, title: "", messages: [], conversations: [],
  streaming: null, // { id, text, context, el, cid }
  replies: 0, deltas: 0, // replies finished and pieces streamed since the page opened
};
state.refresh = () => openConversation(state.cid);
window.memchat = { state, FRAMES }; // for debugging from the console (and the browser tests)

function setStatus(text, kind = "error") {
  const s = el("status");
  s.textContent = text || "";
  s.dataset.kind = text ? kind : "";
}

// ---- conversations (sidebar) ----

async function loadConversations() {
  const q = el("search").value.trim();
  const data = q ? await api(`/api/search?q=${encodeURIComponent(q)}`) : await api("/api/conversations");
  state.conversations = data.conversations;
  const list = el("conversations");
  list.replaceChildren();
  if (!data.conversations.length) list.appendChild(h("li", "empty", q ? "No conversation matches." : "No conversations yet."));
  for (const c of data.conversations) list.appendChild(conversationItem(c));
}

function conversationItem(c) {
  const li = h("li", c.id === state.cid ? "active" : "");
  li.dataset.id = c.id;
  const open = button("", "open", () => { openConversation(c.id, c.seq); document.body.classList.remove("sidebar-open"); });
  open.appendChild(h("span", "title", c.title || "New conversation"));
  open.appendChild(h("span", "when", c.snippet || new Date(c.updated_at * 1000).toLocaleString()));
  const rename = button("✎", "icon rename", () => startRename(li, c), "Rename");
  const del = button("✕", "icon delete", () => confirmDelete(del, c), "Delete");
  if (pendingDelete === c.id) { del.classList.add("confirm"); del.textContent = "Delete?"; }
  li.append(open, rename, del);
  return li;
}

function startRename(li, c) {
  const input = h("input", "rename-input");
  input.value = c.title;
  input.setAttribute("aria-label", "New title");
  li.replaceChildren(input);
  input.focus();
  input.select();
  const done = async (save) => {
    input.onblur = null;
    if (save && input.value.trim() && input.value.trim() !== c.title) {
      try { await api(cidPath(c.id), { method: "PATCH", body: { title: input.value } }); }
      catch (e) { setStatus(e.message); }
    }
    await loadConversations();
    if (c.id === state.cid) showTitle();
  };
  input.onkeydown = (e) => {
    if (e.key === "Enter") { e.preventDefault(); done(true); }
    if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); done(false); }
  };
  input.onblur = () => done(true);
}

let pendingDelete = null; // the conversation whose delete button asks to confirm

function confirmDelete(btn, c) {
  if (pendingDelete !== c.id) {
    pendingDelete = c.id;
    btn.classList.add("confirm");
    btn.textContent = "Delete?";
    setTimeout(() => {
      if (pendingDelete === c.id) { pendingDelete = null; loadConversations().catch(() => {}); }
    }, 4000);
    return;
  }
  pendingDelete = null;
  api(cidPath(c.id), { method: "DELETE" }).then(async () => {
    if (c.id === state.cid) await openConversation(null);
    else await loadConversations();
  }).catch((e) => setStatus(e.message));
}

function showTitle() {
  const c = state.conversations.find((x) => x.id === state.cid);
  if (c) state.title = c.title;
  el("conv-title").textContent = state.cid ? state.title || "New conversation" : "New conversation";
}

/** Show a conversation as stored (null: a new, empty one). */
export async function openConversation(cid, focusSeq) {
  state.cid = cid;
  history.replaceState(null, "", cid ? `#${cid}` : location.pathname);
  state.messages = [];
  if (cid) {
    const [conv, data] = await Promise.all([api(cidPath(cid)), api(`${cidPath(cid)}/messages`)]);
    state.title = conv.title;
    state.messages = data.messages;
  }
  renderMessages();
  showTitle();
  if (focusSeq) {
    const node = document.querySelector(`.msg[data-seq="${focusSeq}"]`);
    if (node) { node.classList.add("found"); node.scrollIntoView({ block: "center" }); }
  }
  if (panelShows("memory")) openMemory(state);
  else if (panelShows("settings")) openSettings(state);
  else closePanel();
  await loadConversations();
}

// ---- messages ----

function renderMessages() {
  const box = el("messages");
  box.replaceChildren();
  if (!state.messages.length && !state.streaming) {
    const empty = h("div", "empty-chat");
    empty.append(h("h2", null, "What's on your mind?"), h("p", null,
      "memchat remembers this conversation: open Memory to see and edit what it keeps, " +
      "and Context under any reply to see what it recalled, and why."));
    box.appendChild(empty);
    return;
  }
  const lastAssistant = [...state.messages].reverse().find((m) => m.role === "assistant");
  const last = state.messages[state.messages.length - 1];
  for (const m of state.messages) box.appendChild(messageEl(m, m === lastAssistant && m === last, m === last));
  if (state.streaming) box.appendChild(state.streaming.el);
  box.scrollTop = box.scrollHeight;
}

function messageEl(m, isLastReply, isLast) {
  const node = h("article", `msg ${m.role}`);
  node.dataset.seq = m.seq;
  node.dataset.role = m.role;
  const body = h("div", "body");
  if (m.role === "assistant") body.appendChild(renderMarkdown(m.text));
  else body.textContent = m.text;
  node.appendChild(body);
  const meta = h("div", "meta");
  const rec = records.get(state.cid, m.seq);
  if (m.status && m.status !== "completed") meta.appendChild(h("span", `badge ${m.status}`, statusText(m.status)));
  if (m.role === "assistant" && rec && rec.timings) meta.appendChild(timingEl(rec.timings, rec.usage));
  node.appendChild(meta);
  const actions = h("div", "actions");
  actions.appendChild(button("Copy", "copy", (e) => copyText(m.text, e.currentTarget)));
  if (m.role === "user") actions.appendChild(button("Edit", "edit", () => startEdit(node, m)));
  if (m.role === "assistant") {
    actions.appendChild(button("Context", "inspect", () => openInspector(state, m.seq, rec && rec.context)));
    if (isLastReply) actions.appendChild(button("Regenerate", "regenerate", regenerate));
  }
  if (m.role === "user" && isLast) actions.appendChild(button("Answer", "regenerate", regenerate, "Ask for a reply to this message"));
  node.appendChild(actions);
  return node;
}

const statusText = (s) => ({ cancelled: "stopped", interrupted: "interrupted (connection lost)", length: "cut at the reply limit", error: "failed" }[s] || s);

function timingEl(t, usage) {
  const parts = [`first token ${Math.round(t.ttft_ms)} ms`, `${Number(t.tokens_per_s).toFixed(1)} tokens/s`];
  if (usage) parts.push(`${usage.completion_tokens} tokens`);
  return h("span", "timings", parts.join(" · "));
}

function startEdit(node, m) {
  if (state.streaming) return;
  const area = h("textarea", "edit-input");
  area.value = m.text;
  const send = button("Save & send", "primary", () => {
    const text = area.value;
    if (!text.trim()) return;
    state.messages = state.messages.filter((x) => x.seq < m.seq).concat([{ ...m, text }]);
    startReply({ type: FRAMES.CHAT_EDIT, conversation_id: state.cid, seq: m.seq, text });
  });
  const cancel = button("Cancel", "", () => renderMessages());
  area.onkeydown = (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send.click(); }
    if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); renderMessages(); }
  };
  const row = h("div", "edit-actions");
  row.append(send, cancel);
  node.replaceChildren(area, row);
  area.focus();
}

function regenerate() {
  if (state.streaming || !state.cid) return;
  const last = state.messages[state.messages.length - 1];
  if (last && last.role === "assistant") state.messages = state.messages.slice(0, -1);
  startReply({ type: FRAMES.CHAT_REGENERATE, conversation_id: state.cid });
}

function send() {
  const text = el("input").value;
  if (!text.trim() || state.streaming) return;
  if (!state.connected) { setStatus("Not connected yet; your message is still in the box."); return; }
  el("input").value = "";
  state.messages = state.messages.concat([{ seq: null, role: "user", text, status: "completed" }]);
  const frame = { type: FRAMES.CHAT_SEND, text };
  if (state.cid) frame.conversation_id = state.cid;
  startReply(frame);
}

function startReply(frame) {
  setStatus("");
  const node = h("article", "msg assistant streaming");
  node.append(h("div", "body"), h("div", "meta"));
  node.querySelector(".meta").appendChild(h("span", "badge thinking", "thinking…"));
  state.streaming = { id: null, text: "", context: null, el: node, cid: state.cid, frame };
  setStreaming(true);
  renderMessages();
  state.ws.send(JSON.stringify(frame));
}

function setStreaming(on) {
  el("send").hidden = on;
  el("stop").hidden = !on;
  document.body.classList.toggle("is-streaming", on);
}

function stop() {
  const s = state.streaming;
  if (s && state.ws && state.connected) {
    const frame = { type: FRAMES.RESPONSE_CANCEL };
    if (s.id) frame.response_id = s.id;
    state.ws.send(JSON.stringify(frame));
  }
}

let paintQueued = false;
function paintStream() {
  if (paintQueued) return;
  paintQueued = true;
  requestAnimationFrame(() => {
    paintQueued = false;
    const s = state.streaming;
    if (!s) return;
    s.el.querySelector(".body").replaceChildren(renderMarkdown(s.text));
    const box = el("messages");
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 120) box.scrollTop = box.scrollHeight;
  });
}

async function finishReply(frame) {
  const s = state.streaming;
  state.streaming = null;
  setStreaming(false);
  if (frame && frame.message_seq != null && s.cid) {
    records.put(s.cid, frame.message_seq, { context: s.context, timings: frame.timings, usage: frame.usage });
  }
  if (s.cid && s.cid === state.cid) await openConversation(state.cid);
  else renderMessages();
  state.replies++;
}

function onFrame(frame) {
  const s = state.streaming;
  switch (frame.type) {
    case FRAMES.CONVERSATION_CREATED:
      if (s) s.cid = frame.conversation_id;
      state.cid = frame.conversation_id;
      loadConversations().then(showTitle);
      break;
    case FRAMES.RESPONSE_CREATED:
      if (s) { s.id = frame.response_id; s.cid = frame.conversation_id; }
      break;
    case FRAMES.CONTEXT:
      if (s) s.context = frame.context;
      break;
    case FRAMES.RESPONSE_DELTA:
      if (s && frame.response_id === s.id) {
        if (!s.text) s.el.querySelector(".meta").replaceChildren();
        s.text += frame.delta;
        state.deltas++;
        paintStream();
      }
      break;
    case FRAMES.RESPONSE_DONE:
      if (frame.error) setStatus(`The reply failed: ${frame.error.message}`);
      if (s) finishReply(frame).catch((e) => setStatus(e.message));
      break;
    case FRAMES.ERROR:
      setStatus(frame.message);
      if (s && (!frame.response_id || frame.response_id === s.id) && frame.code !== "nothing_to_cancel") {
        finishReply(null).catch((e) => setStatus(e.message));
      }
      break;
  }
}

// ---- the websocket: reconnects, and shows the conversation as stored afterwards ----

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const protocols = apiKey.get() ? ["memchat", `bearer.${apiKey.get()}`] : ["memchat"];
  const ws = new WebSocket(url, protocols);
  let opened = false;
  ws.onopen = () => {
    opened = true;
    state.connected = true;
    state.retry = 500;
    document.body.classList.remove("offline");
    if (el("status").dataset.kind === "offline") setStatus("");
  };
  ws.onmessage = (ev) => onFrame(JSON.parse(ev.data));
  ws.onclose = () => {
    state.connected = false;
    document.body.classList.add("offline");
    if (state.streaming) {
      const s = state.streaming;
      state.streaming = null;
      setStreaming(false);
      setStatus("The connection dropped during a reply: it was interrupted and stored as far as it got. Reconnecting…", "warning");
      state.interrupted = s.cid;
    } else if (!el("status").textContent) {
      setStatus("Connection lost. Reconnecting…", "offline");
    }
    setTimeout(() => reconnect(opened), state.retry);
    state.retry = Math.min(state.retry * 2, 8000);
  };
  state.ws = ws;
}

async function reconnect(wasOpen) {
  if (!wasOpen) {
    // A refused handshake may mean a missing key: ask the HTTP API, which says so (401).
    try { await api("/api/conversations"); } catch { /* shown on the next try */ }
  }
  connect();
  const cid = state.interrupted;
  state.interrupted = null;
  if (cid && cid === state.cid) await showInterrupted(cid);
}

/** Show the conversation as stored once the interrupted reply is (the server stores it as
 * soon as generation stops, which can be a moment after the socket dropped). */
async function showInterrupted(cid) {
  for (let i = 0; i < 20 && cid === state.cid; i++) {
    await openConversation(cid).catch(() => {});
    const last = state.messages[state.messages.length - 1];
    if (!last || last.role === "assistant") return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

// ---- theme, keyboard, start ----

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  el("theme").textContent = theme === "dark" ? "☀" : "☾";
  el("theme").title = theme === "dark" ? "Light theme" : "Dark theme";
}

function start() {
  const saved = localStorage.getItem("memchat.theme");
  applyTheme(saved || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
  el("theme").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem("memchat.theme", next);
    applyTheme(next);
  });
  el("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  el("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    if (state.streaming) { e.preventDefault(); stop(); }
    else if (!el("key-dialog").open) closePanel();
  });
  el("stop").addEventListener("click", stop);
  el("panel-close").addEventListener("click", closePanel);
  el("new-chat").addEventListener("click", () => { openConversation(null); el("input").focus(); });
  el("menu").addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
  el("open-memory").addEventListener("click", () => openMemory(state));
  el("open-settings").addEventListener("click", () => openSettings(state));
  el("key-change").addEventListener("click", () => askForKey("Enter the API key to use.").then(() => location.reload()));
  let timer = null;
  el("search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => loadConversations().catch((e) => setStatus(e.message)), 200);
  });
  window.addEventListener("hashchange", () => {
    const want = location.hash.slice(1) || null;
    if (want !== state.cid && !state.streaming) openConversation(want).catch((e) => setStatus(e.message));
  });
  const linked = location.hash.slice(1);
  (linked ? openConversation(linked) : loadConversations())
    .catch((e) => { setStatus(e.message); return openConversation(null).catch(() => {}); })
    .finally(connect);
  renderMessages();
}

start();
