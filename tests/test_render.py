"""Template rendering: locales, escaping, the sandbox, template checks and the compile cache."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from service.checks.templates import template_problems
from service.mail import render
from service.mail.render import Renderer, TemplateError, candidate_locales, format_datetime
from service.triggers import TRIGGERS

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
EVENTS = sorted((ROOT / "examples" / "events").glob("*.json"))
SHIPPED = ["login_alert", "password_changed", "password_reset", "verify_email", "welcome"]


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8"))


def context(event: dict[str, Any]) -> dict[str, Any]:
    """What the send_email action hands to templates."""
    secrets = {"SUPPORT_URL": "https://example.com/support"}
    return {"event": event, "user": event["data"]["user"], "secrets": secrets, "data": {}}


def event_for(**user: Any) -> dict[str, Any]:
    event = load(ROOT / "examples" / "events" / "password-reset-requested.json")
    event["data"]["user"].update(user)
    return event


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES, default_locale="en")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source, "utf-8")
    return root


# -- locale resolution ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("de-AT", ["de-AT", "de", "en"]),
        ("pt_BR", ["pt-BR", "pt", "en"]),
        ("DE-at", ["de-AT", "de", "en"]),
        ("zh-hant-tw", ["zh-Hant-TW", "zh-Hant", "zh", "en"]),
        ("de", ["de", "en"]),
        ("en-GB", ["en-GB", "en"]),
        ("en", ["en"]),
        (None, ["en"]),
        ("", ["en"]),
        ("   ", ["en"]),
        ("../etc", ["en"]),
        ("../../etc/passwd", ["en"]),
        ("de/../../x", ["en"]),
        ("de-AT\r\nBcc: x", ["en"]),
        ("d", ["en"]),
        ("de-" + "a" * 40, ["en"]),
        ("de-DE,de;q=0.9", ["en"]),
    ],
)
def test_candidate_locales(locale: str | None, expected: list[str]) -> None:
    assert candidate_locales(locale, "en") == expected


def test_regional_locale_uses_language_variant(renderer: Renderer) -> None:
    event = load(ROOT / "examples" / "events" / "post-change-password.json")
    rendered = renderer.render("password_changed", "de-AT", context(event))
    assert rendered.locale == "de"
    assert rendered.subject == "Ihr Passwort wurde geändert"
    assert "Passwort" in rendered.text
    assert rendered.html is not None and '<html lang="de"' in rendered.html


def test_partial_override_falls_back_file_by_file(renderer: Renderer) -> None:
    ctx = context(load(ROOT / "examples" / "events" / "post-user-registration.json"))
    french = renderer.render("welcome", "fr-CA", ctx)
    english = renderer.render("welcome", "en", ctx)
    assert french.locale == "fr"
    assert french.subject == "Bienvenue sur Example App"
    assert english.subject == "Welcome to Example App"
    assert (french.text, french.html) == (english.text, english.html)


@pytest.mark.parametrize("locale", ["ja", "pt-BR", None, "", "../de", "zz-ZZ"])
def test_unknown_locale_uses_default(renderer: Renderer, locale: str | None) -> None:
    ctx = context(load(ROOT / "examples" / "events" / "post-change-password.json"))
    rendered = renderer.render("password_changed", locale, ctx)
    assert rendered.locale == "en"
    assert rendered.subject == "Your password was changed"


def test_variant_directories_match_case_insensitively(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"t/subject.txt.j2": "base", "t/text.txt.j2": "text", "t/pt_br/subject.txt.j2": "brasil"},
    )
    rendered = Renderer(tmp_path).render("t", "PT-br", {})
    assert (rendered.subject, rendered.locale, rendered.html) == ("brasil", "pt-BR", None)


@pytest.mark.parametrize("name", ["../templates/welcome", "welcome/de", "_layout", "", ".."])
def test_template_names_cannot_leave_the_directory(renderer: Renderer, name: str) -> None:
    with pytest.raises(TemplateError):
        renderer.render(name, "en", context(event_for()))


def test_unknown_template(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match="unknown template 'nope'"):
        renderer.render("nope", "en", context(event_for()))


def test_names_and_locales(renderer: Renderer) -> None:
    assert renderer.names() == SHIPPED
    assert renderer.locales("welcome") == ["de", "fr"]
    assert all("de" in renderer.locales(name) for name in SHIPPED)


# -- the shipped templates ---------------------------------------------------------------


def test_one_sample_event_per_trigger() -> None:
    events = {path.stem: load(path) for path in EVENTS}
    assert set(events) == set(TRIGGERS)
    for trigger, event in events.items():
        assert event["type"] == TRIGGERS[trigger].event_type
        assert event["specversion"] == "1.0" and event["id"].startswith("evt-demo-")
        assert event["data"]["user"]["user_id"] == event["subject"]
    assert len({event["id"] for event in events.values()}) == len(events)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("path", EVENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("locale", ["event", "de", "fr", "en"])
def test_every_template_renders_every_event(
    renderer: Renderer, name: str, path: Path, locale: str
) -> None:
    event = load(path)
    chosen = event["data"]["user"]["locale"] if locale == "event" else locale
    rendered = renderer.render(name, chosen, context(event))
    assert rendered.subject and "\n" not in rendered.subject and "\r" not in rendered.subject
    assert rendered.text.strip() and "<" not in rendered.text
    assert rendered.html and rendered.html.lstrip().startswith("<!DOCTYPE html>")
    assert f'<html lang="{"de" if rendered.locale == "de" else "en"}"' in rendered.html
    assert "{{" not in rendered.text + rendered.html and "{%" not in rendered.html


@pytest.mark.parametrize("name", SHIPPED)
def test_renders_with_a_bare_event(renderer: Renderer, name: str) -> None:
    """Only the required fields: every optional one renders as nothing, not an error."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e",
        "source": "s",
        "type": "t",
        "data": {"user": {"user_id": "u"}},
    }
    for locale in ("en", "de"):
        rendered = renderer.render(name, locale, {"event": event, "user": event["data"]["user"]})
        assert rendered.subject and rendered.text.strip() and rendered.html
        assert "None" not in rendered.text


def test_link_and_expiry_in_text_and_html(renderer: Renderer) -> None:
    event = event_for()
    rendered = renderer.render("password_reset", "en", context(event))
    assert f"\n{event['data']['link']}\n" in rendered.text  # on its own line
    assert "2036-11-26 11:40 UTC" in rendered.text
    assert rendered.html is not None and f'href="{event["data"]["link"]}"' in rendered.html


def test_non_http_links_are_dropped(renderer: Renderer) -> None:
    event = event_for()
    event["data"]["link"] = "javascript:alert(1)"
    rendered = renderer.render("password_reset", "en", context(event))
    assert "javascript" not in rendered.text + (rendered.html or "")


# -- event data is data --------------------------------------------------------------------


def test_markup_in_names_is_escaped_in_html_only(renderer: Renderer) -> None:
    name = '<script>alert("x")</script>'
    for template in SHIPPED:
        rendered = renderer.render(template, "en", context(event_for(given_name=name)))
        assert name in rendered.text
        assert rendered.html is not None and "<script" not in rendered.html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in rendered.html


def test_template_syntax_in_data_renders_literally(renderer: Renderer) -> None:
    rendered = renderer.render("welcome", "en", context(event_for(given_name="{{ 7*7 }}")))
    assert "Hi {{ 7*7 }}," in rendered.text
    assert rendered.html is not None and "{{ 7*7 }}" in rendered.html
    assert "49" not in rendered.text


def test_subject_is_one_line(tmp_path: Path, renderer: Renderer) -> None:
    write(
        tmp_path,
        {"t/subject.txt.j2": "Hello {{ user.name }}\n\n", "t/text.txt.j2": "{{ user.name }}\n"},
    )
    ctx = {"user": {"name": "Ada\r\nBcc: evil@example.com\n\tX-Hdr:\x00 y"}}
    rendered = Renderer(tmp_path).render("t", None, ctx)
    assert rendered.subject == "Hello Ada Bcc: evil@example.com X-Hdr: y"
    assert rendered.text == ctx["user"]["name"] + "\n"  # the body keeps what it was given

    event = load(ROOT / "examples" / "events" / "post-user-registration.json")
    event["data"]["client"]["name"] = "App\r\nBcc: evil@example.com"
    shipped = renderer.render("welcome", "en", context(event))
    assert shipped.subject == "Welcome to App Bcc: evil@example.com"


def test_sandbox_blocks_python_internals(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "t/subject.txt.j2": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "t/text.txt.j2": "x",
        },
    )
    with pytest.raises(TemplateError, match=r"subject\.txt\.j2:1: .*unsafe"):
        Renderer(tmp_path).render("t", None, {})


def test_sandbox_forbids_mutating_event_data(tmp_path: Path) -> None:
    write(tmp_path, {"t/subject.txt.j2": "{{ user.update({'email': 'x'}) }}", "t/text.txt.j2": "x"})
    user = {"email": "ada@example.com"}
    with pytest.raises(TemplateError):
        Renderer(tmp_path).render("t", None, {"user": user})
    assert user == {"email": "ada@example.com"}


def test_render_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {"t/subject.txt.j2": "ok", "t/text.txt.j2": "a\nb\n{{ 10 // data.zero }}\n"})
    with pytest.raises(TemplateError) as info:
        Renderer(tmp_path).render("t", None, {"data": {"zero": 0}})
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 't' / 'text.txt.j2'}:3: ZeroDivisionError")
    assert "\n" not in message


# -- template_problems() --------------------------------------------------------------------


def test_shipped_templates_check_clean(renderer: Renderer) -> None:
    assert template_problems(renderer) == []


def test_check_reports_path_and_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "good/subject.txt.j2": "Hi",
            "good/text.txt.j2": "Hi\n",
            "broken/subject.txt.j2": "Hi",
            "broken/text.txt.j2": "Hi\n{% if user.name %}\n",
            "filter/subject.txt.j2": "{{ user.name | nosuchfilter }}",
            "filter/text.txt.j2": "x",
            "nosubject/text.txt.j2": "x",
            "typo/subject.txt.j2": "x",
            "typo/text.txt.j2": "x",
            "typo/de/subjcet.txt.j2": "x",
            "layout/subject.txt.j2": "x",
            "layout/text.txt.j2": "x",
            "layout/html.html.j2": 'x\n{% extends "_layout/missing.html.j2" %}',
            "mixed/subject.txt.j2": "x",
            "mixed/text.txt.j2": "x",
            "mixed/html.html.j2": '{% from "_m.txt.j2" import m %}{{ m() }}',
            "_m.txt.j2": "",
        },
    )
    problems = template_problems(Renderer(tmp_path))
    expected = [
        f"{tmp_path / 'broken' / 'text.txt.j2'}:2: Unexpected end of template",
        f"{tmp_path / 'filter' / 'subject.txt.j2'}:1: No filter named 'nosuchfilter'",
        f"{tmp_path / 'nosubject' / 'subject.txt.j2'}:1: required template file is missing",
        f"{tmp_path / 'typo' / 'de' / 'subjcet.txt.j2'}:1: unknown file",
        f"{tmp_path / 'layout' / 'html.html.j2'}:2: template '_layout/missing.html.j2' not found",
        f"{tmp_path / 'mixed' / 'html.html.j2'}:1: HTML template uses non-HTML template",
    ]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert len(problems) == len(expected)
    assert not any("good" in p for p in problems)


def test_check_missing_directory(tmp_path: Path) -> None:
    assert template_problems(Renderer(tmp_path / "nope")) == [
        f"{tmp_path / 'nope'}:1: templates directory not found"
    ]


# -- compile once ---------------------------------------------------------------------------


def test_each_file_compiles_once_until_reload(tmp_path: Path) -> None:
    write(tmp_path, {"t/subject.txt.j2": "v1", "t/text.txt.j2": "x"})
    renderer = Renderer(tmp_path)
    loads: list[str] = []
    get_source = renderer.env.loader.get_source  # type: ignore[union-attr]

    def counting(env: Any, name: str) -> Any:
        loads.append(name)
        return get_source(env, name)

    renderer.env.loader.get_source = counting  # type: ignore[union-attr, method-assign]
    first = renderer.env.get_template("t/subject.txt.j2")
    for _ in range(3):
        assert renderer.render("t", "de", {}).subject == "v1"
    assert renderer.env.get_template("t/subject.txt.j2") is first
    assert sorted(loads) == ["t/subject.txt.j2", "t/text.txt.j2"]

    (tmp_path / "t" / "subject.txt.j2").write_text("v2")
    assert renderer.render("t", None, {}).subject == "v1"  # no reload: the cached copy
    (tmp_path / "t" / "de").mkdir()
    (tmp_path / "t" / "de" / "subject.txt.j2").write_text("de")
    assert renderer.render("t", "de", {}).locale == "en"  # directory listing cached, too
    renderer.reload()
    assert renderer.render("t", None, {}).subject == "v2"
    assert renderer.render("t", "de", {}).subject == "de"


def test_many_locales_do_not_grow_the_cache(renderer: Renderer) -> None:
    ctx = context(event_for())
    for i in range(200):
        renderer.render("password_reset", f"x{i:03d}-ZZ", ctx)
    assert len(renderer._files) < 20


def test_many_locales_do_not_grow_the_resolution_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "_RESOLVED_MAX", 50)
    renderer = Renderer(TEMPLATES)
    ctx = context(event_for())
    for i in range(200):
        assert renderer.render("password_reset", f"x{i:03d}-ZZ", ctx).locale == "en"
    assert len(renderer._resolved) <= 50
    assert renderer.render("password_reset", "de-AT", ctx).locale == "de"


def test_rendering_checks_no_files_once_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, {"t/subject.txt.j2": "s", "t/text.txt.j2": "x", "t/de/text.txt.j2": "de"})
    renderer = Renderer(tmp_path)
    for locale in ("de", "en", None, 7):  # a locale of the wrong type is no locale
        renderer.render("t", locale, {})  # type: ignore[arg-type]

    def no_filesystem(*args: Any) -> bool:
        raise AssertionError("filesystem checked while rendering")

    monkeypatch.setattr(Path, "is_dir", no_filesystem)
    monkeypatch.setattr(Path, "is_file", no_filesystem)
    assert renderer.render("t", "de", {}).text == "de"
    assert renderer.render("t", "en", {}).text == "x"
    assert renderer.render("t", 7, {}).locale == "en"  # type: ignore[arg-type]


def test_datetime_filter_formats_each_call_right() -> None:
    stamp = "2025-03-04T05:06:07.123456+01:00"
    assert format_datetime(stamp) == "2025-03-04 04:06 UTC"
    assert format_datetime(stamp, "%d.%m.%Y, %H:%M UTC") == "04.03.2025, 04:06 UTC"
    assert format_datetime(stamp) == "2025-03-04 04:06 UTC"  # from the cache
    assert format_datetime("2025-03-04T05:06:07") == "2025-03-04 05:06 UTC"  # naive: UTC
    assert format_datetime("not a time") == "not a time"
    assert format_datetime("") == ""
    assert format_datetime(None) == ""
    for early in ("0999-01-02T03:04:05+00:00", "0001-01-01T00:00:00+00:00"):  # as strftime
        expected = datetime.fromisoformat(early).strftime("%Y-%m-%d %H:%M UTC")
        assert format_datetime(early) == expected


def test_text_details_leave_out_empty_rows(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "_layout/macros.txt.j2": (TEMPLATES / "_layout" / "macros.txt.j2").read_text("utf-8"),
            "t/subject.txt.j2": "s",
            "t/text.txt.j2": (
                '{% from "_layout/macros.txt.j2" import details %}\n{{ details(rows) -}}\nend\n'
            ),
        },
    )
    renderer = Renderer(tmp_path)
    rows = [("When", "today"), ("Where", ""), ("IP address", None), ("Device", "Phone")]
    text = renderer.render("t", None, {"rows": rows}).text
    assert text == "When:         today\nDevice:       Phone\n\nend\n"
    assert renderer.render("t", None, {"rows": [("When", "")]}).text == "end\n"
    assert renderer.render("t", None, {"rows": []}).text == "end\n"
