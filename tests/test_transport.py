"""SmtpPool and error classification against real in-process aiosmtpd servers.

Every test with an aiosmtpd server runs twice: once with the server offering PIPELINING
(MAIL, RCPT and DATA in one write) and once without (one command per round trip). A bare
asyncio server (`RawServer`) records the exact bytes of pipelined sessions.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as ServerSession
from aiosmtpd.smtp import AuthResult, LoginPassword
from aiosmtplib import (
    SMTPConnectError,
    SMTPDataError,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from service.addresses import InvalidAddress, Mailbox, parse_mailbox
from service.mail import aiosmtplib_internals, smtp_session
from service.mail.smtp_errors import (
    DeliveryError,
    DeliveryUncertain,
    PermanentError,
    ServerUnavailable,
    TransientError,
    classify,
)
from service.mail.smtp_session import DataUnanswered, Envelope, data_payload
from service.mail.transport import SmtpPool

HOST = "127.0.0.1"
SENDER = "no-reply@example.com"
RCPT = "ada@example.com"
# CRLF line endings, a line starting with a dot (dot-stuffed on the wire) and 8-bit text.
MESSAGE = (
    b"From: Herald <no-reply@example.com>\r\n"
    b"To: ada@example.com\r\n"
    b"Subject: Password changed\r\n"
    b"\r\n"
    b"Hello Ada,\r\n"
    b".a line that starts with a dot\r\n"
    b"caf\xc3\xa9\r\n"
)
USER, PASSWORD = "herald", "s3cret-Pa55"


def free_port() -> int:
    """A TCP port nobody listens on (right now)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Recorder:
    """aiosmtpd handler: records accepted mail; DATA and RCPT replies can be scripted."""

    data_replies: list[str] = field(default_factory=list)  # consumed one per DATA
    rejected: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply
    drop_reused: str = ""  # "close" or "421": break the 2nd MAIL of every session
    data_delay_s: float = 0.0  # before answering the final "." (the message is kept)
    rcpt_delay_s: float = 0.0
    drop_after_data: bool = False  # keep the message, close without answering it
    pipelining: bool = False  # offer PIPELINING in the reply to EHLO
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    peers: set[Any] = field(default_factory=set)  # one per connection
    helo_names: list[str] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)
    authenticated: list[bool] = field(default_factory=list)
    disconnected: set[Any] = field(default_factory=set)  # peers whose connection ended
    _mails: dict[Any, int] = field(default_factory=dict)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self._mails[session.peer] = self._mails.get(session.peer, 0) + 1
        if self.drop_reused and self._mails[session.peer] > 1:
            if self.drop_reused == "421":
                return "421 4.4.2 Error: timeout exceeded"
            server.transport.close()  # vanish without a reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        await asyncio.sleep(self.rcpt_delay_s)
        if address in self.rejected:
            return self.rejected[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.peers.add(session.peer)
        self.helo_names.append(session.host_name)
        self.tls.append(server.transport.get_extra_info("ssl_object") is not None)
        self.authenticated.append(bool(session.authenticated))
        reply = self.data_replies.pop(0) if self.data_replies else "250 2.0.0 Ok: queued as 42"
        if reply.startswith("2"):  # taken now, as a real server queues before it answers
            self.messages.append(
                (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        if self.drop_after_data:
            server.transport.close()
        await asyncio.sleep(self.data_delay_s)
        return reply


class _CountingSession(ServerSession):
    """aiosmtpd's SMTP protocol, telling the handler when a connection ends."""

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self.session is not None:
            self.event_handler.disconnected.add(self.session.peer)


class RecordingController(Controller):
    """A Controller whose sessions count disconnects on their Recorder."""

    def factory(self) -> ServerSession:
        return _CountingSession(self.handler, **self.SMTP_kwargs)


async def eventually(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Wait until `condition()` holds, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@dataclass
class Server:
    """A running aiosmtpd Controller and its handler."""

    controller: Controller
    handler: Recorder
    port: int
    running: bool = True

    def stop(self) -> None:
        if self.running:
            self.controller.stop()
            self.running = False


StartServer = Callable[..., Server]


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def start_server(request: pytest.FixtureRequest) -> Iterator[StartServer]:
    """Start aiosmtpd servers on free ports; all are stopped after the test."""
    servers: list[Server] = []

    def start(handler: Recorder | None = None, port: int | None = None, **smtp: Any) -> Server:
        handler = handler or Recorder()
        handler.pipelining = request.param
        port = port or free_port()
        smtp.setdefault("server_hostname", "mx.test")  # else aiosmtpd calls getfqdn()
        controller = RecordingController(handler, hostname=HOST, port=port, **smtp)
        controller.start()
        servers.append(Server(controller, handler, port))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: StartServer) -> Server:
    return start_server()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@dataclass
class RawServer:
    """A bare asyncio SMTP server offering PIPELINING that records every chunk it reads.

    It answers MAIL and RCPT only once DATA arrives, all replies together (or each in
    its own write with `split`): a client that waits for each reply would stall.
    `replies` overrides the reply to a verb (b"." is the end of a message); an empty
    reply to DATA leaves the whole group unanswered.
    """

    replies: dict[bytes, bytes] = field(default_factory=dict)
    split: bool = False
    chunks: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)  # as received: still dot-stuffed
    sessions: int = 0
    ended: int = 0
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def reply(self, verb: bytes) -> bytes:
        return self.replies.get(verb, RAW_REPLIES.get(verb, b"250 2.0.0 Ok\r\n"))

    async def send(self, writer: asyncio.StreamWriter, replies: list[bytes]) -> None:
        for reply in replies if self.split else [b"".join(replies)]:
            writer.write(reply)
            await writer.drain()
            await asyncio.sleep(0)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        session = RawSession(self, writer)
        writer.write(b"220 raw.test ESMTP\r\n")
        try:
            while chunk := await reader.read(65536):
                self.chunks.append(chunk)
                if not await session.handle(chunk):
                    break
        finally:
            self.ended += 1
            writer.close()


RAW_REPLIES = {
    b"EHLO": b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b".": b"250 2.0.0 Ok: queued as raw\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
}


@dataclass
class RawSession:
    """The state of one RawServer connection."""

    server: RawServer
    writer: asyncio.StreamWriter
    buffer: bytes = b""
    pending: list[bytes] = field(default_factory=list)  # replies held back until DATA
    in_data: bool = False

    async def handle(self, chunk: bytes) -> bool:
        """Answer what `chunk` completes; False after QUIT."""
        self.buffer += chunk
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return True
                self.server.messages.append(self.buffer[2 : end + 2])
                self.buffer, self.in_data = self.buffer[end + 5 :], False
                await self.server.send(self.writer, [self.server.reply(b".")])
                continue
            line, crlf, rest = self.buffer.partition(b"\r\n")
            if not crlf:
                return True
            self.buffer = rest
            verb = line[:4].upper()
            self.pending.append(self.server.reply(verb))
            if verb in (b"MAIL", b"RCPT"):
                continue
            replies, self.pending = self.pending, []
            if replies[-1]:
                await self.server.send(self.writer, replies)
            if verb == b"DATA" and replies[-1].startswith(b"354"):
                self.in_data, self.buffer = True, b"\r\n" + self.buffer  # finds "\r\n.\r\n"
            if verb == b"QUIT":
                return False


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = RawServer()
    await server.start()
    yield server
    await server.stop()


def make_pool(port: int, **kwargs: Any) -> SmtpPool:
    kwargs.setdefault("timeout_s", 2)
    kwargs.setdefault("local_hostname", "herald.test")
    return SmtpPool(HOST, port, **kwargs)


async def send_one(pool: SmtpPool, recipients: list[str] | None = None) -> str:
    return await pool.send(SENDER, recipients or [RCPT], MESSAGE)


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names the way each transaction sent MAIL, RCPT and DATA, in order."""
    used: list[str] = []
    for name in ("_pipelined", "_one_by_one"):
        original = getattr(smtp_session, name)

        async def spy(
            smtp: Any, envelope: Envelope, _name: str = name, _run: Any = original
        ) -> Any:
            used.append(_name.strip("_"))
            return await _run(smtp, envelope)

        monkeypatch.setattr(smtp_session, name, spy)
    return used


# --- sending and pooling -----------------------------------------------------------


async def test_send_is_recorded_byte_exact(server: Server, flows: list[str]) -> None:
    async with make_pool(server.port) as pool:
        reply = await send_one(pool)
    assert flows == ["pipelined" if server.handler.pipelining else "one_by_one"]
    assert reply == "2.0.0 Ok: queued as 42"
    assert server.handler.messages == [(SENDER, [RCPT], MESSAGE)]
    assert server.handler.helo_names == ["herald.test"]
    assert server.handler.tls == [False]


class HeloOnly(Recorder):
    """A server that refuses EHLO: the client greets it with HELO instead."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return ["502 5.5.2 Error: command not recognized"]


async def test_server_refusing_ehlo_is_greeted_with_helo(
    start_server: StartServer, flows: list[str]
) -> None:
    server = start_server(HeloOnly())
    async with make_pool(server.port) as pool:
        await send_one(pool)
        await send_one(pool)
    assert flows == ["one_by_one", "one_by_one"]  # no EHLO reply offered PIPELINING
    assert server.handler.messages == [(SENDER, [RCPT], MESSAGE)] * 2
    assert server.handler.helo_names == ["herald.test"] * 2
    assert len(server.handler.peers) == 1


async def test_pool_reuses_at_most_size_connections(server: Server) -> None:
    async with make_pool(server.port, size=2) as pool:
        await asyncio.gather(*(send_one(pool) for _ in range(20)))
        for _ in range(5):
            await send_one(pool)
    assert len(server.handler.messages) == 25
    assert 1 <= len(server.handler.peers) <= 2


async def test_fqdn_is_looked_up_once_per_pool(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def getfqdn(name: str = "") -> str:
        calls.append(name)
        return "fqdn.herald.test"

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    server.handler.data_replies = ["451 4.3.0 again"] * 2  # each failure costs a connection
    async with SmtpPool(HOST, server.port, timeout_s=2) as pool:
        for _ in range(3):
            await asyncio.gather(send_one(pool), return_exceptions=True)
    assert len(calls) == 1
    assert len(server.handler.peers) == 3
    assert set(server.handler.helo_names) == {"fqdn.herald.test"}


async def test_server_closing_idle_connection_costs_nothing(start_server: StartServer) -> None:
    server = start_server(timeout=0.2)  # aiosmtpd closes sessions idle for 0.2 s
    async with make_pool(server.port) as pool:
        await send_one(pool)
        await eventually(lambda: server.handler.peers <= server.handler.disconnected)
        await send_one(pool)
    assert len(server.handler.messages) == 2
    assert len(server.handler.peers) == 2


async def test_server_restart_costs_nothing(start_server: StartServer) -> None:
    first = start_server()
    async with make_pool(first.port) as pool:
        await send_one(pool)
        first.stop()
        second = start_server(port=first.port)
        await send_one(pool)
    assert len(first.handler.messages) == 1
    assert len(second.handler.messages) == 1


@pytest.mark.parametrize("how", ["close", "421"])
async def test_dropped_reused_connection_is_retried_once_transparently(
    start_server: StartServer, how: str
) -> None:
    server = start_server(Recorder(drop_reused=how))
    async with make_pool(server.port) as pool:
        await send_one(pool)
        await send_one(pool)  # the reused session breaks at MAIL; a fresh one succeeds
    assert len(server.handler.messages) == 2
    assert len(server.handler.peers) == 2


async def test_failed_connection_is_discarded(server: Server) -> None:
    server.handler.data_replies = ["451 4.3.0 try again"]
    async with make_pool(server.port) as pool:
        with pytest.raises(TransientError):
            await send_one(pool)
        await send_one(pool)
    assert len(server.handler.messages) == 1
    assert len(server.handler.peers) == 2


# --- the wire: pipelining, the message after DATA, envelope addresses ----------------

# MESSAGE as sent after DATA: its line starting with a dot doubled, then the final dot.
MESSAGE_ON_THE_WIRE = (
    b"From: Herald <no-reply@example.com>\r\n"
    b"To: ada@example.com\r\n"
    b"Subject: Password changed\r\n"
    b"\r\n"
    b"Hello Ada,\r\n"
    b"..a line that starts with a dot\r\n"
    b"caf\xc3\xa9\r\n"
    b".\r\n"
)


async def test_pipelined_session_is_recorded_byte_exact(raw: RawServer) -> None:
    async with make_pool(raw.port) as pool:
        reply = await pool.send(SENDER, [RCPT, "Bob <bob@example.com>"], MESSAGE)
        assert reply == "2.0.0 Ok: queued as raw"
    # One write for the envelope and DATA (the server answers nothing before DATA),
    # one for the message.
    assert raw.chunks == [
        b"EHLO herald.test\r\n",
        b"MAIL FROM:<no-reply@example.com>\r\n"
        b"RCPT TO:<ada@example.com>\r\n"
        b"RCPT TO:<bob@example.com>\r\n"
        b"DATA\r\n",
        MESSAGE_ON_THE_WIRE,
        b"QUIT\r\n",
    ]
    assert raw.messages == [MESSAGE_ON_THE_WIRE[:-3]]


async def test_pipelined_replies_in_separate_writes(raw: RawServer) -> None:
    raw.split = True
    async with make_pool(raw.port, size=2) as pool:
        await asyncio.gather(*(send_one(pool, [RCPT, "bob@example.com"]) for _ in range(20)))
    assert raw.messages == [MESSAGE_ON_THE_WIRE[:-3]] * 20
    assert raw.sessions <= 2


@pytest.mark.parametrize(
    ("verb", "reply", "kind"),
    [
        (b"MAIL", "550 5.7.1 Sender rejected", PermanentError),
        (b"MAIL", "451 4.3.0 Try again later", TransientError),
        (b"RCPT", "550 5.1.1 <ada@example.com>: Recipient address rejected", PermanentError),
        (b"RCPT", "450 4.2.1 Mailbox busy", TransientError),
        (b"DATA", "554 5.5.1 No valid recipients", PermanentError),
        (b"DATA", "451 4.3.0 Try again later", TransientError),
    ],
)
async def test_pipelined_refusal_is_classified_and_sends_no_message(
    raw: RawServer, verb: bytes, reply: str, kind: type
) -> None:
    # A refused MAIL or RCPT with DATA answered 354 anyway (RFC 2920 3.1 allows it): the
    # client must not send the message, and drops the session mid-DATA.
    raw.replies[verb] = reply.encode() + b"\r\n"
    async with make_pool(raw.port) as pool:
        with pytest.raises(DeliveryError) as caught:
            await send_one(pool)
        assert type(caught.value) is kind
        assert caught.value.reason == reply
        await eventually(lambda: raw.ended == 1)  # discarded, not reused
        del raw.replies[verb]
        await send_one(pool)
    assert raw.messages == [MESSAGE_ON_THE_WIRE[:-3]]
    assert raw.sessions == 2


async def test_pipelined_server_that_never_answers_times_out(raw: RawServer) -> None:
    raw.replies[b"DATA"] = b""  # the group stays unanswered
    async with make_pool(raw.port, timeout_s=0.3) as pool:
        with pytest.raises(TransientError, match="timed out") as caught:
            await send_one(pool)
    assert not isinstance(caught.value, ServerUnavailable)
    assert raw.messages == []


@pytest.mark.parametrize(
    "chunks",
    [
        [b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 End data\r\n"],
        [b"250 2.1", b".0 Ok\r\n250 2.1.5 Ok\r\n35", b"4 End data\r\n"],
        [b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n"],
    ],
)
async def test_reply_reader_keeps_replies_that_arrive_before_it_wakes(
    chunks: list[bytes],
) -> None:
    protocol = SMTPProtocol(asyncio.get_running_loop())
    protocol.connection_made(asyncio.Transport())

    async def read_three() -> list[int]:
        return [(await reader.read(timeout=1)).code for _ in range(3)]

    with aiosmtplib_internals.ReplyReader(protocol) as reader:
        replies = asyncio.create_task(read_three())
        await asyncio.sleep(0)  # the reader now waits for the first reply
        for chunk in chunks:  # all of it before the reader runs again
            protocol.data_received(chunk)
        assert await replies == [250, 250, 354]
    assert "data_received" not in vars(protocol)


@pytest.mark.parametrize(
    "message",
    [
        b".first line\r\n.\r\n..\r\n. \r\nend .\r\n.\r\n",
        b"Subject: dots\r\n\r\n.\r\n\r\n.\r\n",
        b"\r\n",
    ],
)
async def test_lines_starting_with_a_dot_round_trip(server: Server, message: bytes) -> None:
    async with make_pool(server.port) as pool:
        await pool.send(SENDER, [RCPT], message)
    assert server.handler.messages == [(SENDER, [RCPT], message)]


@pytest.mark.parametrize(
    ("message", "received"),
    [
        (
            b"Subject: bare\r\n\r\none\ntwo\r.three\n",
            b"Subject: bare\r\n\r\none\r\ntwo\r\n.three\r\n",
        ),
        (b"Subject: no end\r\n\r\nlast line", b"Subject: no end\r\n\r\nlast line\r\n"),
    ],
)
async def test_bare_line_ends_are_sent_as_crlf(
    server: Server, message: bytes, received: bytes
) -> None:
    async with make_pool(server.port) as pool:
        await pool.send(SENDER, [RCPT], message)
    assert server.handler.messages == [(SENDER, [RCPT], received)]


_LINE_PARTS = [b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"a", b" "]


@given(st.lists(st.sampled_from(_LINE_PARTS), max_size=40).map(b"".join) | st.binary())
def test_data_payload_is_what_aiosmtplib_sends(message: bytes) -> None:
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
    assert data_payload(message) == expected


_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"


@given(st.from_regex(rf"{_DOT_ATOM}@[A-Za-z0-9.-]+", fullmatch=True) | st.text(max_size=30))
def test_envelope_addresses_follow_the_one_address_rule(address: str) -> None:
    try:
        expected: bytes | None = b"RCPT TO:<" + parse_mailbox(address).address.encode() + b">"
    except InvalidAddress:
        expected = None
    try:
        command: bytes | None = Envelope.of(SENDER, [address]).rcpts[0]
    except ValueError:
        command = None
    assert command == expected


@pytest.mark.parametrize("address", ["u@exa mple.com", "ops@mail_relay.example.com", "u@x.com."])
def test_envelope_never_repairs_an_address(address: str) -> None:
    with pytest.raises(ValueError, match="invalid address"):
        Envelope.of(SENDER, [address])


def test_envelope_addresses_are_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []

    def parse(address: str) -> Mailbox:
        parsed.append(address)
        return parse_mailbox(address)

    monkeypatch.setattr(smtp_session, "parse_mailbox", parse)
    smtp_session._path.cache_clear()
    for _ in range(3):
        envelope = Envelope.of("Herald <herald@once.example>", ["ada@once.example"])
    assert envelope.mail == b"MAIL FROM:<herald@once.example>"
    assert envelope.rcpts == (b"RCPT TO:<ada@once.example>",)
    assert parsed == ["Herald <herald@once.example>", "ada@once.example"]


# --- classification of replies -----------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("421 4.3.2 Service shutting down", TransientError),
        ("451 4.3.0 Temporary local problem", TransientError),
        ("550 5.7.1 Message rejected as spam", PermanentError),
        ("554 5.6.0 Message content rejected", PermanentError),
    ],
)
async def test_data_reply_is_classified(server: Server, reply: str, kind: type) -> None:
    server.handler.data_replies = [reply]
    async with make_pool(server.port) as pool:
        with pytest.raises(DeliveryError) as caught:
            await send_one(pool)
    assert type(caught.value) is kind
    assert caught.value.reason == reply
    assert caught.value.code == int(reply[:3])
    assert server.handler.messages == []


async def test_rejected_recipient_is_permanent(server: Server) -> None:
    reply = "550 5.1.1 <nobody@example.com>: Recipient address rejected"
    server.handler.rejected = {"nobody@example.com": reply}
    async with make_pool(server.port) as pool:
        with pytest.raises(PermanentError) as caught:
            await send_one(pool, ["nobody@example.com"])
        await send_one(pool, ["nobody@example.com", RCPT])  # partly accepted: sent
    assert caught.value.reason == reply
    assert server.handler.messages == [(SENDER, [RCPT], MESSAGE)]


async def test_unsendable_address_is_permanent_and_spares_the_connection(server: Server) -> None:
    async with make_pool(server.port) as pool:
        with pytest.raises(PermanentError, match="invalid address"):
            await pool.send(SENDER, ["ada@example.com\r\nRCPT TO:<eve@example.com>"], MESSAGE)
        with pytest.raises(PermanentError, match="no recipients"):
            await pool.send(SENDER, [], MESSAGE)
    assert server.handler.peers == set()


def test_classify_is_pure_and_one_line() -> None:
    where = "mail.example.com:25"
    refused = ConnectionRefusedError(111, "Connection refused")
    connect = SMTPConnectError("Error connecting")
    connect.__cause__ = refused
    mixed = SMTPRecipientsRefused(
        [
            SMTPRecipientRefused(550, "5.1.1 unknown", "a@example.com"),
            SMTPRecipientRefused(452, "4.2.2 mailbox full", "b@example.com"),
        ]
    )
    assert type(classify(connect, where)) is ServerUnavailable
    assert classify(connect, where).reason == f"connection refused by {where}"
    assert type(classify(mixed, where)) is TransientError
    assert classify(SMTPDataError(550, "5.7.1 line one\nline two"), where).reason == (
        "550 5.7.1 line one line two"
    )
    assert type(classify(SMTPServerDisconnected("Connection lost"), where)) is TransientError
    assert type(classify(SMTPServerDisconnected("lost"), where, connecting=True)) is (
        ServerUnavailable
    )
    assert type(classify(TimeoutError(), where)) is TransientError


# --- connection failures -----------------------------------------------------------


async def test_connection_refused_is_server_unavailable() -> None:
    port = free_port()
    async with make_pool(port) as pool:
        with pytest.raises(ServerUnavailable) as caught:
            await send_one(pool)
        assert await pool.probe() is False
    assert caught.value.reason == f"connection refused by {HOST}:{port}"


async def test_silent_server_times_out_within_timeout() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    silent = await asyncio.start_server(never_answer, HOST, 0)  # accepts, never answers
    port = silent.sockets[0].getsockname()[1]
    try:
        async with make_pool(port, timeout_s=0.3) as pool:
            started = time.monotonic()
            with pytest.raises(ServerUnavailable, match="timed out"):
                await send_one(pool)
            assert time.monotonic() - started < 1.5
            assert await pool.probe() is False
    finally:
        for writer in writers:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_slow_reply_mid_session_is_transient(server: Server) -> None:
    server.handler.rcpt_delay_s = 1.0
    async with make_pool(server.port, timeout_s=0.3) as pool:
        with pytest.raises(TransientError, match="timed out") as caught:
            await send_one(pool)
    assert not isinstance(caught.value, ServerUnavailable)
    assert server.handler.messages == []


# --- the reply to the message: slow is fine, missing is uncertain ----------------------


async def test_slow_reply_to_the_message_waits_for_data_timeout(server: Server) -> None:
    """`timeout_s` bounds every command but not the reply to the final ".": RFC 5321
    gives that one 10 minutes, and giving up on it is how mail is delivered twice."""
    server.handler.data_delay_s = 1.0
    async with make_pool(server.port, timeout_s=0.3, data_timeout_s=3) as pool:
        assert await send_one(pool) == "2.0.0 Ok: queued as 42"
        assert await send_one(pool) == "2.0.0 Ok: queued as 42"  # the connection was kept
    assert len(server.handler.messages) == 2
    assert len(server.handler.peers) == 1


async def test_no_reply_to_the_message_within_data_timeout_is_uncertain(server: Server) -> None:
    server.handler.data_delay_s = 1.5
    sent = asyncio.Event()
    async with make_pool(server.port, timeout_s=2, data_timeout_s=0.3) as pool:
        started = time.monotonic()
        with pytest.raises(DeliveryUncertain) as caught:
            await pool.send(SENDER, [RCPT], MESSAGE, data_sent=sent)
        assert time.monotonic() - started < 1.2
        assert sent.is_set()
        server.handler.data_delay_s = 0
        assert await send_one(pool) == "2.0.0 Ok: queued as 42"  # on a fresh connection
    assert not isinstance(caught.value, TransientError)
    where = f"{HOST}:{server.port}"
    assert caught.value.reason == f"timed out waiting for {where} to answer the message"
    assert len(server.handler.peers) == 2  # the unanswered connection was not reused


async def test_connection_lost_before_the_reply_to_the_message_is_uncertain(
    server: Server,
) -> None:
    server.handler.drop_after_data = True
    async with make_pool(server.port) as pool:
        with pytest.raises(DeliveryUncertain, match="lost before it answered the message"):
            await send_one(pool)
    assert server.handler.messages == [(SENDER, [RCPT], MESSAGE)]  # it had the email


async def test_pipelined_message_never_answered_is_uncertain(raw: RawServer) -> None:
    raw.replies[b"."] = b""  # MAIL, RCPT and DATA answered; the message is not
    async with make_pool(raw.port, timeout_s=2, data_timeout_s=0.3) as pool:
        with pytest.raises(DeliveryUncertain, match="timed out"):
            await send_one(pool)
    assert len(raw.messages) == 1


@pytest.mark.parametrize("refusal", ["451 4.7.1 Greylisted", "550 5.1.1 No such user"])
async def test_data_sent_is_not_set_before_the_message_goes_out(
    server: Server, refusal: str
) -> None:
    server.handler.rejected = {RCPT: refusal}
    sent = asyncio.Event()
    async with make_pool(server.port) as pool:
        with pytest.raises(DeliveryError) as caught:
            await pool.send(SENDER, [RCPT], MESSAGE, data_sent=sent)
    assert not sent.is_set()
    assert not isinstance(caught.value, DeliveryUncertain)


def test_data_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="data_timeout_s"):
        make_pool(25, data_timeout_s=0)


def test_missing_reply_to_the_message_is_uncertain_and_nothing_else_is() -> None:
    where = "mail.example.com:25"
    timeout = SMTPReadTimeoutError("Timed out waiting for server response")
    lost = SMTPServerDisconnected("Connection lost")
    garbled = SMTPResponseException(-1, "Malformed SMTP response line: ???")
    for error in (timeout, lost, garbled):
        uncertain = classify(DataUnanswered(error), where)
        assert type(uncertain) is DeliveryUncertain
        assert not isinstance(uncertain, TransientError | PermanentError)
    assert classify(DataUnanswered(timeout), where).reason == (
        f"timed out waiting for {where} to answer the message"
    )
    assert classify(DataUnanswered(lost), where).reason == (
        f"connection to {where} lost before it answered the message: Connection lost"
    )
    assert "unreadable reply" in classify(DataUnanswered(garbled), where).reason
    # The same errors before the message went out: transient, as ever.
    assert type(classify(timeout, where)) is TransientError
    assert type(classify(lost, where)) is TransientError
    # A reply to the message is an answer: it is classified by its code.
    assert type(classify(SMTPDataError(451, "4.3.0 try later"), where)) is TransientError
    assert type(classify(SMTPDataError(554, "5.6.0 rejected"), where)) is PermanentError


# --- TLS -----------------------------------------------------------------------------


async def test_starttls_with_trusted_certificate(
    start_server: StartServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server = start_server(tls_context=server_tls, require_starttls=True)
    async with make_pool(server.port, security="starttls", tls_context=client_tls) as pool:
        await send_one(pool)
    assert server.handler.tls == [True]


async def test_starttls_with_untrusted_certificate_fails(
    start_server: StartServer, server_tls: ssl.SSLContext
) -> None:
    server = start_server(tls_context=server_tls, require_starttls=True)
    async with make_pool(server.port, security="starttls") as pool:  # system CAs only
        with pytest.raises(ServerUnavailable, match="certificate") as caught:
            await send_one(pool)
        assert await pool.probe() is False
    assert caught.value.reason.startswith(f"TLS certificate of {HOST}:{server.port} rejected")


async def test_starttls_never_falls_back_to_plain(server: Server) -> None:
    async with make_pool(server.port, security="starttls") as pool:
        with pytest.raises(ServerUnavailable, match="STARTTLS"):
            await send_one(pool)
    assert server.handler.messages == []


async def test_security_none_does_not_upgrade(
    start_server: StartServer, server_tls: ssl.SSLContext
) -> None:
    server = start_server(tls_context=server_tls)  # offers STARTTLS, does not require it
    async with make_pool(server.port) as pool:
        await send_one(pool)
    assert server.handler.tls == [False]


async def test_implicit_tls(
    start_server: StartServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server = start_server(ssl_context=server_tls)
    async with make_pool(server.port, security="tls", tls_context=client_tls) as pool:
        await send_one(pool)
        untrusted = make_pool(server.port, security="tls")
        with pytest.raises(ServerUnavailable, match="certificate"):
            await send_one(untrusted)
        await untrusted.close()
    assert server.handler.messages == [(SENDER, [RCPT], MESSAGE)]
    assert server.handler.tls == [True]


# --- authentication ------------------------------------------------------------------


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, data: LoginPassword
) -> AuthResult:
    """Accepts USER/PASSWORD; a failure reply that (badly) echoes the password."""
    if (data.login, data.password) == (USER.encode(), PASSWORD.encode()):
        return AuthResult(success=True)
    echo = data.password.decode()
    return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad password {echo}")


@pytest.fixture
def auth_server(start_server: StartServer) -> Server:
    return start_server(authenticator=authenticator, auth_require_tls=False)


async def test_auth_login_succeeds(auth_server: Server) -> None:
    async with make_pool(auth_server.port, username=USER, password=PASSWORD) as pool:
        await send_one(pool)
    assert auth_server.handler.authenticated == [True]


async def test_auth_failure_is_permanent_and_hides_the_password(auth_server: Server) -> None:
    wrong = "hunter2-wrong"
    async with make_pool(auth_server.port, username=USER, password=wrong) as pool:
        with pytest.raises(PermanentError) as caught:
            await send_one(pool)
    assert caught.value.reason.startswith("535 5.7.8")
    assert wrong not in caught.value.reason
    assert wrong not in str(caught.value)


async def test_no_auth_without_username(auth_server: Server) -> None:
    async with make_pool(auth_server.port) as pool:
        await send_one(pool)
    assert auth_server.handler.authenticated == [False]


# --- probe and lifecycle -------------------------------------------------------------


async def test_probe(server: Server) -> None:
    pool = make_pool(server.port, size=1)
    assert await pool.probe() is True  # opens a connection and keeps it
    await send_one(pool)
    assert await pool.probe() is True  # NOOP on the idle connection
    assert len(server.handler.peers) == 1
    await pool.close()
    assert await pool.probe() is False
    with pytest.raises(ServerUnavailable, match="closed"):
        await send_one(pool)
