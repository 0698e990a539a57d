"""circuitsvis views that can share one bundle (the report inlines it once).

A view's data never becomes code: its props are written as JSON in a ``<script type="application/json">``
block (``<``, ``>``, ``&``, U+2028 and U+2029 escaped as ``\\uXXXX``, so no ``</script>`` or ``<!--`` can
occur in it) and read with ``JSON.parse``; the component name must be a plain identifier, and a view read
from a file (:meth:`CVView.from_json`) must be one of the components this package writes (:data:`ELEMENTS`),
with props of the types and shapes it writes.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import LeadTermError, require

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_VID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_REBUILD = "rebuild views.json with 'tl-leadterm demo'"
#: the circuitsvis components this package renders and, for each, its props: name -> (kind, required);
#: kinds: "strings" (a list of text), "bool", or ("numbers", ndim) (a nested list of numbers or null)
ELEMENTS: dict[str, dict[str, tuple]] = {
    "AttentionHeads": {"attention": (("numbers", 3), True), "tokens": ("strings", True),
                       "attentionHeadNames": ("strings", False), "maskUpperTri": ("bool", False)},
    "ColoredTokensMulti": {"tokens": ("strings", True), "values": (("numbers", 2), True), "labels": ("strings", False)},
}
#: the keys of a saved view (views.json) and the longest text each may hold
VIEW_KEYS = {"element": 64, "props": None, "title": 5000, "caption": 20000, "section": 5000}
MAX_ITEMS = 5_000_000       # numbers in one view
MAX_TEXT = 10_000           # characters in one token or label


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


def _plain(o):
    """``o`` (props: dicts, lists, numpy arrays, tensors, numbers) as plain JSON data; non-finite numbers become null."""
    try:
        import numpy as np
        import torch
        if isinstance(o, torch.Tensor):
            o = o.detach().cpu().numpy()
        if isinstance(o, np.ndarray):
            if o.dtype.kind in "fc" and not np.isfinite(o).all():
                return _plain(o.tolist())
            return o.tolist()
        if isinstance(o, np.generic):
            o = o.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items() if v is not None}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def script_json(obj) -> str:
    """``obj`` as JSON that is inert inside any ``<script>`` block: every ``<``, ``>``, ``&``, U+2028 and U+2029
    is written as a ``\\uXXXX`` escape (JSON.parse reads them back), so the text cannot close the block
    (``</script>``), open a comment (``<!--``) or end a line in older JavaScript parsers."""
    s = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"), sort_keys=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(ch, esc)
    return s


def _props_json(props: dict) -> str:
    return script_json(_plain(props))


@dataclass
class CVView:
    """A circuitsvis element (``element`` is a CircuitsVis React component name) and its props.

    :meth:`fragment` renders against a page that already loaded the bundle once
    (the report); :meth:`to_html` / ``_repr_html_`` give a standalone page with the
    bundle inlined (notebooks, single files).  The props travel as JSON data, never as code.
    """

    element: str
    props: dict
    title: str = ""
    caption: str = ""
    id: str = ""    # default: derived from the content, so the same view gives the same HTML

    def fragment(self, id: str | None = None) -> str:
        require(isinstance(self.element, str) and bool(_IDENT.match(self.element)),
                f"a circuitsvis element must be a component name such as AttentionHeads, got {str(self.element)[:80]!r}")
        require(isinstance(self.props, dict), "a view's props must be a dict")
        props = _props_json(self.props)
        vid = id or self.id or "cv-" + hashlib.sha256(f"{self.element}{props}{self.title}".encode()).hexdigest()[:12]
        require(bool(_VID.match(vid)), f"a view id must be letters, digits, '-' or '_', got {vid[:80]!r}")
        return (f'<div class="cv-view" id="{vid}" data-element="{html.escape(self.element)}"></div>\n'
                f'<script type="application/json" id="{vid}-props">{props}</script>\n'
                f'<script>CircuitsVis.render("{vid}", CircuitsVis.{self.element}, '
                f'JSON.parse(document.getElementById("{vid}-props").textContent));</script>')

    def to_html(self) -> str:
        """Standalone HTML: the bundle, then this view."""
        return f"<script>{circuitsvis_bundle()}</script>\n{self.fragment()}"

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_json(self) -> dict:
        return {"element": self.element, "props": _plain(self.props), "title": self.title, "caption": self.caption}

    @classmethod
    def from_json(cls, d: dict) -> "CVView":
        """A view saved by :meth:`to_json`, validated as untrusted data (:func:`check_view_json`)."""
        check_view_json(d)
        return cls(d["element"], d["props"], d.get("title", ""), d.get("caption", ""))


def _text(v, what: str, limit: int | None) -> None:
    require(isinstance(v, str), f"{what} must be text, got {type(v).__name__}; {_REBUILD}")
    require(limit is None or len(v) <= limit, f"{what} is longer than {limit} characters; {_REBUILD}")


def _numbers(v, ndim: int, what: str) -> tuple:
    """The shape of ``v``, a nested list of ``ndim`` levels of numbers (int or float, not bool) or null."""
    import numpy as np

    require(isinstance(v, list), f"{what} must be a {ndim}-D list of numbers; {_REBUILD}")
    try:
        a = np.array(v, dtype=object)
    except ValueError:
        raise LeadTermError(f"{what} must be a rectangular {ndim}-D list of numbers; {_REBUILD}") from None
    require(a.ndim == ndim, f"{what} must be a rectangular {ndim}-D list of numbers, got {a.ndim} level(s); {_REBUILD}")
    require(a.size <= MAX_ITEMS, f"{what} holds more than {MAX_ITEMS} numbers; {_REBUILD}")
    for x in a.flat:
        if not (x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))):
            raise LeadTermError(f"{what} must hold numbers only, found {type(x).__name__} {str(x)[:40]!r}; {_REBUILD}")
    return a.shape


def check_view_json(d) -> None:
    """Refuse a saved view that is not what :meth:`CVView.to_json` writes: the keys of :data:`VIEW_KEYS`, an
    element of :data:`ELEMENTS`, its props (and only those) of the right types, and shapes that agree."""
    require(isinstance(d, dict), f"a saved view must be a JSON object; {_REBUILD}")
    extra = sorted(set(d) - set(VIEW_KEYS))
    require(not extra, f"a saved view has unknown key(s) {', '.join(map(repr, extra))[:200]}; {_REBUILD}")
    el = d.get("element")
    require(isinstance(el, str) and el in ELEMENTS,
            f"a saved view's element must be one of {', '.join(ELEMENTS)}, got {str(el)[:80]!r}; {_REBUILD}")
    for k, limit in VIEW_KEYS.items():
        if k not in ("element", "props") and k in d:
            _text(d[k], f"the view's {k!r}", limit)
    props = d.get("props")
    require(isinstance(props, dict), f"a saved view must have 'props', an object; {_REBUILD}")
    spec = ELEMENTS[el]
    extra = sorted(set(props) - set(spec))
    require(not extra, f"{el} view: unknown prop(s) {', '.join(map(repr, extra))[:200]}; {_REBUILD}")
    shapes = {}
    for name, (kind, needed) in spec.items():
        what = f"{el} view: prop {name!r}"
        if name not in props or props[name] is None:
            require(not needed, f"{el} view: prop {name!r} is missing; {_REBUILD}")
            continue
        v = props[name]
        if kind == "bool":
            require(isinstance(v, bool), f"{what} must be true or false; {_REBUILD}")
        elif kind == "strings":
            require(isinstance(v, list) and len(v) <= MAX_ITEMS, f"{what} must be a list of text; {_REBUILD}")
            for s in v:
                _text(s, f"{what} item", MAX_TEXT)
            shapes[name] = len(v)
        else:
            shapes[name] = _numbers(v, kind[1], what)
    if el == "AttentionHeads":
        h, q, k = shapes["attention"]
        require(q == k == shapes["tokens"], f"AttentionHeads view: 'attention' is [heads, {q}, {k}] but there are "
                                            f"{shapes['tokens']} tokens; {_REBUILD}")
        require(shapes.get("attentionHeadNames", h) == h,
                f"AttentionHeads view: {shapes.get('attentionHeadNames')} head names for {h} heads; {_REBUILD}")
    else:
        n, m = shapes["values"]
        require(n == shapes["tokens"], f"ColoredTokensMulti view: 'values' has {n} rows for {shapes['tokens']} tokens; {_REBUILD}")
        require(shapes.get("labels", m) == m, f"ColoredTokensMulti view: {shapes.get('labels')} labels for {m} value sets; "
                                              f"{_REBUILD}")


def _plain_json(props: dict) -> str:
    return json.dumps(_plain(props), allow_nan=False)
