// memchat browser client. Frame names match server/protocol.py.
// All text goes through textContent: model output can never inject markup.
"use strict";

const FRAMES = {
  CHAT_SEND: "chat.send",
  RESPONSE_CANCEL: "response.cancel",
  CONVERSATION_CREATED: "conversation.created",
  RESPONSE_CREATED: "response.created",
  RESPONSE_DELTA: "response.delta",
  RESPONSE_DONE: "response.done",
  CONTEXT: "context",
  ERROR: "error",
};

const el = (id) => document.getElementById(id);
const state = { ws: null, conversationId: null, streaming: null, retry: 500 };

function setStatus(text) { el("status").textContent = text || ""; }

function addMessage(role, text, meta) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  div.appendChild(body);
  if (meta) {
    const m = document.createElement("span");
    m.className = "meta";
    m.textContent = meta;
    div.appendChild(m);
  }
  el("messages").appendChild(div);
  el("messages").scrollTop = el("messages").scrollHeight;
  return div;
}

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
  return body;
}

async function loadConversations() {
  const { conversations } = await api("/api/conversations");
  const list = el("conversations");
  list.replaceChildren();
  for (const c of conversations) {
    const li = document.createElement("li");
    li.textContent = c.title || "New conversation";
    li.dataset.id = c.id;
    li.className = c.id === state.conversationId ? "active" : "";
    li.onclick = () => openConversation(c.id);
    list.appendChild(li);
  }
}

async function openConversation(id) {
  state.conversationId = id;
  el("messages").replaceChildren();
  if (id) {
    const { messages } = await api(`/api/conversations/${encodeURIComponent(id)}/messages`);
    for (const m of messages) {
      const note = m.status !== "completed" && m.role === "assistant" ? `(${m.status})` : "";
      addMessage(m.role, m.text, note);
    }
  }
  await loadConversations();
}

function setStreaming(reply) {
  state.streaming = reply;
  el("send").hidden = !!reply;
  el("stop").hidden = !reply;
}

function onFrame(frame) {
  const reply = state.streaming;
  switch (frame.type) {
    case FRAMES.CONVERSATION_CREATED:
      state.conversationId = frame.conversation_id;
      loadConversations();
      break;
    case FRAMES.RESPONSE_CREATED:
      if (reply) reply.id = frame.response_id;
      break;
    case FRAMES.RESPONSE_DELTA:
      if (reply) {
        reply.text += frame.delta;
        reply.div.querySelector(".body").textContent = reply.text;
        el("messages").scrollTop = el("messages").scrollHeight;
      }
      break;
    case FRAMES.RESPONSE_DONE:
      if (reply) {
        const t = frame.timings;
        const meta = document.createElement("span");
        meta.className = "meta";
        meta.textContent = `${frame.status} · first token ${t.ttft_ms} ms · ${t.tokens_per_s} tokens/s`;
        reply.div.appendChild(meta);
      }
      setStreaming(null);
      loadConversations();
      break;
    case FRAMES.ERROR:
      setStatus(`${frame.code}: ${frame.message}`);
      if (reply && (!frame.response_id || frame.response_id === reply.id)) {
        if (!reply.text) reply.div.remove();
        setStreaming(null);
      }
      break;
  }
}

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onopen = () => { state.retry = 500; setStatus(""); };
  ws.onmessage = (ev) => onFrame(JSON.parse(ev.data));
  ws.onclose = () => {
    if (state.streaming) {
      setStatus("Connection lost during a reply; it was stored as interrupted. Reconnecting…");
      setStreaming(null);
      openConversation(state.conversationId);
    } else {
      setStatus("Reconnecting…");
    }
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 8000);
  };
  state.ws = ws;
}

function send() {
  const text = el("input").value;
  if (!text.trim() || state.streaming || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  el("input").value = "";
  setStatus("");
  addMessage("user", text);
  setStreaming({ id: null, text: "", div: addMessage("assistant", "") });
  const frame = { type: FRAMES.CHAT_SEND, text };
  if (state.conversationId) frame.conversation_id = state.conversationId;
  state.ws.send(JSON.stringify(frame));
}

function stop() {
  if (state.streaming && state.ws) {
    state.ws.send(JSON.stringify({ type: FRAMES.RESPONSE_CANCEL, response_id: state.streaming.id }));
  }
}

el("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
el("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
  if (e.key === "Escape") stop();
});
el("stop").addEventListener("click", stop);
el("new-chat").addEventListener("click", () => openConversation(null));
connect();
loadConversations().catch((e) => setStatus(e.message));
