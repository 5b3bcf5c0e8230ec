"""Message bodies as their author wrote them: HTML to text, quoted reply history and signatures cut.

Every vendor mapper passes each body through `clean_body`. It is one pass of the stdlib HTML parser
(only for HTML bodies) plus a few line-anchored regexes, so it stays cheap per message.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Tags whose start and end are line breaks in the text.
_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
})
_VOID_TAGS = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
})
_DROPPED_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript"})
# Containers that mail clients and helpdesks put around quoted history or a signature.
_QUOTE_CLASSES = frozenset({
    "gmail_quote", "gmail_signature", "gmail_extra", "yahoo_quoted", "moz-cite-prefix", "moz-signature",
    "freshdesk_quote", "zendesk_quote", "protonmail_quote", "protonmail_signature_block",
    "ms-outlook-mobile-reference-message",
})

# A line where quoted history starts: everything from it on was written by someone else, earlier.
_QUOTE_START = re.compile(
    r"^[ \t]*(?:"
    r"On\b[^\n]{0,300}(?:\n[^\n]{0,300})?\bwrote:[ \t]*$"  # Gmail / Apple Mail, the header may wrap once
    r"|-{2,}[ \t]*(?:Original|Forwarded) Message[ \t]*-{2,}"  # Outlook, Thunderbird
    r"|_{10,}[ \t]*$"  # Outlook's rule above the header block
    r"|\*?From:\*?[ \t][^\n]*\n[ \t]*\*?(?:Sent|Date):\*?[ \t]"  # Outlook header block without a rule
    r"|#{1,2}-[^\n]*-#{1,2}[ \t]*$"  # helpdesk reply markers: "##- Please type your reply above this line -##"
    r")",
    re.MULTILINE | re.IGNORECASE,
)
# A line where the signature starts: the RFC 3676 delimiter, or a mobile client's tag line.
_SIGNATURE_START = re.compile(
    r"^(?:--[ \t]*|(?:Sent from my|Sent from Mail for|Get Outlook for)\b[^\n]*)$",
    re.MULTILINE | re.IGNORECASE,
)
_QUOTED_LINE = re.compile(r"^[ \t]*>[^\n]*(?:\n|$)", re.MULTILINE)
_HTML_HINT = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>|&(?:[a-zA-Z]+|#\d+|#x[0-9a-fA-F]+);")
_SPACES = re.compile(r"[ \t\f\v\xa0\u200b]+")
_NEWLINES = re.compile(r"\r?\n|\r")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._open: list[tuple[str, bool]] = []  # (tag, drops its content)
        self._dropping = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            if not self._dropping:
                self.parts.append("\n" if tag in ("br", "hr") else "")
            return
        drops = tag in _DROPPED_TAGS or _is_quote_container(tag, attrs)
        self._open.append((tag, drops))
        self._dropping += drops
        if tag == "pre":
            self._pre += 1
        if not self._dropping and tag in _BLOCK_TAGS:
            self.parts.append("\n- " if tag == "li" else "\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if not any(open_tag == tag for open_tag, _ in self._open):
            return  # a stray end tag
        while self._open:
            open_tag, drops = self._open.pop()
            self._dropping -= drops
            if open_tag == "pre":
                self._pre -= 1
            if open_tag == tag:
                break
        if not self._dropping and tag in _BLOCK_TAGS and tag != "li":  # the next item opens its own line
            self.parts.append("\n\n" if tag == "p" else "\n")

    def handle_data(self, data: str) -> None:
        if self._dropping:
            return
        if not self._pre:
            data = _SPACES.sub(" ", _NEWLINES.sub(" ", data))
            previous = self.parts[-1][-1:] if self.parts and self.parts[-1] else "\n"
            if previous in ("\n", " "):
                data = data.lstrip(" ")  # whitespace between tags, not text
        if data:
            self.parts.append(data)


def _is_quote_container(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    values = dict(attrs)
    if tag == "blockquote" and (values.get("type") == "cite" or "quote" in (values.get("class") or "")):
        return True
    classes = set((values.get("class") or "").split())
    return bool(classes & _QUOTE_CLASSES)


def html_to_text(html: str) -> str:
    """Block tags become line breaks, entities are decoded, scripts, styles and quote containers dropped."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    return _tidy("".join(extractor.parts))


def looks_like_html(text: str) -> bool:
    return bool(_HTML_HINT.search(text))


def strip_quoted_reply(text: str) -> str:
    """Cuts the quoted history a reply carries (`On ... wrote:`, `>` lines, Outlook header blocks)."""
    match = _QUOTE_START.search(text)
    if match:
        text = text[: match.start()]
    return _QUOTED_LINE.sub("", text) if ">" in text else text


def strip_signature(text: str) -> str:
    """Cuts from the signature delimiter (`-- `) or a mobile tag line ("Sent from my iPhone") on."""
    match = _SIGNATURE_START.search(text)
    return text[: match.start()] if match else text


def clean_body(body: str | None, html: bool | None = None) -> str:
    """What the author of one message wrote, as plain text; `html=None` guesses from the markup."""
    if not body:
        return ""
    if html is None:
        html = looks_like_html(body)
    text = html_to_text(body) if html else _tidy(body)
    return _tidy(strip_signature(strip_quoted_reply(text)))


def _tidy(text: str) -> str:
    """Trailing spaces and runs of blank lines go; indentation (code, `<pre>`) stays."""
    lines = [line.rstrip() for line in _NEWLINES.split(text.replace("\xa0", " "))]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")
