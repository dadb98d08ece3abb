"""`herald preview` over HTTP: the index, one email side by side, escaping, errors, reload."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest

from service.config import Config, load_config
from service.events import validate_envelope
from service.flows import event_view
from service.mail.render import Renderer
from service.preview import PreviewServer, fingerprint, load_samples
from tests.cdp import chromium, require_chromium

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
EVENTS = ROOT / "examples" / "events"
SHIPPED = ["login_alert", "password_changed", "password_reset", "verify_email", "welcome"]
PAGE = "/t/password_changed/de/post-change-password"

Get = Callable[[str], Awaitable[tuple[int, str]]]


def shipped_config(templates_dir: Path = TEMPLATES) -> Config:
    config = load_config(ROOT / "config" / "herald.yaml", environ={})
    return config.model_copy(update={"templates_dir": templates_dir})


class Page(HTMLParser):
    """The bits of a preview page the tests look at: links, iframes, script tags."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.iframes: list[dict[str, str | None]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs).get("href") or "")
        elif tag == "iframe":
            self.iframes.append(dict(attrs))
        elif tag == "script":
            self.scripts.append(dict(attrs))


async def serve(config: Config, events_dir: Path = EVENTS) -> AsyncIterator[tuple[str, Get]]:
    server = PreviewServer(config, events_dir)
    url = (await server.start("127.0.0.1", 0)).rstrip("/")
    async with aiohttp.ClientSession() as session:

        async def get(path: str) -> tuple[int, str]:
            async with session.get(url + path, allow_redirects=False) as response:
                return response.status, await response.text()

        yield url, get
    await server.stop()


@pytest.fixture
async def shipped() -> AsyncIterator[tuple[str, Get]]:
    async for served in serve(shipped_config()):
        yield served


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A copy of the shipped templates the test may break or edit."""
    return Path(shutil.copytree(TEMPLATES, tmp_path / "templates"))


@pytest.fixture
async def copied(templates: Path) -> AsyncIterator[tuple[str, Get]]:
    async for served in serve(shipped_config(templates)):
        yield served


def rendered_html(template: str, locale: str, sample: str) -> str:
    """What the `send_email` action would render, straight from the renderer."""
    config = shipped_config()
    envelope = json.loads((EVENTS / f"{sample}.json").read_text("utf-8"))
    envelope["data"]["user"]["locale"] = locale
    event = validate_envelope(envelope)
    assert event is not None
    view = event_view(event, config.secrets)
    context = {"event": view, "user": view["user"], "secrets": config.secrets, "data": {}}
    html = Renderer(TEMPLATES, "en").render(template, locale, context).html
    assert html is not None
    return html


# -- the index ------------------------------------------------------------------------


async def test_index_lists_every_template_and_locale(shipped: tuple[str, Get]) -> None:
    _, get = shipped
    status, text = await get("/")
    assert status == 200
    links = Page(text).links
    for name in SHIPPED:
        variants = sorted(p.name for p in (TEMPLATES / name).iterdir() if p.is_dir())
        assert variants, f"{name} ships no locale variant"
        for locale in ["en", *variants]:
            assert any(link.startswith(f"/t/{name}/{locale}/") for link in links), (name, locale)
    assert "render error" not in text
    assert "Ihr Passwort wurde geändert" in text  # each cell shows its subject


async def test_each_template_is_shown_with_the_events_of_its_flow(
    shipped: tuple[str, Get],
) -> None:
    _, get = shipped
    _, text = await get("/")
    links = Page(text).links
    assert "/t/password_changed/de/post-change-password" in links
    assert not any(link.startswith("/t/password_changed/de/post-login") for link in links)


# -- one email ------------------------------------------------------------------------


async def test_page_shows_subject_text_and_html_side_by_side(shipped: tuple[str, Get]) -> None:
    _, get = shipped
    status, text = await get(PAGE)
    assert status == 200
    assert "Ihr Passwort wurde geändert" in text  # subject
    assert "Emmy Noether &lt;emmy.noether@example.com&gt;" in text  # To, escaped
    assert "Example &lt;no-reply@example.com&gt;" in text  # From: smtp.from
    assert '<pre class="text">Hallo Emmy,' in text  # the text part
    (iframe,) = Page(text).iframes
    assert iframe["srcdoc"] == rendered_html("password_changed", "de", "post-change-password")


async def test_iframe_is_sandboxed_and_its_srcdoc_escaped(shipped: tuple[str, Get]) -> None:
    _, get = shipped
    _, text = await get(PAGE)
    (iframe,) = Page(text).iframes
    assert iframe["sandbox"] in ("", None)  # present, granting nothing: no allow-scripts
    assert 'srcdoc="&lt;!DOCTYPE html&gt;' in text
    assert "<table" not in text  # the email's markup only ever appears escaped


async def test_locale_is_forced_over_the_users_own(shipped: tuple[str, Get]) -> None:
    _, get = shipped  # Lise Meitner's event says de-AT
    _, french = await get("/t/welcome/fr/post-user-registration")
    _, english = await get("/t/welcome/en/post-user-registration")
    assert "Bienvenue sur Example App" in french
    assert "welcome/fr/subject.txt.j2" in french and "welcome/text.txt.j2" in french
    assert "Welcome to Example App" in english


async def test_template_output_cannot_inject_into_the_page(templates: Path) -> None:
    attack = '</pre></iframe>"><script>alert(1)</script><img src=x onerror=alert(2)>'
    for part in ("subject.txt.j2", "text.txt.j2", "html.html.j2"):
        (templates / "password_changed" / "de" / part).write_text(attack + "{{ user.name }}")
    async for _, get in serve(shipped_config(templates)):
        _, text = await get(PAGE)
        page = Page(text)
        assert page.scripts == [{"src": "/preview.js", "defer": None}]
        assert "<img" not in text and "<script>" not in text
        (iframe,) = page.iframes
        assert iframe["srcdoc"] == attack + "Emmy Noether"


async def test_html_part_alone_is_a_sandboxed_document(shipped: tuple[str, Get]) -> None:
    url, _ = shipped
    async with aiohttp.ClientSession() as session, session.get(url + PAGE + "/html") as response:
        assert response.status == 200
        assert response.headers["Content-Security-Policy"].startswith("sandbox;")
        assert "<table" in await response.text()


async def test_pages_forbid_inline_scripts(shipped: tuple[str, Get]) -> None:
    url, _ = shipped
    async with aiohttp.ClientSession() as session, session.get(url + PAGE) as response:
        policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]


@pytest.mark.parametrize(
    "path",
    [
        "/t/nope/en/post-change-password",
        "/t/password_changed/xx/post-change-password",
        "/t/password_changed/de/nope",
        "/t/nope",
    ],
)
async def test_unknown_names_are_404_pages(shipped: tuple[str, Get], path: str) -> None:
    _, get = shipped
    status, text = await get(path)
    assert status == 404
    assert "Not found" in text


async def test_template_link_redirects_to_its_first_email(shipped: tuple[str, Get]) -> None:
    url, _ = shipped
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/t/welcome", allow_redirects=False) as response,
    ):
        assert response.status == 302
        assert response.headers["Location"] == "/t/welcome/en/post-user-registration"


# -- errors and reload ----------------------------------------------------------------


async def test_a_broken_template_shows_its_error_on_the_page(templates: Path) -> None:
    broken = templates / "password_changed" / "de" / "html.html.j2"
    broken.write_text("<p>fine</p>\n{% if %}\n", "utf-8")
    (templates / "welcome" / "de" / "text.txt.j2").write_text("line one\n{{ 1 // 0 }}\n")
    async for _, get in serve(shipped_config(templates)):
        status, text = await get(PAGE)
        assert status == 200
        assert "Render error" in text
        assert f"{broken}:2: " in text
        _, runtime = await get("/t/welcome/de/post-user-registration")
        assert "welcome/de/text.txt.j2:2: ZeroDivisionError" in runtime
        _, index = await get("/")
        assert "render error" in index and f"{broken}:2: " in index  # and herald check's list
        _, fine = await get("/t/password_changed/en/post-change-password")
        assert "Render error" not in fine


async def test_changing_a_template_changes_version_and_the_page(
    templates: Path, copied: tuple[str, Get]
) -> None:
    _, get = copied
    _, before = await get("/version")
    assert (await get("/version"))[1] == before  # stable while nothing changes
    _, page = await get(PAGE)
    assert "Ihr Passwort wurde geändert" in page
    subject = templates / "password_changed" / "de" / "subject.txt.j2"
    subject.write_text("Neues Passwort für {{ user.name }}\n", "utf-8")
    stat = subject.stat()
    os.utime(subject, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    _, after = await get("/version")
    assert json.loads(after)["version"] != json.loads(before)["version"]
    _, page = await get(PAGE)
    assert "Neues Passwort für Emmy Noether" in page
    assert f'data-version="{json.loads(after)["version"]}"' in page


def test_fingerprint_follows_names_sizes_and_mtimes(tmp_path: Path) -> None:
    (tmp_path / "a.j2").write_text("a")
    first = fingerprint(tmp_path)
    assert fingerprint(tmp_path) == first
    (tmp_path / "b.j2").write_text("b")
    assert fingerprint(tmp_path) != first
    assert fingerprint(tmp_path / "missing") == fingerprint(tmp_path / "also-missing")


def test_bad_sample_events_are_reported_not_fatal(tmp_path: Path) -> None:
    shutil.copy(EVENTS / "post-login.json", tmp_path / "good.json")
    (tmp_path / "broken.json").write_text('{"specversion": "1.0",\n oops}')
    (tmp_path / "other.json").write_text(
        json.dumps({"specversion": "1.0", "id": "1", "source": "s", "type": "x.y"})
    )
    samples, problems = load_samples(tmp_path)
    assert [s.name for s in samples] == ["good"]
    assert problems == [
        f"{tmp_path / 'broken.json'}:2: invalid JSON: Expecting property name enclosed in "
        "double quotes",
        f"{tmp_path / 'other.json'}: event type is not one of Herald's triggers",
    ]


# -- the command line -----------------------------------------------------------------


async def test_port_in_use_is_one_line_and_exit_1(shipped: tuple[str, Get]) -> None:
    url, _ = shipped
    port = url.rsplit(":", 1)[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "preview", "--port", port,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 1
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"herald: cannot serve the preview on 127.0.0.1:{port}: ")
    assert "in use" in lines[0]


# -- a real browser ----------------------------------------------------------------


async def test_chromium_shows_the_page_and_the_email_in_its_sandboxed_frame(
    shipped: tuple[str, Get], tmp_path: Path
) -> None:
    """Debian's headless Chromium loads the page: the live-reload script runs under the
    CSP, and the sandboxed iframe (a process of its own) shows the rendered HTML part."""
    url, _ = shipped
    async with chromium(tmp_path / "profile") as browser:
        page = await browser.open(url + PAGE)
        assert await page.wait_for("document.documentElement.dataset.live") == "on"
        shown = await page.evaluate("document.body.innerText")
        assert "Ihr Passwort wurde geändert" in shown  # subject
        assert "Emmy Noether <emmy.noether@example.com>" in shown  # To, as text
        text_part = await page.evaluate("document.querySelector('pre.text').innerText")
        assert text_part.startswith("Hallo Emmy,")
        assert await page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
        # The frame grants nothing, and the page cannot reach into it.
        assert await page.evaluate("document.querySelector('iframe').getAttribute('sandbox')") == ""
        assert await page.evaluate("document.querySelector('iframe').contentDocument") is None

        frame = await browser.frame(page)
        assert await frame.evaluate("location.href") == "about:srcdoc"
        assert await frame.evaluate("self.origin") == "null"  # a unique, opaque origin
        email = await frame.evaluate("document.body.innerText")
        assert "Ihr Passwort wurde geändert" in email  # the heading
        assert "Hallo Emmy," in email
        assert "das Passwort für Ihr Konto emmy.noether@example.com wurde geändert." in email
        assert "Wenn Sie das selbst waren, müssen Sie nichts weiter tun." in email
        assert "<table" not in email  # markup rendered, not shown escaped
        assert await frame.evaluate("document.querySelectorAll('table').length") > 0
        assert await frame.evaluate("document.documentElement.lang") == "de"


def test_missing_chromium_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    line = "chromium is not installed: tests/services/install installs it (apt-get, as root)"
    monkeypatch.setattr(shutil, "which", lambda program: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape(line)):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=re.escape(line)):
        require_chromium()
    install = (ROOT / "tests" / "services" / "install").read_text()
    assert f'CHROMIUM_HOW="{line}"' in install  # the script warns with the same line
