// HTTP calls to memchat, with the API key (asked for once, kept in localStorage) when the
// server needs one.
"use strict";

const KEY_STORE = "memchat.apiKey";

export const apiKey = {
  get: () => localStorage.getItem(KEY_STORE) || "",
  set: (key) => (key ? localStorage.setItem(KEY_STORE, key) : localStorage.removeItem(KEY_STORE)),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let asking = null; // one key prompt at a time, shared by every caller that got a 401

/** Show the key dialog; resolves once the user entered a key. */
export function askForKey(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason || "This server needs an API key.";
  input.value = "";
  asking = new Promise((resolve) => {
    dialog.querySelector("form").onsubmit = (e) => {
      e.preventDefault();
      if (!input.value.trim()) return;
      apiKey.set(input.value.trim());
      dialog.close();
      asking = null;
      resolve();
    };
  });
  dialog.showModal();
  input.focus();
  return asking;
}

/** Call the JSON API; on 401 ask for a key and retry. */
export async function api(path, { method = "GET", body } = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (apiKey.get()) headers.Authorization = `Bearer ${apiKey.get()}`;
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = await res.json().catch(() => ({}));
    if (res.status === 401) {
      await askForKey(data.error ? data.error.message : "This server needs an API key.");
      continue;
    }
    if (!res.ok) {
      const err = data.error || {};
      throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText);
    }
    return data;
  }
}

export const cidPath = (cid) => `/api/conversations/${encodeURIComponent(cid)}`;
