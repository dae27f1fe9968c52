"""The admin pages' one escaping rule: every value reaches the HTML escaped, markup that
render.py built from escaped parts stays as it is, and the shipped templates load."""

from __future__ import annotations

from scanet_node.admin.render import CSS, Html, fields, link, page, render, span, table

EVIL = "<script>alert('x')</script> & \"q\""
ESCAPED = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;"


def test_values_are_escaped_and_markup_is_kept() -> None:
    body = render("jobs.html", limit=EVIL, jobs=span("bad", EVIL))
    assert "<script>" not in body
    assert f'<p class="muted">The {ESCAPED} newest jobs.</p>' in body
    assert f'<span class="bad">{ESCAPED}</span>' in body


def test_tables_links_and_pages_escape_what_they_insert() -> None:
    got = table(["a<b"], [[EVIL, None, 3, Html("<i>kept</i>")]])
    assert got == (
        f"<table><tr><th>a&lt;b</th></tr><tr><td>{ESCAPED}</td><td></td><td>3</td>"
        "<td><i>kept</i></td></tr></table>"
    )
    assert table(["x"], [], empty="none <yet>") == '<p class="muted">none &lt;yet&gt;</p>'
    assert fields([("k&", "v")]) == "<table><tr><td><b>k&amp;</b></td><td>v</td></tr></table>"
    assert link('/x?a="1"', EVIL, "uid") == (
        f'<a class="uid" href="/x?a=&quot;1&quot;">{ESCAPED}</a>'
    )
    whole = page(EVIL, Html("<p>body</p>"), None).decode()
    assert f"<title>{ESCAPED} · scanet-node</title>" in whole
    assert f"<style>{CSS}</style>" in whole and "<p>body</p>" in whole
