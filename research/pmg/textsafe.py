"""Text from the data and the user (titles, ids, keywords, paths, names) made safe for the reports that show it.

Every report writer puts such text through one of these, so that a title like ``<b>x</b> | y`` is shown as
written instead of becoming markup, a new table column or a broken line:

- :func:`md`: Markdown text, also inside table cells: line breaks become spaces, ``&``, ``<``, ``>`` become
  entities (GitHub renders raw HTML), and the punctuation Markdown reads as syntax is backslash-escaped
  (emphasis, code, links, table pipes, strikethrough, maths);
- :func:`md_code`: a Markdown code span (paths, commands), fenced with more backticks than the text holds;
  inside a table its pipes are escaped too, as GitHub splits cells before it reads code spans;
- :func:`html`: HTML text and attribute values (quotes included).
"""
from __future__ import annotations

import html as _html
import re

_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MD_SYNTAX = re.compile(r"([\\`*_\[\]|~$])")


def _one_line(text: object) -> str:
    return " ".join(str(text).splitlines())


def md(text: object) -> str:
    """``text`` as literal Markdown inline text, safe in a table cell."""
    escaped = _MD_SYNTAX.sub(r"\\\1", _one_line(text))
    return "".join(_MD_ENTITIES.get(ch, ch) for ch in escaped)


def md_code(text: object, *, in_table: bool = False) -> str:
    """``text`` as one Markdown code span (shown verbatim, monospace)."""
    text = _one_line(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ") and text.strip()):
        text = f" {text} "  # one space each side is dropped by the renderer
    if in_table:
        text = text.replace("|", "\\|")
    return f"{fence}{text}{fence}"


def html(text: object) -> str:
    """``text`` as HTML text or a quoted attribute value."""
    return _html.escape(str(text), quote=True)
