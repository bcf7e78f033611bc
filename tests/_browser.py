"""Render an HTML report in a real headless Chromium and measure what a reader would see (shared by the report tests).

``audit_layout(path, width)`` loads a copy of the page with a small probe script injected before ``</body>``; once
the page has loaded, the probe writes into the DOM, as ``data-audit`` on ``<body>``:

* ``page``: whether the page scrolls horizontally (``documentElement.scrollWidth > clientWidth``);
* ``broken``: images not loaded or decoded (``!img.complete || img.naturalWidth === 0``);
* ``overflow``: images and table wrappers whose right edge passes the viewport;
* ``found``: for each expected text, whether the rendered text (``innerText``) holds it literally, so escaped
  markup such as ``<b>x</b>`` is shown to the reader as written;
* ``bold``: the number of ``<b>`` elements whose text is one of the expected strings without tags (markup that
  was not escaped would create them).

Chromium dumps the DOM (``--dump-dom``) and the attribute is parsed back. ``screenshot(path, width, png)`` saves
what a person would see.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

__all__ = ["CHROMIUM", "NO_CHROMIUM", "audit_layout", "screenshot"]

CHROMIUM = next(
    (c for c in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None
)
NO_CHROMIUM = "no headless Chromium installed (apt-get install chromium): the browser layout check needs a real browser"

_PROBE = """<script>window.addEventListener('load',function(){
var d=document.documentElement, want=%s, wrappers=%s;
var bad=[].filter.call(document.images,function(i){return !i.complete||i.naturalWidth===0}).length;
var over=[].filter.call(document.querySelectorAll('img,'+wrappers),function(e){
 return e.getBoundingClientRect().right>d.clientWidth+1}).length;
var text=document.body.innerText;
var found=want.map(function(w){return text.indexOf(w)>=0});
var bold=[].filter.call(document.querySelectorAll('b'),function(b){
 return want.some(function(w){return w.replace(/<[^>]*>/g,'')===b.textContent && w!==b.textContent})}).length;
document.body.setAttribute('data-audit',JSON.stringify({page:d.scrollWidth>d.clientWidth+1,broken:bad,
 overflow:over,found:found,bold:bold,images:document.images.length,scroll_width:d.scrollWidth,
 client_width:d.clientWidth}));});</script></body>"""


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def audit_layout(
    path: str | os.PathLike, width: int, *, expect_text=(), wrappers: str = ".table-wrap", timeout: float = 120
) -> dict:
    """The probe's measurements (module docstring) of the page at ``path`` in a ``width``-pixel-wide window."""
    page = open(path, encoding="utf-8").read()
    probe = _PROBE % (json.dumps(list(expect_text)), json.dumps(wrappers))
    copy = os.path.join(os.path.dirname(os.fspath(path)), f"_audit_{width}.html")
    with open(copy, "w", encoding="utf-8") as f:
        f.write(page.replace("</body>", probe))
    out = _run(
        [f"--window-size={width},2000", "--virtual-time-budget=5000", "--dump-dom", f"file://{os.path.abspath(copy)}"],
        timeout,
    )
    m = re.search(r'data-audit="([^"]*)"', out.stdout)
    assert m, ("the probe did not run", out.stdout[-500:], out.stderr[-500:])
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(path: str | os.PathLike, width: int, png: str | os.PathLike, *, height: int = 4000, timeout=120):
    """Save a ``width × height`` screenshot of the page at ``path`` to ``png``; returns ``png``."""
    out = _run(
        [f"--window-size={width},{height}", f"--screenshot={os.fspath(png)}", f"file://{os.path.abspath(path)}"],
        timeout,
    )
    assert os.path.exists(png), out.stderr[-500:]
    return png
