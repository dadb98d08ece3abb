"""MIME micro-benchmark: Herald's `build_message` against the standard library's builders.

    python -m bench.mime [--number 300] [--write]

Builds the shipped `password_changed` email (en and de, rendered once) as wire bytes:

- `EmailMessage`: `set_content` + `add_alternative` + `as_bytes()` with the SMTP
  policy, the way Herald built messages before (and the peer still does);
- `email.mime`: the legacy `MIMEMultipart` / `MIMEText` classes + `as_bytes()`;
- `build_message`: Herald's direct writer (service/mail/message.py).

Times are CPU time per message (`time.process_time`), best and median of 7 repeats,
so that other processes on the machine disturb them less.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP, compat32
from email.utils import format_datetime, formataddr, make_msgid

from bench.events import make_event
from bench.procs import ROOT
from bench.report import machine, update_section
from service.mail.compose import compose_email
from service.mail.message import Mailbox, parse_mailbox
from service.mail.render import Rendered, Renderer

__all__ = ["main"]

SENDER = parse_mailbox("Example <no-reply@example.com>")
_COMPAT32_CRLF = compat32.clone(linesep="\r\n")
HEADERS = {"X-Herald-Event-Id": "bench-1", "X-Herald-Template": "password_changed"}


def rendered(locale: str) -> tuple[Mailbox, Rendered]:
    """The recipient and the rendered `password_changed` email for a sample event."""
    event = make_event("mime", 7)
    user = {**event["data"]["user"], "locale": locale}
    view = {**event, **event["data"], "user": user}
    context = {"event": view, "user": user, "secrets": {"SUPPORT_URL": "https://x.test"}}
    renderer = Renderer(ROOT / "templates")
    mail = renderer.render("password_changed", locale, {**context, "data": {}})
    return parse_mailbox(user["email"], user["name"]), mail


def with_email_message(to: Mailbox, mail: Rendered) -> bytes:
    """The previous implementation: `EmailMessage` with the SMTP policy."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = SENDER.header()
    msg["To"] = Address(to.name, addr_spec=to.address)
    msg["Subject"] = mail.subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=SENDER.domain)
    msg["Auto-Submitted"] = "auto-generated"
    for key, value in HEADERS.items():
        msg[key] = value
    msg.set_content(mail.text, charset="utf-8")
    msg.add_alternative(mail.html or "", subtype="html", charset="utf-8")
    return msg.as_bytes()


def with_email_mime(to: Mailbox, mail: Rendered) -> bytes:
    """The legacy `email.mime` classes."""
    msg = MIMEMultipart("alternative")
    msg["From"] = formataddr((SENDER.name, SENDER.address), "utf-8")
    msg["To"] = formataddr((to.name, to.address), "utf-8")
    msg["Subject"] = Header(mail.subject, "utf-8")  # type: ignore[assignment]
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=SENDER.domain)
    msg.attach(MIMEText(mail.text, "plain", "utf-8"))
    msg.attach(MIMEText(mail.html or "", "html", "utf-8"))
    return msg.as_bytes(policy=_COMPAT32_CRLF)


def with_build_message(to: Mailbox, mail: Rendered) -> bytes:
    """Herald's writer."""
    return compose_email(
        sender=SENDER, recipient=to, rendered=mail, event_id="bench-1", template="password_changed"
    ).data


BUILDERS: dict[str, Callable[[Mailbox, Rendered], bytes]] = {
    "stdlib EmailMessage": with_email_message,
    "stdlib email.mime": with_email_mime,
    "Herald build_message": with_build_message,
}


def measure(number: int) -> list[tuple[str, str, float, float, int]]:
    """(builder, locale, best µs, median µs, bytes) for each builder and locale."""
    rows = []
    for locale in ("en", "de"):
        to, mail = rendered(locale)
        for name, build in BUILDERS.items():
            call = functools.partial(build, to, mail)
            times = timeit.repeat(call, number=number, repeat=7, timer=time.process_time)
            per = [t / number * 1e6 for t in times]
            rows.append((name, locale, min(per), statistics.median(per), len(build(to, mail))))
    return rows


def markdown(rows: list[tuple[str, str, float, float, int]], number: int) -> str:
    """The results as a markdown table, with the machine they ran on."""
    info = machine()
    lines = [
        f"`python -m bench.mime` ({number} builds x 7 repeats, CPU time) on {info['cpus']} x "
        f"{info['cpu']}, Python {info['python']}, load average {info['load']}.",
        "",
        "| builder | locale | best µs | median µs | bytes |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, locale, best, median, size in rows:
        lines.append(f"| {name} | {locale} | {best:,.0f} | {median:,.0f} | {size:,} |")
    return "\n".join(lines)


def main() -> None:
    """Print the table; with --write also put it into BENCHMARKS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.mime", description=__doc__)
    parser.add_argument("--number", type=int, default=300, help="builds per repeat (300)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    text = markdown(measure(args.number), args.number)
    print(text)
    if args.write:
        update_section(ROOT / "BENCHMARKS.md", "bench:mime", text)


if __name__ == "__main__":
    main()
