"""Hostile input, property-based: event parsing, addresses, MIME and templates.

Whatever an identity provider (or an attacker able to publish events) sends, each entry
point either accepts it, skips it, or fails in its one documented way; and nothing taken
from an event adds a header, a recipient or markup.
"""

from __future__ import annotations

import json
import unicodedata
from email import policy
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from service.events import MAX_EVENT_BYTES, Event, MalformedEvent, parse_cloudevent
from service.flows import event_view
from service.mail.message import InvalidAddress, Mailbox, build_message, parse_mailbox
from service.mail.render import Renderer, TemplateError, template_context

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "events"
TEMPLATES = {
    "post-change-password": "password_changed",
    "post-user-registration": "welcome",
    "password-reset-requested": "password_reset",
    "email-verification-requested": "verify_email",
    "login-failed": "login_alert",
}
FIXED_HEADERS = {
    "from",
    "to",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "auto-submitted",
    "x-herald-event-id",
    "x-herald-template",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}
RENDERER = Renderer(ROOT / "templates")
FAST = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow "explain"
)

# --- strategies -----------------------------------------------------------------------

PIECES = [
    *'\r\n\x00\x0b\x0c\x1b\x7f\x85\x9b\t @<>,;:"\\()[]',
    "\r\n",
    "\u2028",
    "\u2029",
    "\u202e",  # right-to-left override
    "\u200f",
    "\u200b",  # zero width space
    "\u200d",
    "\ufeff",
    "e\u0301\u0301\u0301",  # combining accents
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",  # family emoji (ZWJ sequence)
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew
    "Bcc: victim@evil.test",
    "\r\nBcc: victim@evil.test\r\n",
    "\nTo: other@evil.test",
    "=?utf-8?q?=0D=0ABcc:_x@evil.test?=",
    "<script>alert(1)</script>",
    "{{ 7*7 }}",
    "{% for x in () %}",
    "victim@evil.test",
]
#: Valid UTF-8 only: surrogates cannot travel in JSON bytes.
_chars = st.characters(codec="utf-8")
hostile_text = st.lists(
    st.one_of(st.sampled_from(PIECES), st.text(_chars, max_size=12)), max_size=10
).map("".join)
huge_text = st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["A", "é", "\U0001f469", "a b ", "\r\n", "x\u0301"]),
    st.integers(500, 5000),
)
text_values = st.one_of(hostile_text, hostile_text, huge_text)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    text_values,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text_values, inner, max_size=4),
    max_leaves=12,
)
json_bytes = json_values.map(lambda value: json.dumps(value).encode())


def _example(trigger: str) -> dict[str, Any]:
    return orjson.loads((EXAMPLES / f"{trigger}.json").read_bytes())  # type: ignore[no-any-return]


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Replace (or, for the `...` sentinel, delete) the value at `path`, creating objects."""
    for key in path[:-1]:
        if not isinstance(doc.get(key), dict):
            doc[key] = {}
        doc = doc[key]
    if value is ...:
        doc.pop(path[-1], None)
    else:
        doc[path[-1]] = value


FIELDS = [
    ("specversion",),
    ("id",),
    ("source",),
    ("type",),
    ("time",),
    ("subject",),
    ("data",),
    ("data", "user"),
    *(
        ("data", "user", key)
        for key in ("user_id", "email", "name", "given_name", "family_name", "nickname")
    ),
    *(("data", "user", key) for key in ("locale", "email_verified", "user_metadata")),
    ("data", "request"),
    ("data", "request", "ip"),
    ("data", "request", "user_agent"),
    ("data", "request", "geoip"),
    ("data", "request", "geoip", "city_name"),
    ("data", "client"),
    ("data", "client", "name"),
    ("data", "link"),
    ("data", "expires_at"),
    ("data", "attempts"),
]
mutations = st.lists(
    st.tuples(st.sampled_from(FIELDS), st.one_of(st.just(...), json_values)), max_size=4
)


def _mutated(trigger: str, changes: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    envelope = _example(trigger)
    for path, value in changes:
        _set(envelope, path, value)
    return envelope


def _parse(value: bytes | None, headers: list[tuple[str, bytes]] | None = None) -> Event | None:
    """parse_cloudevent, asserting it fails only the documented way."""
    try:
        event = parse_cloudevent(value, headers or [])
    except MalformedEvent as exc:
        assert "\n" not in str(exc)
        return None
    assert event is None or isinstance(event, Event)
    if event is not None:
        assert isinstance(event.id, str) and 1 <= len(event.id) <= 256
        assert isinstance(event.user, dict) and isinstance(event.user_id, str) and event.user_id
        assert event.user.get("email") is None or isinstance(event.user["email"], str)
    return event


# --- event parsing --------------------------------------------------------------------


@FAST
@given(st.binary(max_size=2048))
def test_random_bytes(value: bytes) -> None:
    _parse(value)


@FAST
@given(json_values, st.booleans())
def test_random_json(value: Any, ascii_only: bool) -> None:
    _parse(json.dumps(value, ensure_ascii=ascii_only).encode())


@FAST
@given(st.sampled_from(sorted(TEMPLATES)), mutations)
def test_wrong_types_in_every_field(trigger: str, changes: list[Any]) -> None:
    _parse(json.dumps(_mutated(trigger, changes)).encode())


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_x", "other"]),
            st.one_of(st.binary(max_size=40), text_values.map(str.encode)),
        ),
        max_size=6,
    ),
    st.one_of(st.none(), st.binary(max_size=200), json_bytes),
)
def test_binary_mode_headers(headers: list[tuple[str, bytes]], value: bytes | None) -> None:
    _parse(value, headers)


def test_over_one_mebibyte_is_malformed() -> None:
    envelope = _example("post-change-password")
    envelope["data"]["user"]["name"] = "A" * MAX_EVENT_BYTES
    try:
        parse_cloudevent(json.dumps(envelope).encode(), [])
    except MalformedEvent as exc:
        assert "1 MiB" in str(exc)
    else:
        raise AssertionError("an event over 1 MiB was accepted")


# --- addresses and MIME ---------------------------------------------------------------

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?"
_atext = st.sampled_from("abcxyzABC0189.!#$%&'*+/=?^_`{|}~-\u00e9\u00fc\u4e2d")
plausible_addresses = st.builds(
    lambda local, labels: f"{local}@{'.'.join(labels)}",
    st.text(_atext, min_size=1, max_size=30),
    st.lists(
        st.from_regex(_LABEL, fullmatch=True),
        min_size=1,
        max_size=3,
    ),
)
address_inputs = st.one_of(
    plausible_addresses,
    st.builds(lambda a, b, c: a + b + c, hostile_text, plausible_addresses, hostile_text),
    st.builds(lambda n, a: f"{n} <{a}>", hostile_text, plausible_addresses),
    text_values,
)


def _clean(value: str) -> bool:
    """No control (C0 or C1), line or paragraph separator characters at all."""
    return not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)


def _one_line(value: str) -> bool:
    """Nothing that could end a header line: CR, LF, NUL and the Unicode line breaks."""
    return not any(c in value for c in "\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


@FAST
@given(address_inputs, st.one_of(st.just(""), text_values))
def test_parse_mailbox(value: str, name: str) -> None:
    try:
        box = parse_mailbox(value, name)
    except InvalidAddress:
        return
    assert box.address.count("@") == 1
    assert _clean(box.address) and " " not in box.address
    assert _one_line(box.name)  # non-ASCII names go out RFC 2047-encoded


def _mailbox(value: str, name: str) -> Mailbox:
    try:
        return parse_mailbox(value, name)
    except InvalidAddress:
        assume(False)
        raise


def _header_names(data: bytes) -> list[str]:
    block = data.split(b"\r\n\r\n", 1)[0]
    names = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            continue  # a folded continuation of the header above
        name, colon, _ = line.partition(b":")
        assert colon, f"header line without a colon: {line[:80]!r}"
        names.append(name.decode("ascii").lower())
    return names


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")


@FAST
@given(
    plausible_addresses,
    text_values,
    text_values,
    text_values,
    st.one_of(st.none(), text_values),
    text_values,
    st.one_of(st.none(), plausible_addresses),
)
def test_build_message(
    address: str,
    name: str,
    subject: str,
    text: str,
    html: str | None,
    event_id: str,
    reply_to: str | None,
) -> None:
    recipient = _mailbox(address, name)
    sender = Mailbox("Herald", "no-reply@herald.test")
    headers = {"X-Herald-Event-Id": event_id, "X-Herald-Template": "password_changed"}
    reply = _mailbox(reply_to, "") if reply_to else None
    data = build_message(
        sender=sender,
        recipient=recipient,
        subject=subject,
        text=text,
        html=html,
        headers=headers,
        reply_to=reply,
    ).data
    assert data.endswith(b"\r\n")
    for line in data[:-2].split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line and len(line) <= 998, line[:80]
    names = _header_names(data)
    assert set(names) <= FIXED_HEADERS and names.count("to") == 1 and len(names) == len(set(names))
    msg = BytesParser(policy=policy.default).parsebytes(data)
    [to] = msg["To"].addresses
    assert f"{to.username}@{to.domain}" == recipient.address
    assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])
    parts = list(msg.iter_parts()) or [msg]  # text only: a single text/plain part
    assert len(parts) == (1 if html is None else 2)
    assert html is None or msg.get_content_type() == "multipart/alternative"
    assert _lines(parts[0].get_content()) == _lines(text)


# --- templates ------------------------------------------------------------------------

INJECTIONS = [
    "<hostile-tag>",
    '"><hostile-tag x="',
    "'><hostile-tag x='",
    '" data-hostile="1',
    "' data-hostile='1",
    "</p><hostile-tag/>",
]
marked = st.builds(
    lambda a, inject, b: a + inject + b, hostile_text, st.sampled_from(INJECTIONS), hostile_text
)
template_values = st.one_of(marked, marked, json_values)
TEMPLATE_FIELDS = [path for path in FIELDS if len(path) > 2 or path == ("data", "link")]
template_mutations = st.lists(
    st.tuples(st.sampled_from(TEMPLATE_FIELDS), template_values), min_size=1, max_size=6
)


class _Markup(HTMLParser):
    """Collects tag and attribute names, and link targets."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes |= {name for name, _ in attrs}
        self.links += [v or "" for k, v in attrs if k == "href"]


@FAST
@given(st.sampled_from(sorted(TEMPLATES)), template_mutations)
def test_templates_render_hostile_data_as_data(trigger: str, changes: list[Any]) -> None:
    envelope = _mutated(trigger, changes)
    try:
        event = parse_cloudevent(json.dumps(envelope).encode(), [])
    except MalformedEvent:
        event = None
    assume(event is not None)
    assert event is not None
    view = event_view(event, {"SUPPORT_URL": "https://support.herald.test/"})
    context = template_context(view, view["secrets"])
    locale = context["user"].get("locale")  # as the send_email action passes it
    try:
        rendered = RENDERER.render(TEMPLATES[trigger], locale, context)
    except TemplateError:
        return
    assert _one_line(rendered.subject)
    assert rendered.html is not None
    markup = _Markup()
    markup.feed(rendered.html)
    markup.close()
    assert "hostile-tag" not in markup.tags
    assert "data-hostile" not in markup.attributes
    for link in markup.links:
        assert link.strip().lower().startswith(("https://", "http://", "mailto:")), link[:80]
