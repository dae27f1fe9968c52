"""HTML for the admin pages: templates, one escaping rule, tables and the formats of values.

Templates are the standard library's :class:`string.Template` files under ``templates/``
(package data). :func:`render` escapes every value it inserts with ``html.escape`` unless
the value is :class:`Html`, markup that this module built from escaped parts; so a value
from the catalog, the settings or a peer reaches a page escaped, whichever way it came.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import cache
from importlib.resources import files
from string import Template

#: Seconds between automatic reloads of a page.
REFRESH_SECONDS = 10
_NAV = (
    ("/", "Overview"),
    ("/studies", "Studies"),
    ("/jobs", "Jobs"),
    ("/performance", "Performance"),
    ("/metrics", "Metrics"),
)


class Html(str):
    """Markup, inserted into a template as it is: built only from escaped parts."""

    __slots__ = ()


def _text(name: str) -> str:
    return (files(__package__) / "templates" / name).read_text(encoding="utf-8").rstrip("\n")


@cache
def _template(name: str) -> Template:
    return Template(_text(name))


#: The pages' only style sheet, and its hash for the Content-Security-Policy.
CSS = Html(_text("style.css"))
CSS_SHA256 = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()


def escape(value: object) -> Html:
    """``value`` as HTML text: markup stays as it is, None is empty, anything else escaped."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value)))


def render(name: str, **values: object) -> Html:
    """The template ``name`` with ``values`` inserted, each through :func:`escape`."""
    return Html(_template(name).substitute({k: escape(v) for k, v in values.items()}))


def span(css_class: str, value: object) -> Html:
    """``value`` in a ``<span>`` of ``css_class`` (uid, bad, ok)."""
    return Html(f'<span class="{css_class}">{escape(value)}</span>')


def link(href: str, value: object, css_class: str | None = None) -> Html:
    """A link to ``href`` showing ``value``."""
    attribute = "" if css_class is None else f' class="{css_class}"'
    return Html(f'<a{attribute} href="{escape(href)}">{escape(value)}</a>')


def muted(value: object) -> Html:
    """A paragraph in grey: a note, or what shows in place of an empty list."""
    return Html(f'<p class="muted">{escape(value)}</p>')


def join(parts: Iterable[object], separator: str = "") -> Html:
    """The parts, each escaped, with ``separator`` (plain text) between them."""
    return Html(escape(separator).join(escape(p) for p in parts))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "none") -> Html:
    """A table of ``rows`` under ``headers`` (none: no header row), or ``empty`` in grey."""
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return muted(empty)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return Html(f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>")


def fields(items: Iterable[tuple[str, object]]) -> Html:
    """A two-column table of name / value, without a header row."""
    return table([], ([Html(f"<b>{escape(k)}</b>"), v] for k, v in items))


def page(title: str, body: Html, href: Callable[[str], str] | None) -> bytes:
    """A whole page: ``body`` under ``title``; with ``href`` (which makes the request's links)
    the navigation and the reload, without it a bare page (the 401 answer)."""
    nav = Html("")
    refresh = Html("")
    if href is not None:
        nav = join(link(href(p), n) for p, n in _NAV)
        refresh = Html(f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">')
    return render("page.html", title=title, css=CSS, nav=nav, refresh=refresh, body=body).encode()


def when(value: datetime | None) -> str:
    """A naive UTC time to the second, or a dash."""
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def seconds(value: float | None) -> str:
    """Seconds to a tenth, or a dash."""
    return "—" if value is None else f"{value:.1f} s"


def size(n: int) -> str:
    """Bytes in decimal units."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
