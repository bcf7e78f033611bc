"""Section "microscope": can a third model's embeddings tell two data sources apart?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ._report import Report
from ._section import Section

__all__ = ["MICROSCOPE"]


def run(key: jax.Array, report: Report, size: Mapping[str, Any], out_dir: str) -> dict:
    from .. import embed

    k1, k2, k3 = jax.random.split(key, 3)
    demo = embed.make_demo_embeddings(k1, n_per_source=size["micro_n"] // 2)
    X, lab = demo.embeddings, demo.labels
    sep = embed.separability(k2, X, lab)
    a, b = X[np.asarray(lab) == 0], X[np.asarray(lab) == 1]
    test = embed.two_sample_test(k3, a, b, n_permutations=500)
    report.section(
        "Embedding microscope: can a third model tell two data sources apart?",
        "Samples from two sources (original digits vs digits with added noise) are embedded by a fixed third model. "
        "PCA (left) shows the unsupervised structure — it tends to recover the hidden digit classes — and LDA (middle) "
        "the direction that best separates the sources. Held-out LDA accuracy (5-fold, Wilson 95% interval) and a "
        "permutation MMD test quantify the difference.",
    )
    report.kpis(
        {
            "samples": int(X.shape[0]),
            "LDA held-out accuracy": float(sep.accuracy),
            "95% interval": f"[{float(sep.ci_low):.3f}, {float(sep.ci_high):.3f}]",
            "chance": float(sep.chance),
            "MMD² (unbiased)": float(test.statistic),
            "permutation p-value": float(test.p_value),
        }
    )
    fig = embed.plot_microscope(X, lab, names=list(demo.names), hidden=demo.digits)
    report.figure(
        fig,
        "PCA and LDA projections of the embeddings, coloured by source (and by hidden digit).",
        out_dir=out_dir,
        name="microscope",
    )
    report.finding(
        f"Embedding microscope: LDA tells the two sources apart with held-out accuracy "
        f"{float(sep.accuracy):.3f} (95% interval [{float(sep.ci_low):.3f}, {float(sep.ci_high):.3f}], "
        f"chance {float(sep.chance):.2f}); permutation MMD test p = {float(test.p_value):.3g}."
    )
    return dict(
        n=int(X.shape[0]),
        lda_accuracy=float(sep.accuracy),
        ci=[float(sep.ci_low), float(sep.ci_high)],
        chance=float(sep.chance),
        mmd2=float(test.statistic),
        p_value=float(test.p_value),
    )


MICROSCOPE = Section("microscope", run, quick=dict(micro_n=200), full=dict(micro_n=1000), cost=1.0)
