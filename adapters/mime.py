"""Inbound email as raw MIME: turn an RFC 822 message into the few fields the orchestrator reads.

The body is reduced to one piece of plain text: the text/plain alternative when there is one, otherwise the HTML
alternative converted to readable text. Quoted history is kept but marked with "> " at the start of each line, so
that code reading the text can skip lines starting with ">" and see only what the sender wrote this time;
forwarded messages are left unmarked because there the forwarded content is the point. Attachments are not
read; their names are listed on a last line.

Mail in the wild is often broken (wrong charsets, missing headers, not MIME at all), and a webhook cannot ask the
sender to try again, so `parse_email` never raises for broken mail: whatever cannot be read comes back as "".

It does raise `MimeLimitError` for mail over the limits below, checked on the raw bytes before the standard
library parses anything: a sender is untrusted, and the library's parser costs far more than the bytes suggest
(measured here: 1 MiB of repeated headers ~1 s, 1 MiB of `To:` lines 21 s, 24,000 parts 30 s, 3,000 nested
multiparts 4 s, an 8 KiB address list 0.26 s). The webhook answers such mail 413 or 422 naming the limit. Address
headers are parsed structurally only up to `STRUCTURED_HEADER_CHARS` in all; beyond that their encoded words are
decoded and the rest kept as sent.
"""

from __future__ import annotations

import codecs
import email
import email.policy
import re
from email.errors import InvalidHeaderDefect
from email.header import decode_header, make_header
from email.message import EmailMessage, Message

from engine.html import html_to_text

FIELDS = ("from", "to", "subject", "text", "message_id", "in_reply_to")
"""The keys of `parse_email`'s result, always all present."""

_HEADERS = {"from": "From", "to": "To", "subject": "Subject", "message_id": "Message-ID", "in_reply_to": "In-Reply-To"}

# C0 controls other than tab, line feed and carriage return (and DEL): they are never text, and a NUL in
# particular upsets logs, terminals and some databases.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Reply attributions: Gmail and Apple Mail ("On <date>, <name> wrote:"), and the same in French, Spanish and
# German (where the name follows "schrieb"). A digit is required, since every client puts a date there, to keep a
# sentence like "On reflection, here is what I wrote:" from hiding the rest of a message.
_ATTRIBUTION = re.compile(
    r"^(?:(?:On|Le|El)\s.*\d.*\b(?:wrote|a écrit|escribió)\s*:|Am\s.*\d.*\bschrieb\b.*:)$",
)
_ATTRIBUTION_START = re.compile(r"^(?:On|Le|El|Am)\s")
_ORIGINAL_MESSAGE = re.compile(r"^-{2,}\s*Original Message\s*-{2,}$", re.IGNORECASE)
_FORWARDED = re.compile(r"^(?:-{2,}\s*Forwarded message\s*-{2,}|Begin forwarded message:)$", re.IGNORECASE)
# Outlook's header block. Labels may come out wrapped in "*" when another tool rendered them bold.
_BLOCK_FROM = re.compile(r"^\*?From:\*?\s*\S", re.IGNORECASE)
_BLOCK_SENT = re.compile(r"^\*?(?:Sent|Date):", re.IGNORECASE)
_BLOCK_SUBJECT = re.compile(r"^\*?Subject:", re.IGNORECASE)
_BLOCK_ONE_LINE = re.compile(r"^\*?From:.*\b(?:Sent|Date):.*\bSubject:", re.IGNORECASE)
_BLOCK_LINES = 6  # how far below "From:" the Sent/Date and Subject lines may be
_MARKER_MAX = 1000  # characters; no reply marker line is longer
_OUTLOOK_RULE = re.compile(r"^_{10,}$")  # the line Outlook puts above the header block
# Outlook introduces a forwarded message with the same header block as a reply; only the subject tells them
# apart (FW, Fwd, and the French, German and Spanish prefixes TR, WG, RV).
_FORWARD_SUBJECT = re.compile(r"^\s*(?:fwd?|tr|wg|rv)\s*:", re.IGNORECASE)


MAX_HEADER_BYTES = 32 * 1024
"""The message's own header section (up to the first blank line), in bytes. Mail from large providers carries
10-15 KiB (Received, DKIM and ARC chains)."""
MAX_HEADERS = 100
"""Header fields in the message's own header section."""
MAX_PARTS = 50
"""MIME parts (boundary lines of every multipart)."""
MAX_MULTIPARTS = 8
"""Multipart containers (`boundary=` parameters) in the whole message: bounds the nesting depth too."""
STRUCTURED_HEADER_CHARS = 2048
"""Address and message-id headers are parsed structurally (policy.default, ~30 ms per KiB) up to this many
characters in all; longer ones are read as sent, with encoded words decoded."""

MAX_PART_HEADER_BYTES = 32 * 1024
"""The header sections of the MIME parts (after each boundary line), in bytes, all together."""
MAX_CONTENT_PARAMETERS = 100
"""Parameters (`; name=value`) in the message's Content-* header fields, all parts together. The library parses
parameters in Python at ~0.2 ms each (2,000 in one part header: 0.4 s)."""
MAX_RFC2231_SECTIONS = 32
"""RFC 2231 parameter sections (`title*0*=`, `filename*1=`) in the Content-* header fields, all parts together:
the library joins them in superlinear time (100 sections: 73 ms, 2,000: 2.9 s). A long non-ASCII file name
takes two to six."""
MAX_CONTENT_ENCODED_WORDS = 200
"""RFC 2047 encoded words (`=?utf-8?q?...?=`) in the Content-* header fields, all parts together (2,000 in a
part's name and filename: 1.6 s)."""
HTML_MAX_CHARS = 32 * 1024
"""How much of an HTML body is converted to text. The rules read the first 16 KiB of the text; the converter is
linear (engine/html.py), ~1 ms per KiB of dense markup (`<p>a</p>` repeated)."""

QUOTE_SCAN_CHARS = 64 * 1024
"""Reply markers are looked for in the first 64 KiB of the body (the rules read its first 16 KiB): finding them
anywhere in 1 MiB of short lines cost 1.7 s."""

_BOUNDARY = re.compile(rb"""boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))""", re.IGNORECASE)
_RFC2231_SECTION = re.compile(rb"\*[0-9]*\*?[ \t]*=")
_BLANK_LINE = re.compile(rb"^\r?$", re.MULTILINE)
# A header field from its start, with its folded continuation lines (used on every Content-* field, anywhere:
# part headers follow boundary lines).
_FOLDED_LINE = re.compile(rb"[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")


class MimeLimitError(ValueError):
    """Raw mail over one of this module's limits; `limit` names it, `status` is the HTTP answer (413: too large,
    422: too many)."""

    def __init__(self, limit: str, message: str, status: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.status = status


def check_limits(raw: bytes) -> None:
    """`MimeLimitError` if raw mail is over a limit (header section size, header count, multiparts, parts); one
    pass over the bytes, before anything is parsed."""
    end = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=len(raw))
    if end > MAX_HEADER_BYTES:
        raise MimeLimitError("MAX_HEADER_BYTES", f"the email's header section is {end} bytes or more; at most "
                             f"{MAX_HEADER_BYTES} are accepted", 413)
    head = raw[:end]
    fields = sum(1 for line in head.splitlines() if line and line[:1] not in (b" ", b"\t"))
    if fields > MAX_HEADERS:
        raise MimeLimitError("MAX_HEADERS", f"the email has {fields} header fields; at most {MAX_HEADERS} are "
                             "accepted", 422)
    # Case-insensitive regex scans cost ~10 ms per MiB each; a lower-cased copy and `find` locate the few places
    # the patterns need to be tried.
    low = raw.lower()
    declarations = [m.groups() for m in (_BOUNDARY.match(raw, i) for i in _positions(low, b"boundary")) if m]
    boundaries = {quoted or bare for quoted, bare in declarations}
    declared = len(declarations)
    if declared > MAX_MULTIPARTS:
        raise MimeLimitError("MAX_MULTIPARTS", f"the email declares {declared} multipart boundaries; at most "
                             f"{MAX_MULTIPARTS} are accepted (nesting included)", 422)
    parts = sum(raw.count(b"\n--" + b) + raw.startswith(b"--" + b) for b in boundaries)
    if parts > MAX_PARTS + MAX_MULTIPARTS:  # every multipart also has a closing boundary line
        raise MimeLimitError("MAX_PARTS", f"the email has {parts} MIME boundary lines; at most {MAX_PARTS} parts are "
                             "accepted", 422)
    part_headers = sum(_part_header_bytes(raw, b) for b in boundaries)
    if part_headers > MAX_PART_HEADER_BYTES:
        raise MimeLimitError("MAX_PART_HEADER_BYTES", f"the email's MIME part headers are {part_headers} bytes in all; "
                             f"at most {MAX_PART_HEADER_BYTES} are accepted", 413)
    parameters = sections = words = 0
    starts = ([0] if low.startswith(b"content-") else []) + [i + 1 for i in _positions(low, b"\ncontent-")]
    for start in starts:
        field = _FOLDED_LINE.match(raw, start).group()  # type: ignore[union-attr]  # matches the empty string too
        parameters += field.count(b";")
        sections += len(_RFC2231_SECTION.findall(field))
        words += field.count(b"=?")
    if sections > MAX_RFC2231_SECTIONS:
        raise MimeLimitError("MAX_RFC2231_SECTIONS", f"the email's Content-* header fields have {sections} RFC 2231 "
                             f"parameter sections (name*0*=...); at most {MAX_RFC2231_SECTIONS} are accepted", 422)
    if parameters > MAX_CONTENT_PARAMETERS:
        raise MimeLimitError("MAX_CONTENT_PARAMETERS", f"the email's Content-* header fields have {parameters} "
                             f"parameters; at most {MAX_CONTENT_PARAMETERS} are accepted", 422)
    if words > MAX_CONTENT_ENCODED_WORDS:
        raise MimeLimitError("MAX_CONTENT_ENCODED_WORDS", f"the email's Content-* header fields have {words} encoded "
                             f"words (=?...?=); at most {MAX_CONTENT_ENCODED_WORDS} are accepted", 422)


def _positions(data: bytes, needle: bytes) -> list[int]:
    """Every index where `needle` starts in `data`."""
    found = []
    i = data.find(needle)
    while i >= 0:
        found.append(i)
        i = data.find(needle, i + 1)
    return found


def _part_header_bytes(raw: bytes, boundary: bytes) -> int:
    """The bytes of the header sections that follow the boundary lines of `boundary`, each up to its blank line
    (counting stops once the total is over `MAX_PART_HEADER_BYTES`)."""
    total = 0
    marker = b"\n--" + boundary
    pos = -1 if raw.startswith(marker[1:]) else raw.find(marker)
    while total <= MAX_PART_HEADER_BYTES:
        start = raw.find(b"\n", pos + 1)  # the end of the boundary line
        if start < 0:
            break
        window = raw[start + 1:start + 3 + MAX_PART_HEADER_BYTES]
        blank = _BLANK_LINE.search(window)
        size = blank.start() if blank is not None else len(window)
        total += size
        pos = raw.find(marker, start + 1 + size)
        if pos < 0:
            break
    return total


def parse_email(raw: bytes) -> dict[str, str]:
    """A raw RFC 822 message → {"from", "to", "subject", "text", "message_id", "in_reply_to"} (missing headers → "").
    `MimeLimitError` when it is over a limit (`check_limits`); never an error for broken mail."""
    result = dict.fromkeys(FIELDS, "")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, bytes | bytearray | memoryview):
        return result
    raw = bytes(raw)
    check_limits(raw)
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception:
        return result
    budget = [STRUCTURED_HEADER_CHARS]
    for key, name in _HEADERS.items():
        result[key] = _header(msg, name, budget)
    try:
        result["text"] = _text(msg, forwarded=bool(_FORWARD_SUBJECT.match(result["subject"])))
    except Exception:
        # Parsing is lazy in places (nested parts, parameters), so a broken part can still fail here; the
        # headers read above are worth returning on their own.
        result["text"] = ""
    return result


def _header(msg: Message, name: str, budget: list[int]) -> str:
    """One header as decoded text ("" when absent); every To header when there are several. Structured parsing
    spends `budget[0]` characters (shared by the headers of one message); past it a value is read as sent."""
    try:
        raws = [value for key, value in msg.raw_items() if key.lower() == name.lower()]
    except Exception:
        return ""
    if name != "To":
        raws = raws[:1]
    texts = []
    for raw in raws:
        budget[0] -= len(str(raw))
        if budget[0] < 0:
            texts.append(_decode_words(raw))
            continue
        try:
            parsed = msg.policy.header_fetch_parse(name, raw)
            # policy.default re-renders address headers from what it could parse, and what it cannot parse
            # it drops ("a@b@c" becomes "<>", "jane@x.test <jane@x.test>" loses the name): then the header as
            # sent, with its encoded words decoded, says more.
            invalid = any(isinstance(defect, InvalidHeaderDefect) for defect in getattr(parsed, "defects", ()))
            texts.append(_decode_words(raw) if invalid else str(parsed))
        except Exception:
            texts.append(_decode_words(raw))
    return " ".join(_CONTROL.sub("", ", ".join(texts)).split())


def _decode_words(raw: str) -> str:
    """A header value as sent, with RFC 2047 encoded words decoded and raw 8-bit bytes read as UTF-8."""
    # The parser keeps raw 8-bit header bytes as surrogate escapes; UTF-8 is what such headers nearly always are.
    try:
        text = str(raw).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        text = str(raw).encode("utf-8", "replace").decode("utf-8")
    text = " ".join(text.split())
    try:
        return str(make_header(decode_header(text)))
    except Exception:
        return text  # an encoded word with an unknown charset or broken base64: show it as it came


def _text(msg: Message, *, forwarded: bool) -> str:
    """The message body as plain text with quoted history marked, plus the attachment line."""
    # Each step on its own: a part that breaks the attachment walk should not cost the body, nor the reverse.
    try:
        part, text, is_html = _body(msg)
    except Exception:
        part, text, is_html = None, "", False
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if is_html:
        text = html_to_text(text[:HTML_MAX_CHARS])
    lines = [line.rstrip() for line in text.split("\n")]
    first = next((i for i, line in enumerate(lines) if line), len(lines))
    last = next((i for i in range(len(lines) - 1, -1, -1) if lines[i]), -1)
    lines = [line.rstrip() for line in _mark_quoted(lines[first:last + 1], forwarded=forwarded)]
    text = "\n".join(lines)
    try:
        names = _attachment_names(msg, part)
    except Exception:
        names = []
    if names:
        text = (text + "\n\n" if text else "") + f"[attachments: {', '.join(names)}]"
    return text


def _body(msg: Message) -> tuple[Message | None, str, bool]:
    """The part chosen as the body, its decoded text, and whether that text is HTML."""
    if not isinstance(msg, EmailMessage):
        return None, "", False
    for subtype in ("plain", "html"):
        part = msg.get_body(preferencelist=(subtype,))
        if part is None:
            continue
        text = _decode(part)
        # An empty text/plain alternative next to a real HTML one happens (some senders only fill the HTML).
        if text.strip():
            return part, text, subtype == "html"
    return None, "", False


def _decode(part: Message) -> str:
    """A leaf part's content as text, undoing the transfer encoding and the charset."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return _decode_bytes(payload, part.get_content_charset())


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared (possibly wrong or unknown) charset as text; undecodable bytes become U+FFFD."""
    name: str | None = None
    if charset:
        try:
            name = codecs.lookup(charset).name
        except LookupError:
            name = None
    attempts: list[str] = []
    if name == "iso8859-1":
        # Mail labelled latin-1 is nearly always windows-1252 (curly quotes, euro sign in 0x80-0x9F, which
        # latin-1 maps to invisible control characters); cp1252 fails on its five unused bytes, then latin-1 runs.
        attempts.append("cp1252")
    if name:
        attempts.append(name)
    # Undeclared or mislabelled (us-ascii) 8-bit text is UTF-8 far more often than anything else.
    attempts.append("utf-8")
    for encoding in attempts:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    try:
        return data.decode(name or "utf-8", errors="replace")
    except LookupError:
        # A codec that exists but is not a text encoding (charset="base64" has been seen).
        return data.decode("utf-8", errors="replace")


def _attachment_names(msg: Message, body: Message | None) -> list[str]:
    """File names of the parts that are not the body, in message order."""
    names: list[str] = []
    stack: list[Message] = [msg]
    while stack:
        part = stack.pop()
        if part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(sub for sub in reversed(payload) if isinstance(sub, Message))
            continue
        # message/rfc822 parts are not opened: their own attachments belong to the attached message.
        if part is body:
            continue
        filename = part.get_filename()
        if filename:
            names.append(" ".join(_CONTROL.sub("", filename).split()))
        elif part.get_content_disposition() == "attachment":
            names.append(f"(unnamed {part.get_content_type()})")
    return names


def _mark_quoted(lines: list[str], *, forwarded: bool) -> list[str]:
    """Prefix "> " to every line from the first reply marker on; lines already starting with ">" are left alone.

    `forwarded` says the subject is a forward (FW:, Fwd:), in which case an Outlook header block introduces the
    forwarded message rather than quoted history.
    """
    seen = 0
    for i, line in enumerate(lines):
        seen += len(line) + 1
        if seen > QUOTE_SCAN_CHARS:
            break
        stripped = line.strip()
        # Markers are short lines; skipping long ones also keeps the patterns below from crawling through
        # a megabyte-long line.
        if not stripped or line.startswith(">") or len(stripped) > _MARKER_MAX:
            continue
        if _FORWARDED.match(stripped):
            # Everything below is the forwarded message, the substance of the email, including any history
            # inside it.
            return lines
        start: int | None = None
        if _ORIGINAL_MESSAGE.match(stripped) or _is_header_block(lines, i):
            if forwarded:
                return lines
            start = _rule_above(lines, i)
        elif _is_attribution(lines, i):
            start = i
        if start is not None:
            return lines[:start] + [line if line.startswith(">") else "> " + line for line in lines[start:]]
    return lines


def _is_attribution(lines: list[str], i: int) -> bool:
    """Whether an "On <date>, <name> wrote:" line starts at `i`; clients wrap it over up to three lines."""
    if not _ATTRIBUTION_START.match(lines[i].strip()):
        return False
    joined = ""
    for line in lines[i:i + 3]:
        if not line.strip() or line.startswith(">"):
            break
        joined = f"{joined} {line.strip()}".strip()
        if len(joined) > 400:
            break
        if _ATTRIBUTION.match(joined):
            return True
    return False


def _is_header_block(lines: list[str], i: int) -> bool:
    """Whether an Outlook "From: … Sent: … To: … Subject: …" block starts at `i`."""
    first = lines[i].strip()
    if _BLOCK_ONE_LINE.match(first):
        return True
    if not _BLOCK_FROM.match(first):
        return False
    sent = subject = False
    for line in lines[i + 1:i + 1 + _BLOCK_LINES]:
        stripped = line.strip()
        if not stripped:
            break
        sent = sent or bool(_BLOCK_SENT.match(stripped))
        subject = subject or bool(_BLOCK_SUBJECT.match(stripped))
    return sent and subject


def _rule_above(lines: list[str], i: int) -> int:
    """`i`, or the index of Outlook's "_____" rule when it sits just above line `i` (blank lines between)."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return j if j >= 0 and _OUTLOOK_RULE.match(lines[j].strip()) else i
