"""HTML to readable plain text, for mail bodies and form fields that arrive as HTML.

Structure becomes line breaks (paragraphs and headings a blank line, blocks and <br> a line), markup,
scripts, styles and the head go, entities are unescaped and link text is kept.
"""

from __future__ import annotations

import re
from html import unescape


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML email body: structure becomes line breaks, markup and scripts go.

    One forward pass over the markup (`_scan`), so the cost is linear in the length of the input whatever it
    holds: the standard library's HTMLParser rescans an unterminated tag or comment from its start on every
    later one, and 16 KiB of `<a ` cost it 6 s (docs/security.md, "Bounded work for tenant content")."""
    collector = _HTMLText()
    _scan(html, collector)
    lines = [line.strip() for line in collector.text().split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


# Markup is read the way HTMLParser read it (so converted mail reads as before), but never backwards: every
# search below starts where the last one ended, and a construct left open at the end of the input (a tag, a
# comment, a quoted attribute value) makes the rest of the input plain text, as HTMLParser did at close().
_TAG_NAME = re.compile(r"[a-zA-Z][^\t\n\r\f />\x00]*")
_TAG_REST = re.compile(r"[^>=]*")  # up to the tag's end or an attribute's value
_SPACE = re.compile(r"[ \t\n\r\f]*")
_RAW_TEXT = frozenset({"script", "style"})  # content read as text up to the closing tag, as HTMLParser does
_RAW_END = {name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in _RAW_TEXT}


def _tag_end(html: str, i: int) -> int:
    """The index of the `>` closing a tag whose attributes start at `i` (quoted values may hold `>`), or -1."""
    n = len(html)
    while True:
        i = _TAG_REST.match(html, i).end()  # type: ignore[union-attr]  # [^>=]* always matches
        if i >= n:
            return -1
        if html[i] == ">":
            return i
        i = _SPACE.match(html, i + 1).end()  # type: ignore[union-attr]  # after "=", maybe a quoted value
        if i < n and html[i] in "\"'":
            close = html.find(html[i], i + 1)
            if close < 0:
                return -1
            i = close + 1


def _scan(html: str, out: _HTMLText) -> None:
    """Feed `out` the text, start tags and end tags of `html`; comments, declarations and processing
    instructions are skipped."""
    n = len(html)
    pos = 0
    while pos < n:
        lt = html.find("<", pos)
        if lt < 0:
            out.handle_data(unescape(html[pos:]))
            return
        if lt > pos:
            out.handle_data(unescape(html[pos:lt]))
        pos = lt
        nxt = html[lt + 1:lt + 2]
        end = -1
        if nxt.isascii() and nxt.isalpha():
            name_match = _TAG_NAME.match(html, lt + 1)
            assert name_match is not None
            end = _tag_end(html, name_match.end())
            if end >= 0:
                name = name_match.group().lower()
                out.handle_starttag(name, [])
                if html[end - 1] == "/" and end - 1 >= name_match.end():
                    out.handle_endtag(name)
                elif name in _RAW_TEXT:
                    closing = _RAW_END[name].search(html, end + 1)
                    # Script and style text is never shown; an unclosed one hides the rest, as before.
                    if closing is None:
                        return
                    out.handle_endtag(name)
                    end = closing.end() - 1
        elif nxt == "/":
            name_match = _TAG_NAME.match(html, lt + 2)
            end = html.find(">", lt + 2)
            if end >= 0 and name_match is not None:
                out.handle_endtag(name_match.group().lower())
        elif html.startswith("<!--", lt):
            end = html.find("-->", lt + 4)
            end = end + 2 if end >= 0 else -1
        elif nxt in ("!", "?"):
            end = html.find(">", lt + 2)
        else:
            out.handle_data("<")
            pos = lt + 1
            continue
        if end < 0:  # left open to the end of the input: the rest is text
            out.handle_data(unescape(html[lt:]))
            return
        pos = end + 1


class _HTMLText:
    """Collects the visible text of an HTML document with line breaks where the layout has them."""

    # Content that is never shown. head is also left when body starts, since mailers do not always close it.
    _HIDDEN = frozenset({"head", "title", "script", "style", "noscript", "template"})
    # Blocks that sit on lines of their own, and those that are also set apart by a blank line.
    _LINE = frozenset({
        "div", "li", "tr", "dt", "dd", "dl", "section", "article", "header", "footer", "nav", "aside",
        "address", "center", "form", "fieldset", "figure", "figcaption", "caption", "hr", "main",
    })
    _PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol"})
    # Block edges are soft breaks: "</div><div>" or "text<br></div>" is one line break, not two, while each
    # <br> is a real one ("<br><br>" is how many mailers separate paragraphs). Soft breaks are written as
    # these placeholders and resolved in text().
    _SOFT_LINE = "\x00"
    _SOFT_PARAGRAPH = "\x01"
    # Every whole run of break-like characters that holds a line break or a placeholder (runs of spaces alone
    # are left as they are, without a call per run); the lookbehind starts a match only where a run starts, so
    # no run is rescanned from each of its positions.
    _BREAKS = re.compile(r"(?<![ \n\x00\x01]) *[\n\x00\x01][ \n\x00\x01]*")

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._hidden = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Open hidden and preformatted regions; start blocks on a new line."""
        if tag == "body":
            self._hidden = 0
        if tag in self._HIDDEN:
            self._hidden += 1
            return
        if tag == "br":
            self._chunks.append("\n")
        elif tag in self._PARAGRAPH:
            self._chunks.append(self._SOFT_PARAGRAPH)
        elif tag in self._LINE:
            self._chunks.append(self._SOFT_LINE)
        if tag == "li":
            self._chunks.append("- ")
        elif tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        """Close hidden and preformatted regions; end lines and paragraphs."""
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._PARAGRAPH:
            self._chunks.append(self._SOFT_PARAGRAPH)
        elif tag in self._LINE:
            self._chunks.append(self._SOFT_LINE)
        elif tag in ("td", "th"):
            self._chunks.append(" ")  # keeps neighbouring cells from running into one word
        if tag == "pre":
            self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        """Keep visible text, collapsing HTML whitespace outside <pre>."""
        if self._hidden:
            return
        # The placeholders must not come from the document itself (NULs are dropped earlier, but be sure).
        data = data.replace(self._SOFT_LINE, "").replace(self._SOFT_PARAGRAPH, "")
        if not self._pre:
            data = re.sub(r"[ \t\r\n\f]+", " ", data)
        self._chunks.append(data)

    def text(self) -> str:
        """What was collected so far, breaks resolved; non-breaking spaces become plain ones."""
        return self._BREAKS.sub(self._resolve, "".join(self._chunks)).replace("\xa0", " ")

    def _resolve(self, run: re.Match[str]) -> str:
        """A run of spaces, <br> newlines and soft breaks → as many newlines as the strongest of them asks for."""
        text = run.group()
        if self._SOFT_LINE not in text and self._SOFT_PARAGRAPH not in text:
            return text
        hard = text.count("\n")
        # A <br> right after a block edge starts an empty line, as a browser shows it ("</div><br><div>" and
        # Gmail's "<div><br></div>" are blank lines); one that ends a block's last line adds nothing.
        if hard and re.match(r"[ ]*[\x00\x01]", text):
            hard += 1
        return "\n" * max(2 if self._SOFT_PARAGRAPH in text else 1, hard)
