// A small, safe Markdown renderer: it builds DOM nodes and sets only textContent, never
// innerHTML, so model output and stored text can never inject markup or script.
// Supports fenced code (highlighted, with a copy button), headings, lists, quotes, rules,
// paragraphs, and inline code, bold, italic, strikethrough and http(s)/mailto links.
"use strict";

import { h } from "./dom.js";

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;
const SAFE_URL = /^(https?:\/\/|mailto:)/i;

/** Render Markdown text into a DocumentFragment. */
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) { i++; continue; }
    if ((m = FENCE.exec(line))) { i = fence(lines, i, m, out); continue; }
    if ((m = HEADING.exec(line))) { out.appendChild(inline(h("h" + Math.min(m[1].length + 2, 6)), m[2])); i++; continue; }
    if (RULE.test(line)) { out.appendChild(h("hr")); i++; continue; }
    if (QUOTE.test(line)) { i = quote(lines, i, out); continue; }
    if (ITEM.test(line)) { i = list(lines, i, out); continue; }
    i = paragraph(lines, i, out);
  }
  return out;
}

function startsBlock(line) {
  return !line.trim() || FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function fence(lines, i, m, out) {
  const marker = m[1];
  const body = [];
  let j = i + 1;
  while (j < lines.length && !lines[j].trim().startsWith(marker)) body.push(lines[j++]);
  out.appendChild(codeBlock(body.join("\n"), m[2]));
  return j + 1; // an unterminated fence (still streaming) runs to the end
}

function quote(lines, i, out) {
  const body = [];
  let m;
  while (i < lines.length && (m = QUOTE.exec(lines[i]))) { body.push(m[1]); i++; }
  const q = h("blockquote");
  q.appendChild(renderMarkdown(body.join("\n")));
  out.appendChild(q);
  return i;
}

function list(lines, i, out) {
  const ordered = /\d/.test(ITEM.exec(lines[i])[1]);
  const node = h(ordered ? "ol" : "ul");
  if (ordered) node.start = parseInt(ITEM.exec(lines[i])[1], 10) || 1;
  let m;
  while (i < lines.length && (m = ITEM.exec(lines[i]))) {
    const parts = [m[2]];
    i++;
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) parts.push(lines[i++].trim());
    node.appendChild(inline(h("li"), parts.join(" ")));
  }
  out.appendChild(node);
  return i;
}

function paragraph(lines, i, out) {
  const p = h("p");
  let first = true;
  while (i < lines.length && !(first ? false : startsBlock(lines[i]))) {
    if (!first) p.appendChild(h("br"));
    inline(p, lines[i].trim());
    first = false;
    i++;
  }
  out.appendChild(p);
  return i;
}

// Inline spans, earliest match first; the text inside bold, italic and links is parsed again.
const INLINE = [
  { re: /`([^`\n]+)`/, make: (m) => h("code", null, m[1]) },
  { re: /\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__/, make: (m) => inline(h("strong"), m[1] ?? m[2]) },
  { re: /~~(?=\S)([\s\S]*?\S)~~/, make: (m) => inline(h("del"), m[1]) },
  { re: /\*(?=\S)([^*\n]*?\S)\*|(?<![\w])_(?=\S)([^_\n]*?\S)_(?![\w])/, make: (m) => inline(h("em"), m[1] ?? m[2]) },
  { re: /\[([^\]\n]+)\]\(([^)\s]+)\)/, make: (m) => link(m[1], m[2]) },
  { re: /\bhttps?:\/\/[^\s<>()]+[^\s<>().,;:!?'"]/, make: (m) => link(m[0], m[0]) },
];

function inline(parent, text) {
  while (text) {
    let best = null;
    for (const rule of INLINE) {
      const m = rule.re.exec(text);
      if (m && (best === null || m.index < best.m.index)) best = { m, rule };
    }
    if (best === null) { parent.appendChild(document.createTextNode(text)); break; }
    if (best.m.index) parent.appendChild(document.createTextNode(text.slice(0, best.m.index)));
    parent.appendChild(best.rule.make(best.m));
    text = text.slice(best.m.index + best.m[0].length);
  }
  return parent;
}

function link(label, url) {
  if (!SAFE_URL.test(url)) return document.createTextNode(label === url ? url : `${label} (${url})`);
  const a = inline(h("a"), label);
  a.href = url;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  return a;
}

/** A highlighted code block with its language and a copy button. */
export function codeBlock(code, lang) {
  const wrap = h("div", "code-block");
  const bar = h("div", "code-bar");
  bar.appendChild(h("span", "code-lang", lang || "text"));
  const copy = h("button", "copy-code", "Copy");
  copy.type = "button";
  copy.addEventListener("click", () => copyText(code, copy));
  bar.appendChild(copy);
  const pre = h("pre");
  const el = h("code");
  highlight(el, code, lang);
  pre.appendChild(el);
  wrap.append(bar, pre);
  return wrap;
}

/** Copy text to the clipboard and say so on the button. */
export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = h("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const was = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = was; }, 1200);
}

const KEYWORDS = new Set((
  "abstract and as async await break case catch class const continue def default del do elif else " +
  "enum except export extends false final finally fn for from func function go if impl import in " +
  "interface is lambda let match mod mut new nil none not null or package pass private protected " +
  "pub public raise return self static struct super switch this throw true try type typeof use var " +
  "void while with yield True False None int float str bool string char long double echo fi then done"
).split(" "));
const TOKEN = /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/|--[^\n]*)|("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|(\b\d[\d_.]*(?:e[+-]?\d+)?\b|\b0x[\da-f]+\b)|([A-Za-z_$][\w$]*)/gi;
const HASH_COMMENTS = /^(py|python|sh|bash|shell|zsh|rb|ruby|r|yaml|yml|toml|conf|ini|perl|pl|make|makefile|dockerfile)$/i;
const DASH_COMMENTS = /^(sql|lua|haskell|hs)$/i;

/** Fill `el` with spans for comments, strings, numbers and keywords (textContent only). */
export function highlight(el, code, lang) {
  let last = 0;
  for (const m of code.matchAll(TOKEN)) {
    let cls = null;
    if (m[1]) {
      const hash = m[1].startsWith("#"), dash = m[1].startsWith("--");
      if ((hash && HASH_COMMENTS.test(lang || "")) || (dash && DASH_COMMENTS.test(lang || "")) || (!hash && !dash)) cls = "tok-comment";
    } else if (m[2]) cls = "tok-string";
    else if (m[3]) cls = "tok-number";
    else if (m[4] && KEYWORDS.has(m[4])) cls = "tok-keyword";
    if (!cls) continue;
    if (m.index > last) el.appendChild(document.createTextNode(code.slice(last, m.index)));
    el.appendChild(h("span", cls, m[0]));
    last = m.index + m[0].length;
  }
  if (last < code.length) el.appendChild(document.createTextNode(code.slice(last)));
}
