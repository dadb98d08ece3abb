"""The preview page's stylesheet and live-reload script; no external assets."""

from __future__ import annotations

__all__ = ["CSP", "RAW_CSP", "RELOAD_JS", "STYLESHEET"]

#: Our pages: our own script only; the email iframe (srcdoc inherits this policy) may
#: use inline styles and images, as mail clients allow, but never scripts or forms.
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src data: http: https:; base-uri 'none'; form-action 'none'"
)

#: A rendered HTML part opened on its own: a sandboxed, unique-origin document.
RAW_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: http: https:; "
    "base-uri 'none'; form-action 'none'"
)

#: Polls /version and reloads the page when a template or sample event changed.
RELOAD_JS = """\
"use strict";
(() => {
  const root = document.documentElement;
  const shown = root.dataset.version;
  async function poll() {
    try {
      const response = await fetch("/version", {cache: "no-store"});
      const {version} = await response.json();
      root.dataset.live = "on";
      if (version !== shown) {
        location.reload();
        return;
      }
    } catch (err) {
      root.dataset.live = "off";  // the server stopped or is restarting: keep trying
    }
    setTimeout(poll, 1000);
  }
  poll();
})();
"""

STYLESHEET = """\
:root { --bg: #f4f5f7; --card: #fff; --ink: #1f2937; --muted: #6b7280; --line: #e3e6ea;
  --accent: #4338ca; --bad: #b42318; --bad-bg: #fef3f2; --bad-line: #fecdca; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.top { display: flex; align-items: baseline; gap: 16px; padding: 10px 24px;
  background: #111827; color: #9ca3af; font-size: 13px; }
.top .brand { color: #fff; font-weight: 600; font-size: 15px; }
.top .live { margin-left: auto; }
.top .live::before { content: "\\25CF"; color: #9ca3af; margin-right: 6px; }
[data-live="on"] .top .live::before { color: #34d399; }
[data-live="off"] .top .live::before { color: #f59e0b; }
main { max-width: 1680px; margin: 0 auto; padding: 18px 24px 24px; }
h1 { font-size: 20px; margin: 0 0 2px; }
h2 { font-size: 12px; font-weight: 600; letter-spacing: .05em; text-transform: uppercase;
  color: var(--muted); margin: 0 0 8px; }
.muted { color: var(--muted); }
.lead { margin: 0 0 16px; color: var(--muted); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 14px 16px; margin-bottom: 16px; }
.problems { background: var(--bad-bg); border-color: var(--bad-line); }
.problems h2, .bad { color: var(--bad); }
.problems pre { margin: 0; white-space: pre-wrap; word-break: break-word; font-size: 13px; }
.nav { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 28px; padding: 10px 16px; }
.nav .group { display: flex; align-items: center; gap: 10px; }
.nav .label { font-size: 12px; color: var(--muted); }
h2.name { font: 600 15px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  color: var(--ink); text-transform: none; letter-spacing: 0; }
.pills { display: flex; flex-wrap: wrap; gap: 6px; }
.pills a { padding: 2px 11px; border: 1px solid var(--line); border-radius: 999px;
  background: #fff; color: var(--ink); }
.pills a:hover { border-color: var(--accent); text-decoration: none; }
.pills a[aria-current="page"] { background: var(--accent); border-color: var(--accent);
  color: #fff; }
table.matrix { border-collapse: collapse; width: 100%; table-layout: fixed; }
.matrix th, .matrix td { padding: 7px 10px; border-top: 1px solid var(--line);
  text-align: left; vertical-align: top; }
.matrix thead th { border-top: 0; font-size: 12px; font-weight: 600; color: var(--muted); }
.matrix th:first-child { width: 260px; }
.matrix tbody th { font-weight: 500; }
.summary { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
.summary dt { color: var(--muted); }
.summary dd { margin: 0; word-break: break-word; }
.summary .subject { font-size: 17px; font-weight: 600; }
.panes { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 16px; }
.pane { padding: 0; overflow: hidden; margin: 0; }
.pane h2 { display: flex; justify-content: space-between; margin: 0; padding: 9px 16px;
  border-bottom: 1px solid var(--line); }
.pane h2 a { text-transform: none; letter-spacing: 0; font-weight: 500; }
.pane pre.text { margin: 0; padding: 14px 16px; white-space: pre-wrap; word-break: break-word;
  font-size: 13px; line-height: 1.55; overflow: auto; }
/* Both panes fill the window below the summary (the page itself does not scroll). */
.pane pre.text, .pane iframe { height: calc(100vh - 392px); min-height: 420px; }
.pane iframe { display: block; width: 100%; border: 0; background: #fff; }
.pane .none { padding: 14px 16px; margin: 0; }
@media (max-width: 1000px) { .panes { grid-template-columns: 1fr; } }
"""
