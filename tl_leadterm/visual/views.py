"""circuitsvis views that can share one bundle (the report inlines it once)."""

from __future__ import annotations

import html
import json
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import require


def circuitsvis_bundle() -> str:
    """The installed circuitsvis package's own ``dist/cdn/iife.js`` (defines the global ``CircuitsVis``).

    Prepared for inlining in a ``<script>``: ``</script`` sequences are escaped and the
    source-map comment (a relative URL) is removed.
    """
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    require(path.is_file(), f"the circuitsvis bundle {path} is missing; reinstall circuitsvis")
    js = path.read_text(encoding="utf-8")
    js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL="))
    return js.replace("</script", "<\\/script")


def _props_json(props: dict) -> str:
    from circuitsvis.utils.convert_props import convert_props

    s = convert_props(props)
    # safe inside <script>: no closing tags, no HTML comments
    return s.replace("</", "<\\/").replace("<!--", "<\\!--")


@dataclass
class CVView:
    """A circuitsvis element (``element`` is a CircuitsVis React component name) and its props.

    :meth:`fragment` renders against a page that already loaded the bundle once
    (the report); :meth:`to_html` / ``_repr_html_`` give a standalone page with the
    bundle inlined (notebooks, single files).
    """

    element: str
    props: dict
    title: str = ""
    caption: str = ""
    id: str = ""    # default: derived from the content, so the same view gives the same HTML

    def fragment(self, id: str | None = None) -> str:
        props = _props_json(self.props)
        vid = id or self.id or "cv-" + hashlib.sha256(f"{self.element}{props}{self.title}".encode()).hexdigest()[:12]
        return (f'<div class="cv-view" id="{vid}" data-element="{html.escape(self.element)}"></div>\n'
                f'<script>CircuitsVis.render("{vid}", CircuitsVis.{self.element}, {props});</script>')

    def to_html(self) -> str:
        """Standalone HTML: the bundle, then this view."""
        return f"<script>{circuitsvis_bundle()}</script>\n{self.fragment()}"

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_json(self) -> dict:
        return {"element": self.element, "props": json.loads(_plain_json(self.props)), "title": self.title, "caption": self.caption}

    @classmethod
    def from_json(cls, d: dict) -> "CVView":
        require(isinstance(d, dict) and isinstance(d.get("element"), str) and isinstance(d.get("props"), dict),
                "a saved view must be an object with 'element' and 'props'; rebuild views.json with 'tl-leadterm demo'")
        return cls(d["element"], d["props"], d.get("title", ""), d.get("caption", ""))


def _plain_json(props: dict) -> str:
    from circuitsvis.utils.convert_props import convert_props
    return convert_props(props)

