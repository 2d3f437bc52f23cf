// Small DOM helpers shared by the page's modules. Text goes in through textContent only.
"use strict";

export const el = (id) => document.getElementById(id);

export const h = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
};

export const button = (text, cls, onClick, title) => {
  const b = h("button", cls, text);
  b.type = "button";
  if (title) b.title = title;
  b.addEventListener("click", onClick);
  return b;
};
