"""Wire encodings for email: header folding, RFC 2047 encoded-words, QP and base64 bodies.

Everything here works on one-line header values and LF- or CRLF-separated text and
returns ASCII with CRLF line ends (RFC 5322, RFC 2045-2047):

- header lines fold at spaces under 78 characters; a longer line only for an
  unbreakable token, and words over 900 characters are encoded, as those can be split;
- values that are not plain ASCII (or that a parser could misread as an encoded-word)
  become `=?utf-8?b?…?=` encoded-words, split between whole characters;
- text bodies are quoted-printable (lines of at most 76 characters, trailing whitespace,
  a line-initial `From ` and a line-initial "." encoded), or base64 when mostly non-ASCII
  (the shorter). No line of a body starts with ".", so SMTP's dot-stuffing has nothing
  to do (`service.mail.message.WireMessage`).
"""

from __future__ import annotations

import codecs
import re
from binascii import b2a_base64
from collections.abc import Iterable
from functools import lru_cache

__all__ = [
    "address_header",
    "base64_lines",
    "encoded_words",
    "fold",
    "multipart",
    "quoted_printable",
    "text_header",
    "text_part",
]

_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MAX_LINE = 78  # RFC 5322 §2.1.1: SHOULD stay under 78 characters ...
_MAX_TOKEN = 900  # ... MUST stay under 998: longer words are encoded, as they can be split
_EW_PREFIX, _EW_SUFFIX = "=?utf-8?b?", "?="
_EW_PAYLOAD = 45  # bytes per encoded-word: 60 base64 chars, 72 in all (RFC 2047: ≤ 75)
_QP_LINE = 76  # RFC 2045 §6.7: encoded lines at most 76 characters, soft break included
_QP_HEX = [f"={byte:02X}" for byte in range(256)]
_EQUALS = ord("=")
_DOT = ord(".")
_QP_CONTROL = bytes([*range(0x09), *range(0x0B, 0x20), 0x7F])  # all but tab and LF
_QP_CONTROL_RE = re.compile(b"[" + re.escape(_QP_CONTROL) + b"]+")
_QP_ERRORS = "herald.quoted-printable"
_WS = (b" ", b"\t")
#: Encoded lines remembered: the few hundred lines of the templates in use, and room for
#: the lines of each email's own values (names, links) that pass through.
_QP_LINES_REMEMBERED = 4096
_BASE64_LINE = 57  # bytes per 76-character base64 line
_PART_HEAD = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: {}\r\n'


def text_header(name: str, value: str) -> str:
    """An unstructured header (RFC 5322 §3.2.5) from a one-line value."""
    if _plain(value):
        line = f"{name}: {value}" if value else f"{name}:"
        if len(line) <= _MAX_LINE:
            return line
        words = value.split(" ")
        if max(map(len, words)) <= _MAX_TOKEN:
            return fold(name + ":", words)
    return fold(name + ":", encoded_words(value, len(name) + 2))


def address_header(name: str, display_name: str, address: str) -> str:
    """`Name: Display Name <addr>`: the name as atoms, a quoted string or encoded-words."""
    if not display_name:
        return f"{name}: {address}"
    if not _plain(display_name) or len(display_name) > _MAX_TOKEN:
        words = encoded_words(display_name, len(name) + 2)
    elif _ATOMS.fullmatch(display_name):
        words = display_name.split(" ")
    else:
        quoted = display_name.replace("\\", "\\\\").replace('"', '\\"')
        words = f'"{quoted}"'.split(" ")  # folding whitespace is allowed in a quoted string
    return fold(name + ":", [*words, f"<{address}>"])


def _plain(value: str) -> bool:
    """Printable ASCII that no parser could take for an encoded-word."""
    return value.isascii() and "=?" not in value


def fold(head: str, words: Iterable[str]) -> str:
    """`head` and `words`, space-separated, folded before a word that would pass 78."""
    lines, line = [], head
    for word in words:
        if len(line) + 1 + len(word) > _MAX_LINE and line != head:
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines)


def encoded_words(value: str, used: int) -> list[str]:
    """`value` as base64 encoded-words; the first one fits after `used` columns.

    Words split between characters, never inside one; RFC 2047 decoders ignore the
    folding whitespace between adjacent encoded-words.
    """
    data = value.encode("utf-8", "replace")
    overhead = len(_EW_PREFIX) + len(_EW_SUFFIX) + 1
    budget = max(6, min(_EW_PAYLOAD, (_MAX_LINE - used - overhead) // 4 * 3))
    words, start, size = [], 0, len(data)
    while start < size:
        end = min(start + budget, size)
        while end < size and data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte
            end -= 1
        payload = b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(_EW_PREFIX + payload + _EW_SUFFIX)
        start, budget = end, _EW_PAYLOAD
    return words


def multipart(boundary: str, *parts: bytes) -> bytes:
    """The body of a multipart entity: parts between delimiter lines, then the close."""
    delimiter = f"--{boundary}\r\n".encode("ascii")
    chunks = [delimiter]
    for index, part in enumerate(parts):
        if index:
            chunks += [b"\r\n", delimiter]
        chunks.append(part)
    chunks.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks)


def text_part(subtype: str, text: str, *, last: bool = False) -> bytes:
    """One text entity: its headers, a blank line, the encoded text with CRLF lines.

    `last`: the entity ends the message (no boundary follows), so it must end with a
    CRLF; one that the text does not have is added as a soft line break (QP) or an
    ignored line break (base64), which decoders drop.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii() or not _mostly_multibyte(text):
        encoding, body = "quoted-printable", quoted_printable(text)
        if last and not body.endswith(b"\r\n"):
            body = _qp_soft_end(body)
    else:
        encoding = "base64"
        body = base64_lines(text.replace("\n", "\r\n").encode("utf-8", "replace"))
        if last and not body.endswith(b"\r\n"):
            body += b"\r\n"
    return _PART_HEAD.format(subtype, encoding).encode("ascii") + b"\r\n" + body


def _qp_soft_end(body: bytes) -> bytes:
    """End a QP body with a soft line break, which adds a CRLF but no character."""
    start = body.rfind(b"\r\n") + 2 if b"\r\n" in body else 0
    line = body[start:]
    if len(line) < _QP_LINE:
        return body + b"=\r\n"
    cut = _QP_LINE - 1  # the "=" must fit too: break the line once more
    if line[cut - 1] == _EQUALS:
        cut -= 1
    elif line[cut - 2] == _EQUALS:
        cut -= 2
    return body[:start] + line[:cut] + b"=\r\n" + _no_dot_first(line[cut:]) + b"=\r\n"


def _no_dot_first(line: bytes) -> bytes:
    """`line` with a leading "." encoded: no line of a body starts with one."""
    return b"=2E" + line[1:] if line.startswith(b".") else line


def _mostly_multibyte(text: str) -> bool:
    """Whether base64 is the shorter encoding: many characters take 2 to 4 UTF-8 bytes."""
    size = len(text.encode("utf-8", "replace"))
    return (size - len(text)) * 4 > size


def base64_lines(data: bytes) -> bytes:
    """RFC 2045 base64 in lines of 76 characters."""
    step = _BASE64_LINE
    lines = [b2a_base64(data[i : i + step], newline=False) for i in range(0, len(data), step)]
    return b"\r\n".join(lines)


def quoted_printable(text: str) -> bytes:
    """RFC 2045 quoted-printable of LF-separated text, with CRLF line ends.

    Also encodes a line-initial `From ` (mbox gateways would turn it into `>From `), a
    line-initial "." (no dot-stuffing needed) and whitespace at the end of a line
    (transports may strip it). Every rule is local to one line, and most lines of an
    email are its template's, the same in every render: lines are encoded once and
    remembered (`_qp_text_line`).
    """
    return b"\r\n".join(map(_qp_text_line, text.split("\n")))


@lru_cache(maxsize=_QP_LINES_REMEMBERED)
def _qp_text_line(line: str) -> bytes:
    """One line of text, quoted-printable, without its line end."""
    data = line.replace("=", "=3D").encode("ascii", _QP_ERRORS)
    if len(data.translate(None, _QP_CONTROL)) != len(data):
        data = _QP_CONTROL_RE.sub(_qp_escape_bytes, data)
    if len(data) > _QP_LINE or data.startswith((b"From ", b".")) or data.endswith(_WS):
        return _qp_line(data)
    return data


def _qp_escape_run(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: `=XX` for every UTF-8 byte of a run of non-ASCII characters."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return _qp_run(error.object[error.start : error.end]), error.end


@lru_cache(maxsize=4096)
def _qp_run(run: str) -> str:
    """`=XX` for every UTF-8 byte of `run` (the same few runs recur: ä, ö, ü, „…)."""
    return "".join([_QP_HEX[byte] for byte in run.encode("utf-8", "replace")])


def _qp_escape_bytes(match: re.Match[bytes]) -> bytes:
    """`=XX` for every byte of a run of ASCII control characters."""
    return "".join([_QP_HEX[byte] for byte in match.group()]).encode("ascii")


def _qp_line(line: bytes) -> bytes:
    """Fix one encoded line: protect `From `, a leading "." and trailing whitespace,
    soft-break it."""
    if line.startswith(b"From "):
        line = b"=46" + line[1:]
    line = _no_dot_first(line)
    if line.endswith(_WS):
        line = line[:-1] + _QP_HEX[line[-1]].encode("ascii")
    size = len(line)
    if size <= _QP_LINE:
        return line
    from_inside = b"From " in line
    chunks, start = [], 0
    while size - start > _QP_LINE:
        cut = start + _QP_LINE - 1  # 75 characters and the "=" of the soft break
        if from_inside and line.startswith(b"From ", cut):
            cut -= 1  # no continuation line may start with "From " either
        if line[cut - 1] == _EQUALS:  # never split an =XX sequence
            cut -= 1
        elif line[cut - 2] == _EQUALS:
            cut -= 2
        if line[cut] == _DOT:  # nor with "."
            line = line[:cut] + b"=2E" + line[cut + 1 :]
            size += 2
        chunks.append(line[start:cut])
        start = cut
    chunks.append(line[start:])
    return b"=\r\n".join(chunks)


# The ASCII codec runs in C and calls this handler only for runs of non-ASCII text.
codecs.register_error(_QP_ERRORS, _qp_escape_run)
