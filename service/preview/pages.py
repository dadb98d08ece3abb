"""The preview's HTML pages, built with an autoescaping Jinja2 environment.

Everything a template or an event produces (subjects, text, HTML, error messages,
file names) is escaped here; the rendered HTML part only ever reaches the browser as
the escaped `srcdoc` of a sandboxed iframe that may not run scripts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from service.preview.assets import STYLESHEET
from service.preview.catalog import Catalog, Preview, Sample

__all__ = ["email_page", "email_url", "index_page", "not_found_page"]

_LAYOUT = """\
<!DOCTYPE html>
<html lang="en" data-version="{{ version }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · Herald preview</title>
<style>{{ stylesheet }}</style>
<script src="/preview.js" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="/">Herald preview</a>
  <span>templates: <code>{{ templates_dir }}</code></span>
  <span>sample events: <code>{{ events_dir }}</code></span>
  <span class="live" title="reloads when a template or sample event changes">live</span>
</header>
<main>
{% block main %}{% endblock %}
</main>
</body>
</html>
"""

_PROBLEMS = """\
{% if problems %}
<section class="card problems">
  <h2>{{ heading }}</h2>
  <pre>{{ problems | join("\n") | forceescape }}</pre>
</section>
{% endif %}
"""

_INDEX = """\
{% extends "layout" %}
{% block main %}
<h1>Templates</h1>
<p class="lead">{{ rows | length }} template(s). Each is rendered with the sample events whose
trigger's flow sends it (all samples when no flow names it), in the default locale
<code>{{ default_locale }}</code> and every locale variant. Pick a cell to see the email.</p>
{% with heading = "Problems" %}{% include "problems" %}{% endwith %}
{% for t in rows %}
<section class="card">
  <h2 class="name" id="{{ t.name }}">{{ t.name }}</h2>
  {% if not t.samples %}<p class="muted">No sample events to render it with.</p>{% else %}
  <table class="matrix">
    <thead>
      <tr><th>sample event</th>{% for l in t.locales %}<th>{{ l }}</th>{% endfor %}</tr>
    </thead>
    <tbody>
    {% for s in t.samples %}
      <tr><th>{{ s.name }}</th>
      {% for c in s.cells %}
        <td><a href="{{ c.url }}"{% if c.error %} class="bad" title="{{ c.error }}"{% endif %}>
          {{- "render error" if c.error else c.subject -}}</a></td>
      {% endfor %}
      </tr>
    {% endfor %}
    </tbody>
  </table>
  {% endif %}
</section>
{% endfor %}
{% endblock %}
"""

_EMAIL = """\
{% extends "layout" %}
{% block main %}
{% macro pill(n) %}<a href="{{ n.url }}"{% if n.current %} aria-current="page"{% endif %}>
  {{- n.label }}</a>{% endmacro %}
<section class="card nav">
  {% for label, key in [("Template", "templates"), ("Locale", "locales"),
                        ("Sample event", "samples")] %}
  <div class="group"><span class="label">{{ label }}</span>
    <nav class="pills">{% for n in nav[key] %}{{ pill(n) }}{% endfor %}</nav></div>
  {% endfor %}
</section>
{% with heading = "Render error", problems = [p.error] if p.error else [] %}
{% include "problems" %}{% endwith %}
{% if p.email %}
<section class="card">
  <dl class="summary">
    <dt>Subject</dt><dd class="subject">{{ p.email.subject }}</dd>
    <dt>From</dt><dd>{{ p.sender }}</dd>
    <dt>To</dt><dd>{{ p.recipient }}</dd>
    <dt>Locale</dt><dd>{{ p.email.locale }}</dd>
    <dt>Files</dt><dd>{% for path in p.files.values() %}
      <code>{{ path }}</code>{{ "," if not loop.last }}
      {% endfor %}</dd>
    <dt>Event</dt><dd><code>{{ p.sample.path }}</code> · trigger
      <code>{{ p.sample.event.trigger.name }}</code> · id <code>{{ p.sample.event.id }}</code></dd>
  </dl>
</section>
<div class="panes">
  <section class="card pane">
    <h2>Text</h2>
    <pre class="text">{{ p.email.text | forceescape }}</pre>
  </section>
  <section class="card pane">
    <h2>HTML {% if p.email.html is not none %}<a href="{{ raw_url }}" target="_blank"
      rel="noopener noreferrer">open alone</a>{% endif %}</h2>
    {% if p.email.html is not none %}
    <iframe sandbox referrerpolicy="no-referrer" title="HTML part"
      srcdoc="{{ p.email.html | forceescape }}"></iframe>
    {% else %}<p class="none muted">No HTML part: this email is text only.</p>{% endif %}
  </section>
</div>
{% endif %}
{% endblock %}
"""

_NOT_FOUND = """\
{% extends "layout" %}
{% block main %}
<h1>Not found</h1>
<p class="lead">{{ message }} <a href="/">All templates</a></p>
{% endblock %}
"""

_ENV = jinja2.Environment(
    loader=jinja2.DictLoader(
        {
            "layout": _LAYOUT,
            "problems": _PROBLEMS,
            "index": _INDEX,
            "email": _EMAIL,
            "not_found": _NOT_FOUND,
        }
    ),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def email_url(template: str, locale: str, sample: str) -> str:
    """The page of one template, locale and sample event."""
    return "/t/" + "/".join(quote(part, safe="") for part in (template, locale, sample))


def index_page(catalog: Catalog) -> str:
    """Every template, locale and sample event, each cell its subject or 'render error'."""
    rows = [_index_row(catalog, name) for name in catalog.templates()]
    return _page("index", catalog, title="Templates", rows=rows)


def email_page(catalog: Catalog, preview: Preview) -> str:
    """One email: subject and headers, then text and HTML side by side."""
    p = preview
    samples = catalog.samples_for(p.template)
    if p.sample not in samples:
        samples = [*samples, p.sample]  # reached by URL: keep it in the nav
    nav = {
        "templates": [_template_link(catalog, t, p) for t in catalog.templates()],
        "locales": [
            _link(catalog, p.template, loc, p.sample, loc, loc == p.locale)
            for loc in catalog.locales(p.template)
        ],
        "samples": [
            _link(catalog, p.template, p.locale, s, s.name, s == p.sample) for s in samples
        ],
    }
    raw_url = email_url(p.template, p.locale, p.sample.name) + "/html"
    title = f"{p.template} · {p.locale} · {p.sample.name}"
    return _page("email", catalog, title=title, p=p, nav=nav, raw_url=raw_url)


def not_found_page(catalog: Catalog, message: str) -> str:
    """A 404 page that still has the header and the live reload."""
    return _page("not_found", catalog, title="Not found", message=message)


def _page(name: str, catalog: Catalog, **context: Any) -> str:
    return _ENV.get_template(name).render(
        version=catalog.version,
        stylesheet=Markup(STYLESHEET),
        templates_dir=str(catalog.renderer.templates_dir),
        events_dir=str(catalog.events_dir),
        default_locale=catalog.renderer.default_locale,
        problems=catalog.problems,
        **context,
    )


def _index_row(catalog: Catalog, template: str) -> dict[str, Any]:
    locales = catalog.locales(template)
    samples = [
        {"name": s.name, "cells": [_cell(catalog, template, loc, s) for loc in locales]}
        for s in catalog.samples_for(template)
    ]
    return {"name": template, "locales": locales, "samples": samples}


def _cell(catalog: Catalog, template: str, locale: str, sample: Sample) -> dict[str, Any]:
    preview = catalog.preview(template, locale, sample)
    subject = preview.email.subject if preview.email else ""
    url = email_url(template, locale, sample.name)
    return {"url": url, "subject": subject or "(empty subject)", "error": preview.error}


def _template_link(catalog: Catalog, template: str, p: Preview) -> dict[str, Any]:
    """Another template, with the same sample event when that one suits it too."""
    samples = catalog.samples_for(template)
    if not samples:
        return {"url": f"/#{quote(template)}", "label": template, "current": False}
    sample = p.sample if p.sample in samples else samples[0]
    return _link(catalog, template, p.locale, sample, template, template == p.template)


def _link(
    catalog: Catalog, template: str, locale: str, sample: Sample, label: str, current: bool
) -> dict[str, Any]:
    """A nav pill; a locale the target template lacks falls back to the default."""
    if locale not in catalog.locales(template):
        locale = catalog.renderer.default_locale
    return {"url": email_url(template, locale, sample.name), "label": label, "current": current}
