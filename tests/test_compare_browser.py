"""The compare report in a real headless browser (Chromium) at 1400 px and 800 px: no horizontal overflow of the
page, every image decodes, names with markup are shown as written. A hand-made broken page checks that the probe
can fail. Skipped only where Chromium is not installed."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _browser import CHROMIUM, NO_CHROMIUM, audit_layout

from jaxcompare.compare import compare_models

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)

NAMES = ["<b>x</b>", "a & b", "long-checkpoint-name-" + "x" * 70, "m3", "m4"]
GROUPS = ["standard", "standard", "standard", "<g>", "<g>"]


def _apply(p, x):
    return jnp.tanh(x @ p["dense<i>"]["kernel"]) @ p["out"]["kernel"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report with every section (tiny models: the spectra section needs one layer with both sides >= 10)."""
    rng = np.random.default_rng(0)
    x, xt = rng.standard_normal((60, 12)).astype(np.float32), rng.standard_normal((40, 12)).astype(np.float32)
    y, yt = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1), (xt[:, 0] > 0).astype(np.int32) + (xt[:, 1] > 1)
    ps = [
        {
            "dense<i>": {"kernel": rng.standard_normal((12, 16)).astype(np.float32)},
            "out": {"kernel": rng.standard_normal((16, 3)).astype(np.float32)},
        }
        for _ in NAMES
    ]
    res = compare_models(
        jax.random.key(0), _apply, list(zip(NAMES, ps)), x, y, x_train=xt, y_train=yt, groups=GROUPS, n_boot=5,
        n_kernel_points=16, n_permutations=3, n_surrogate_train=16, progress_bar=False,
    )  # fmt: skip
    assert res.similarity is not None and res.surrogate is not None and res.spectra is not None, res.skipped
    return res.report(tmp_path_factory.mktemp("report"))


def test_probe_detects_a_broken_page(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><body><p><b>x</b> and a & b</p><div style="width:3000px">wide</div>'
        '<img src="data:image/png;base64,AAAA"></body></html>',
        encoding="utf-8",
    )
    a = audit_layout(page, 800, expect_text=["<b>x</b>", "a & b"])
    assert a["page"] is True and a["broken"] == 1 and a["found"] == [False, True] and a["bold"] == 1


@pytest.mark.parametrize("width", [1400, 800])
def test_compare_report_in_headless_browser(report, width):
    a = audit_layout(report, width, expect_text=NAMES[:2] + ["<g>"], wrappers=".scroll")
    assert a["page"] is False, f"the page scrolls sideways at {width} px: {a}"
    assert a["overflow"] == 0, f"an image or table wrapper passes the right edge at {width} px: {a}"
    assert a["broken"] == 0, a
    assert a["found"] == [True, True, True] and a["bold"] == 0, f"markup in names was not escaped: {a}"
    if importlib.util.find_spec("matplotlib") is not None:
        assert a["images"] == 5, a  # α̂ against 3 metrics, the CKA heatmap, the per-layer spectra
