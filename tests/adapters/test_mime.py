"""Inbound email as raw MIME: headers, body choice, charsets, HTML to text, attachments, quoted replies, bad input.

Messages are written out as the bytes a mail server would hand over (CRLF line endings, encoded words,
transfer encodings) rather than built with the email package, so that the parser is tested on mail as sent.
"""

from __future__ import annotations

import time

import pytest

from adapters.mime import (
    FIELDS,
    MAX_HEADERS,
    MAX_PARTS,
    STRUCTURED_HEADER_CHARS,
    MimeLimitError,
    html_to_text,
    parse_email,
)


def wire(message: bytes) -> bytes:
    """The message with CRLF line endings, as it arrives over SMTP."""
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


PLAIN = wire(b"""\
Return-Path: <maria@example.org>
Received: from mail.example.org (mail.example.org [203.0.113.7])
\tby mx.astralis.test with ESMTPS id 4Zx; Sun, 1 Mar 2026 12:00:00 +0000
From: Maria Rossi <maria@example.org>
To: bookings@trattoria.test
Subject: Table for four on Saturday
Date: Sun, 1 Mar 2026 12:59:58 +0100
Message-ID: <CAB1234567@mail.example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: 7bit

Hello,

Could we book a table for four on Saturday at 8pm?   \t

Thanks,
Maria
""")


def test_plain_text_message() -> None:
    parsed = parse_email(PLAIN)
    assert parsed == {
        "from": "Maria Rossi <maria@example.org>",
        "to": "bookings@trattoria.test",
        "subject": "Table for four on Saturday",
        "text": "Hello,\n\nCould we book a table for four on Saturday at 8pm?\n\nThanks,\nMaria",
        "message_id": "<CAB1234567@mail.example.org>",
        "in_reply_to": "",
    }
    assert list(parsed) == list(FIELDS)


def test_line_endings_are_normalized_and_trailing_whitespace_stripped() -> None:
    text = parse_email(PLAIN)["text"]
    assert "\r" not in text
    assert all(line == line.rstrip() for line in text.split("\n"))


def test_in_reply_to_and_folded_subject() -> None:
    raw = wire(b"""\
From: bob@example.com
To: support@shop.test
Subject: Re: Order 1042 arrived damaged,
 can you send a replacement?
Message-ID: <reply-2@example.com>
In-Reply-To: <orig-1@shop.test>
References: <orig-1@shop.test>

Any news?
""")
    parsed = parse_email(raw)
    assert parsed["subject"] == "Re: Order 1042 arrived damaged, can you send a replacement?"
    assert parsed["in_reply_to"] == "<orig-1@shop.test>"
    assert parsed["message_id"] == "<reply-2@example.com>"
    assert parsed["text"] == "Any news?"


def test_multipart_alternative_prefers_text_plain() -> None:
    raw = wire(b"""\
From: Maria Rossi <maria@example.org>
To: bookings@trattoria.test
Subject: Table
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="000000000000b1d2e3f4"

--000000000000b1d2e3f4
Content-Type: text/plain; charset="UTF-8"

Plain version: table for four, please.

--000000000000b1d2e3f4
Content-Type: text/html; charset="UTF-8"

<div dir="ltr">HTML version: <b>table for four</b>, please.</div>

--000000000000b1d2e3f4--
""")
    assert parse_email(raw)["text"] == "Plain version: table for four, please."


def test_multipart_alternative_falls_back_to_html_when_plain_is_empty() -> None:
    raw = wire(b"""\
From: a@example.org
Subject: x
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b"

--b
Content-Type: text/plain; charset="UTF-8"


--b
Content-Type: text/html; charset="UTF-8"

<p>Only the HTML says anything.</p>
--b--
""")
    assert parse_email(raw)["text"] == "Only the HTML says anything."


HTML_ONLY = wire(b"""\
From: "Newsletter Team" <news@vendor.test>
To: owner@bakery.test
Subject: Your invoice is ready
MIME-Version: 1.0
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: 7bit

<!DOCTYPE html>
<html>
<head>
  <title>Invoice ready</title>
  <meta charset="utf-8">
  <style>p { color: red; } .hidden { display: none }</style>
</head>
<body>
  <script type="text/javascript">var tracking = "do not show me";</script>
  <h1>Invoice   #2031</h1>
  <p>Dear customer,<br>your invoice for <b>March</b> is ready.<br/>Total: &euro;120&nbsp;&amp; no fees &lt;VAT incl.&gt; &#8212; thanks!</p>
  <p>
     Download it
     <a href="https://vendor.test/invoices/2031?utm=1">from your account</a>.
  </p>
  <div>Questions?</div><div>Reply to this email.</div>
  <ul><li>Item one</li><li>Item two</li></ul>
  <table><tr><td>Subtotal</td><td>100</td></tr><tr><td>VAT</td><td>20</td></tr></table>
  <style>.late { }</style>
</body>
</html>
""")


def test_html_only_is_converted_to_readable_text() -> None:
    assert parse_email(HTML_ONLY)["text"] == (
        "Invoice #2031\n"
        "\n"
        "Dear customer,\n"
        "your invoice for March is ready.\n"
        "Total: €120 & no fees <VAT incl.> — thanks!\n"
        "\n"
        "Download it from your account.\n"
        "\n"
        "Questions?\n"
        "Reply to this email.\n"
        "\n"
        "- Item one\n"
        "- Item two\n"
        "\n"
        "Subtotal 100\n"
        "VAT 20"
    )


def test_html_only_drops_script_style_and_head() -> None:
    text = parse_email(HTML_ONLY)["text"]
    for hidden in ("tracking", "color: red", "Invoice ready", ".late", "utm="):
        assert hidden not in text


def test_html_to_text_copes_with_unclosed_head_and_broken_markup() -> None:
    assert html_to_text("<html><head><title>t</title><body><p>Hi<p>there &bogus; <b>bold") == "Hi\n\nthere &bogus; bold"
    assert html_to_text("<div>a<!-- a comment --></div><![if !mso]><div>b</div>") == "a\nb"
    assert html_to_text("") == ""


@pytest.mark.parametrize(("html", "expected"), [
    pytest.param("<div>Hi,</div><div><br></div><div>Line two<br></div><div>Line three</div>", "Hi,\n\nLine two\nLine three", id="gmail-blank-line"),
    pytest.param("one<br><br>two<br>three", "one\n\ntwo\nthree", id="double-br"),
    pytest.param("<p>a</p><p>b</p>", "a\n\nb", id="paragraphs"),
    pytest.param("<div>a</div><br><div>b</div>", "a\n\nb", id="br-between-blocks"),
    pytest.param("<h2>Title</h2>Body", "Title\n\nBody", id="heading"),
    pytest.param("<p>x</p>\n\n\n<p></p><p></p><div></div><p>y</p>", "x\n\ny", id="blank-lines-collapsed"),
    pytest.param("<pre>  a\n  b</pre>", "a\nb", id="pre-keeps-lines"),
])
def test_html_line_breaks(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


QP_UTF8 = wire(b"""\
From: =?UTF-8?Q?=C3=8D=C3=B1igo_Garc=C3=ADa?= <inigo@example.es>
To: reservas@restaurante.test
Subject: =?UTF-8?Q?Reserva_para_el_s=C3=A1bado?=
MIME-Version: 1.0
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

Hola, =C2=BFtienen disponibilidad el s=C3=A1bado? Somos cuatro. Gracias, =
=C3=8D=C3=B1igo =E2=80=94 un saludo
""")


def test_quoted_printable_utf8_with_accents() -> None:
    parsed = parse_email(QP_UTF8)
    assert parsed["text"] == "Hola, ¿tienen disponibilidad el sábado? Somos cuatro. Gracias, Íñigo — un saludo"
    assert parsed["from"] == "Íñigo García <inigo@example.es>"
    assert parsed["subject"] == "Reserva para el sábado"


def test_base64_body() -> None:
    raw = wire(b"""\
From: zoe@example.fr
To: contact@bistro.test
Subject: Table
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

Qm9uam91ciwKSmUgdm91ZHJhaXMgcsOpc2VydmVyIHVuZSB0YWJsZSBwb3VyIDQgcGVyc29ubmVz
IHNhbWVkaS4KTWVyY2ksIFpvw6sK
""")
    assert parse_email(raw)["text"] == "Bonjour,\nJe voudrais réserver une table pour 4 personnes samedi.\nMerci, Zoë"


def test_latin1_charset() -> None:
    raw = wire(b"""\
From: kunde@example.de
To: shop@laden.test
Subject: Bestellung
MIME-Version: 1.0
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: 8bit

Gr\xfc\xdfe aus M\xfcnchen, der Preis war 12\x80 \x93zu viel\x94.
""")
    # Mail labelled latin-1 is really windows-1252: 0x80 is the euro sign, 0x93/0x94 curly quotes.
    assert parse_email(raw)["text"] == "Grüße aus München, der Preis war 12€ “zu viel”."


def test_latin1_quoted_printable() -> None:
    raw = wire(b"""\
From: a@example.fr
Subject: x
Content-Type: text/plain; charset="ISO-8859-1"
Content-Transfer-Encoding: quoted-printable

Caf=E9 cr=E8me br=FBl=E9e
""")
    assert parse_email(raw)["text"] == "Café crème brûlée"


@pytest.mark.parametrize(("charset", "expected"), [
    pytest.param(b'charset="utf-8"', "caf\ufffd ok", id="invalid-utf8-replaced"),
    pytest.param(b'charset="x-no-such-charset"', "caf\ufffd ok", id="unknown-charset"),
    pytest.param(b'charset="base64"', "caf\ufffd ok", id="not-a-text-codec"),
    pytest.param(b'charset="us-ascii"', "caf\ufffd ok", id="ascii-with-8bit"),
])
def test_undecodable_bytes_are_replaced_not_raised(charset: bytes, expected: str) -> None:
    raw = b"From: a@example.org\r\nContent-Type: text/plain; " + charset + b"\r\n\r\ncaf\xe9 ok\r\n"
    assert parse_email(raw)["text"] == expected


def test_mislabelled_ascii_that_is_really_utf8() -> None:
    raw = b"From: a@example.org\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\ncaf\xc3\xa9\r\n"
    assert parse_email(raw)["text"] == "café"


def test_rfc2047_encoded_subject_and_from() -> None:
    raw = wire(b"""\
From: =?UTF-8?B?Sm9zw6kgUMOpcmV6?= <jose@example.com>
To: =?ISO-8859-1?Q?Fran=E7ois?= <francois@resto.test>
Subject: =?UTF-8?B?UsOpc2VydmF0aW9uIHBvdXIgc2FtZWRpIOKAkyA0IHBlcnNvbm5lcw==?=
Content-Type: text/plain

ok
""")
    parsed = parse_email(raw)
    assert parsed["from"] == "José Pérez <jose@example.com>"
    assert parsed["to"] == "François <francois@resto.test>"
    assert parsed["subject"] == "Réservation pour samedi – 4 personnes"


def test_raw_utf8_headers_are_read_too() -> None:
    raw = "From: Zoë <zoe@example.fr>\r\nSubject: Crème brûlée\r\n\r\nok\r\n".encode()
    parsed = parse_email(raw)
    assert parsed["from"] == "Zoë <zoe@example.fr>"
    assert parsed["subject"] == "Crème brûlée"


def test_unparseable_address_header_is_returned_as_sent() -> None:
    # The email package would render these as "<>" and "jane@x.test"; the text as sent says more.
    raw = b"From: =?UTF-8?Q?Ren=C3=A9e?= <renee@@example.org>\r\nTo: jane@x.test <jane@x.test>\r\n\r\nhi\r\n"
    parsed = parse_email(raw)
    assert parsed["from"] == "Renée <renee@@example.org>"
    assert parsed["to"] == "jane@x.test <jane@x.test>"


def test_several_recipients() -> None:
    raw = wire(b"""\
From: boss@company.test
To: alice@company.test, "Doe, John" <john@company.test>,
 =?UTF-8?Q?Ren=C3=A9e?= <renee@company.test>
Subject: Team lunch

Friday?
""")
    assert parse_email(raw)["to"] == 'alice@company.test, "Doe, John" <john@company.test>, Renée <renee@company.test>'


WITH_ATTACHMENTS = wire(b"""\
From: accounts@supplier.test
To: owner@bakery.test
Subject: Invoice 2031
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain; charset=utf-8

Please find the invoice attached.

--inner
Content-Type: text/html; charset=utf-8

<p>Please find the invoice <b>attached</b>.</p>
--inner--

--outer
Content-Type: application/pdf; name="invoice-2031.pdf"
Content-Disposition: attachment; filename="invoice-2031.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQgZmFrZSBpbnZvaWNlCg==

--outer
Content-Type: text/plain; charset=utf-8; name="notes.txt"
Content-Disposition: attachment; filename*=UTF-8''d%C3%A9tails.txt

These notes must not show up in the body.

--outer
Content-Type: image/png
Content-Disposition: attachment
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--outer--
""")


def test_attachments_are_ignored_and_listed() -> None:
    text = parse_email(WITH_ATTACHMENTS)["text"]
    assert text == (
        "Please find the invoice attached.\n"
        "\n"
        "[attachments: invoice-2031.pdf, détails.txt, (unnamed image/png)]"
    )
    assert "PDF" not in text
    assert "must not show up" not in text


def test_attached_message_is_listed_not_opened() -> None:
    raw = wire(b"""\
From: a@example.org
Subject: see attached
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="m"

--m
Content-Type: text/plain

See the attached email.
--m
Content-Type: message/rfc822
Content-Disposition: attachment; filename="original.eml"

From: c@example.org
Subject: inner
Content-Type: multipart/mixed; boundary="n"

--n
Content-Type: text/plain

inner body
--n
Content-Type: application/pdf
Content-Disposition: attachment; filename="inner.pdf"

x
--n--
--m--
""")
    assert parse_email(raw)["text"] == "See the attached email.\n\n[attachments: original.eml]"


GMAIL_REPLY = wire(b"""\
From: Maria Rossi <maria@example.org>
To: bookings@trattoria.test
Subject: Re: Table for four on Saturday
In-Reply-To: <conf-1@trattoria.test>
Content-Type: text/plain; charset="UTF-8"

Perfect, see you then!
Maria

On Sun, Mar 1, 2026 at 2:15 PM Trattoria Bookings <bookings@trattoria.test>
wrote:

> Dear Maria,
>
> Your table for four on Saturday at 8pm is confirmed.
>
> Trattoria
""")


def test_gmail_reply_quoted_part_is_prefixed() -> None:
    assert parse_email(GMAIL_REPLY)["text"] == (
        "Perfect, see you then!\n"
        "Maria\n"
        "\n"
        "> On Sun, Mar 1, 2026 at 2:15 PM Trattoria Bookings <bookings@trattoria.test>\n"
        "> wrote:\n"
        ">\n"
        "> Dear Maria,\n"
        ">\n"
        "> Your table for four on Saturday at 8pm is confirmed.\n"
        ">\n"
        "> Trattoria"
    )


def test_reply_without_quote_characters_is_prefixed_too() -> None:
    # Some clients (and HTML converted to text) put the history below the attribution with no ">" at all.
    raw = wire(b"""\
From: a@example.org
Subject: Re: delivery
Content-Type: text/plain

Tuesday works.

On 2 Mar 2026, at 09:12, Shop <shop@example.test> wrote:

Can we deliver on Tuesday?
Regards
""")
    assert parse_email(raw)["text"] == (
        "Tuesday works.\n"
        "\n"
        "> On 2 Mar 2026, at 09:12, Shop <shop@example.test> wrote:\n"
        ">\n"
        "> Can we deliver on Tuesday?\n"
        "> Regards"
    )


@pytest.mark.parametrize("attribution", [
    "Le lun. 2 mars 2026 à 10:00, Chef <chef@resto.test> a écrit :",
    "Am Mo., 2. März 2026 um 10:00 Uhr schrieb Chef <chef@resto.test>:",
    "El lun, 2 mar 2026 a las 10:00, Chef (<chef@resto.test>) escribió:",
])
def test_attributions_in_other_languages(attribution: str) -> None:
    raw = f"From: a@example.org\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nOui.\r\n\r\n{attribution}\r\n> Question?\r\n"
    assert parse_email(raw.encode())["text"] == f"Oui.\n\n> {attribution}\n> Question?"


def test_a_sentence_starting_with_on_is_not_an_attribution() -> None:
    raw = b"From: a@example.org\r\n\r\nOn reflection, this is what I wrote:\r\nwe need two more chairs.\r\n"
    assert parse_email(raw)["text"] == "On reflection, this is what I wrote:\nwe need two more chairs."


def test_html_gmail_reply_is_marked_after_conversion() -> None:
    raw = wire(b"""\
From: a@example.org
Subject: Re: quote
Content-Type: text/html; charset=UTF-8

<div dir="ltr">Yes, go ahead.</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Mar 2, 2026 at 10:00 AM Jane &lt;<a href="mailto:jane@x.test">jane@x.test</a>&gt; wrote:<br></div><blockquote class="gmail_quote"><div>Shall we proceed with the order?</div></blockquote></div>
""")
    assert parse_email(raw)["text"] == (
        "Yes, go ahead.\n"
        "\n"
        "> On Mon, Mar 2, 2026 at 10:00 AM Jane <jane@x.test> wrote:\n"
        ">\n"
        "> Shall we proceed with the order?"
    )


OUTLOOK_REPLY = wire(b"""\
From: "Smith, John" <john.smith@corp.test>
To: sales@workshop.test
Subject: RE: Quote request
Content-Type: text/plain; charset="us-ascii"

Thanks, please go ahead with option B.

John

-----Original Message-----
From: Sales <sales@workshop.test>
Sent: Monday, March 2, 2026 10:04 AM
To: Smith, John <john.smith@corp.test>
Subject: Quote request

Option A: 1200 EUR
Option B: 1500 EUR
""")


def test_outlook_original_message_block_is_prefixed() -> None:
    parsed = parse_email(OUTLOOK_REPLY)
    assert parsed["from"] == '"Smith, John" <john.smith@corp.test>'
    assert parsed["text"] == (
        "Thanks, please go ahead with option B.\n"
        "\n"
        "John\n"
        "\n"
        "> -----Original Message-----\n"
        "> From: Sales <sales@workshop.test>\n"
        "> Sent: Monday, March 2, 2026 10:04 AM\n"
        "> To: Smith, John <john.smith@corp.test>\n"
        "> Subject: Quote request\n"
        ">\n"
        "> Option A: 1200 EUR\n"
        "> Option B: 1500 EUR"
    )


def test_outlook_header_block_without_original_message_line() -> None:
    raw = wire(b"""\
From: john@corp.test
Subject: RE: Quote request
Content-Type: text/plain

Option B, please.

________________________________
From: Sales <sales@workshop.test>
Sent: Monday, March 2, 2026 10:04 AM
To: John <john@corp.test>
Subject: Quote request

Option A or B?
""")
    assert parse_email(raw)["text"] == (
        "Option B, please.\n"
        "\n"
        "> ________________________________\n"
        "> From: Sales <sales@workshop.test>\n"
        "> Sent: Monday, March 2, 2026 10:04 AM\n"
        "> To: John <john@corp.test>\n"
        "> Subject: Quote request\n"
        ">\n"
        "> Option A or B?"
    )


def test_a_lone_from_line_is_not_a_header_block() -> None:
    raw = b"From: a@example.org\r\n\r\nFrom: the warehouse, two pallets\r\narrive tomorrow.\r\n"
    assert parse_email(raw)["text"] == "From: the warehouse, two pallets\narrive tomorrow."


GMAIL_FORWARD = wire(b"""\
From: Owner <owner@bakery.test>
To: assistant@bakery.test
Subject: Fwd: Wedding cake order
Content-Type: text/plain; charset="UTF-8"

Can you handle this one?

---------- Forwarded message ---------
From: Laura Bianchi <laura@example.org>
Date: Sun, Mar 1, 2026 at 6:02 PM
Subject: Wedding cake order
To: <owner@bakery.test>


Hi, we'd like a three-tier cake for 80 guests on June 14.

On Sat, Feb 28, 2026 at 9:00 AM Owner <owner@bakery.test> wrote:
> Happy to help, what date?
""")


def test_forwarded_message_is_kept_unquoted() -> None:
    text = parse_email(GMAIL_FORWARD)["text"]
    assert text == (
        "Can you handle this one?\n"
        "\n"
        "---------- Forwarded message ---------\n"
        "From: Laura Bianchi <laura@example.org>\n"
        "Date: Sun, Mar 1, 2026 at 6:02 PM\n"
        "Subject: Wedding cake order\n"
        "To: <owner@bakery.test>\n"
        "\n"
        "\n"
        "Hi, we'd like a three-tier cake for 80 guests on June 14.\n"
        "\n"
        "On Sat, Feb 28, 2026 at 9:00 AM Owner <owner@bakery.test> wrote:\n"
        "> Happy to help, what date?"
    )


def test_outlook_forward_is_kept_unquoted() -> None:
    # Outlook introduces a forward with the same header block as a reply; the FW: subject tells them apart.
    raw = wire(b"""\
From: owner@bakery.test
Subject: FW: Wedding cake order
Content-Type: text/plain

FYI

From: Laura Bianchi <laura@example.org>
Sent: Sunday, March 1, 2026 6:02 PM
To: owner@bakery.test
Subject: Wedding cake order

A three-tier cake for 80 guests, please.
""")
    text = parse_email(raw)["text"]
    assert "> " not in text
    assert text.endswith("\nA three-tier cake for 80 guests, please.")


def test_reply_above_a_forward_quotes_from_the_reply_marker() -> None:
    raw = wire(b"""\
From: a@example.org
Subject: Re: Fwd: cake
Content-Type: text/plain

Done.

On Mon, Mar 2, 2026 at 8:00 AM Owner <owner@bakery.test> wrote:
---------- Forwarded message ---------
A cake, please.
""")
    assert parse_email(raw)["text"] == (
        "Done.\n"
        "\n"
        "> On Mon, Mar 2, 2026 at 8:00 AM Owner <owner@bakery.test> wrote:\n"
        "> ---------- Forwarded message ---------\n"
        "> A cake, please."
    )


@pytest.mark.parametrize("raw", [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00\xff\xfe\x80garbage\x00\x01", id="binary"),
    pytest.param(b"this is not an email at all", id="prose"),
    pytest.param(b"From: a@example.org\r\nSubject: no body\r\n", id="no-body"),
    pytest.param(b"From: a@example.org\r\nSubject: empty body\r\n\r\n", id="empty-body"),
    pytest.param(b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n", id="truncated-multipart"),
    pytest.param(b"Content-Type: multipart/mixed\r\n\r\nno boundary", id="multipart-without-boundary"),
    pytest.param(b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64", id="bad-base64"),
    pytest.param(b"From: <<<@@@>>>\r\nTo: ;;;,,,\"\r\nMessage-ID: <<<\r\n\r\nx", id="broken-addresses"),
    pytest.param(b"Content-Type: text/plain; charset*=''%ZZ\r\n\r\nbody", id="broken-rfc2231"),
    pytest.param(b"Content-Type: application/octet-stream\r\n\r\n\x00\x01", id="no-text-part"),
    pytest.param(b"Content-Type: text/html\r\n\r\n<![CDATA[<p>unterminated", id="odd-html"),
])
def test_malformed_input_never_raises(raw: bytes) -> None:
    parsed = parse_email(raw)
    assert list(parsed) == list(FIELDS)
    assert all(isinstance(value, str) for value in parsed.values())


def test_empty_bytes_give_all_empty_fields() -> None:
    assert parse_email(b"") == dict.fromkeys(FIELDS, "")


def test_message_without_body_keeps_its_headers() -> None:
    parsed = parse_email(b"From: a@example.org\r\nSubject: no body\r\n")
    assert parsed["from"] == "a@example.org"
    assert parsed["subject"] == "no body"
    assert parsed["text"] == ""


def test_control_characters_are_dropped() -> None:
    raw = b"From: a@example.org\r\nSubject: a\x00b\r\n\r\nline\x00 one\x07\r\nline two\r\n"
    parsed = parse_email(raw)
    assert parsed["subject"] == "ab"
    assert parsed["text"] == "line one\nline two"


def test_non_bytes_input_does_not_raise() -> None:
    assert parse_email(None) == dict.fromkeys(FIELDS, "")  # type: ignore[arg-type]
    assert parse_email("From: a@example.org\n\nhi")["text"] == "hi"  # type: ignore[arg-type]


# --------------------------------------------------------------------------- limits (untrusted senders)

DEEP = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" * 2000


@pytest.mark.parametrize(("raw", "limit", "status"), [
    pytest.param(b"From: a@b.example\r\nSubject: hi\r\n" + b"X-A: b\r\n" * 131_072 + b"\r\nbody\r\n",
                 "MAX_HEADER_BYTES", 413, id="1MiB-of-repeated-headers"),
    pytest.param(b"From: a@b.example\r\n" + b"X-A: b\r\n" * (MAX_HEADERS + 1) + b"\r\nbody\r\n",
                 "MAX_HEADERS", 422, id="too-many-headers"),
    pytest.param(DEEP, "MAX_MULTIPARTS", 422, id="deep-nesting"),
    pytest.param(b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
                 + b"--XX\r\nContent-Type: text/plain\r\n\r\nx\r\n" * (MAX_PARTS + 20) + b"--XX--\r\n",
                 "MAX_PARTS", 422, id="too-many-parts"),
])
def test_mail_over_a_limit_is_refused_before_parsing(raw: bytes, limit: str, status: int) -> None:
    """Mail the standard library would take seconds over is refused on its raw bytes, naming the limit."""
    t0 = time.perf_counter()
    with pytest.raises(MimeLimitError) as caught:
        parse_email(raw)
    assert time.perf_counter() - t0 < 0.1
    assert (caught.value.limit, caught.value.status) == (limit, status)
    assert "at most" in str(caught.value)


def test_mail_at_the_limits_is_parsed() -> None:
    """Up to the limits nothing changes: 50 parts, 8 multiparts, 100 headers."""
    raw = (b"From: Jane <jane@x.example>\r\nSubject: hi\r\n" + b"X-A: b\r\n" * (MAX_HEADERS - 3)
           + b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
           + b"--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
           + b"--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\nx\r\n"
           * (MAX_PARTS - 1) + b"--XX--\r\n")
    parsed = parse_email(raw)
    assert parsed["from"] == "Jane <jane@x.example>" and parsed["text"].startswith("hello")
    assert parsed["text"].count("a.pdf") == MAX_PARTS - 1


def test_a_long_address_list_is_read_as_sent_past_the_parsing_budget() -> None:
    """An 8 KiB `To:` took 0.26 s in the structured parser; past `STRUCTURED_HEADER_CHARS` it is read as sent."""
    addresses = ", ".join(f"user{i}@x.example" for i in range(500))
    raw = f"From: a@b.example\r\nTo: {addresses}\r\nSubject: hi\r\n\r\nbody".encode()
    assert len(addresses) > STRUCTURED_HEADER_CHARS
    t0 = time.perf_counter()
    parsed = parse_email(raw)
    assert time.perf_counter() - t0 < 0.05
    assert parsed["to"] == addresses and parsed["from"] == "a@b.example"
