"""HTML to readable plain text, for mail bodies and form fields that arrive as HTML.

Structure becomes line breaks (paragraphs and headings a blank line, blocks and <br> a line), markup,
scripts, styles and the head go, entities are unescaped and link text is kept.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML email body: structure becomes line breaks, markup and scripts go."""
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:
        pass  # keep what was read before the parser gave up
    lines = [line.strip() for line in parser.text().split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


class _HTMLText(HTMLParser):
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
    # Every run of break-like characters; runs without a placeholder come back unchanged. (A pattern that
    # required a placeholder inside the run would rescan long runs of <br> newlines from every position.)
    _BREAKS = re.compile(r"[ \n\x00\x01]+")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
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
