"""Section "lwr": which optimizer trained this network? Linear-width spectra under four optimizers."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ._report import Report, to_jsonable
from ._section import Section, log, pyplot

__all__ = ["LWR", "spectra_grid"]


def spectra_grid(results: Mapping[str, Any], cfg: Any, matrices=("weights", "ck", "ntk")):
    """One row per run (its name as the row's title), one column per matrix: histograms after training over the
    limiting density at initialization, the density drawn only on its support (where it exceeds 10⁻³ of its peak)."""
    from .. import lwr

    plt = pyplot()
    fig = plt.figure(figsize=(3.8 * len(matrices), 3.1 * len(results)), layout="constrained")
    rows = fig.subfigures(len(results), 1, squeeze=False)[:, 0]
    for sub, (name, res) in zip(rows, results.items()):
        sub.suptitle(name, fontsize=11, fontweight="bold", x=0.01, ha="left")
        axes = sub.subplots(1, len(matrices), squeeze=False)[0]
        for ax, m in zip(axes, matrices):
            lwr.plot_spectra(res, cfg, m, ax=ax, bins=60, label="after training", logy=True)
            for line in ax.get_lines():
                y = np.asarray(line.get_ydata(), float)
                if y.size > 2 and np.nanmax(y) > 0:
                    line.set_ydata(np.where(y > 1e-3 * np.nanmax(y), y, np.nan))
            ax.set_ylabel("density (log scale)")
            ax.set_xlabel("eigenvalue")
    return fig


def run(key: jax.Array, report: Report, size: Mapping[str, Any], out_dir: str) -> dict:
    from .. import lwr
    from ..lwr._diagnosis import spectral_diagnosis  # its spectral statistics; its verdict is not used

    plt = pyplot()
    n, d, h = size["lwr"]
    steps = size["lwr_steps"]
    cfg = lwr.LWRConfig(n=n, d=d, h=h)
    kd, kp, kt = jax.random.split(key, 3)
    data = lwr.sample_data(kd, cfg)
    params = lwr.init_params(kp, cfg)
    runs = {
        "GD (η = 0.2 n)": dict(optimizer="gd", lr=0.2 * n),
        "SGD small step (η = 1, batch 32)": dict(optimizer="sgd", lr=1.0, batch_size=32),
        "SGD large step (η = 150, batch 32, {steps} steps)": dict(optimizer="sgd", lr=150.0, batch_size=32, steps=50),
        "Adam (lr 0.3, batch 32)": dict(optimizer="adam", lr=0.3, batch_size=32),
    }
    results, rows = {}, []
    for i, (label, kw) in enumerate(runs.items()):
        t0 = time.perf_counter()
        kw = {"steps": steps, **kw}
        kw["steps"] = max(1, min(kw["steps"], steps))
        name = label.format(steps=kw["steps"])  # the steps this run takes (--quick runs fewer than 50)
        res = lwr.train(
            jax.random.fold_in(kt, i), params, data, cfg, record_every=max(1, kw["steps"] // 5), throw=False, **kw
        )
        jax.block_until_ready(res)
        results[name] = res
        hist = res.history
        diag = spectral_diagnosis(hist.eig_weights[0], hist.eig_weights[-1], np.asarray(hist.align[-1]).max(axis=-1)[0])
        diverged = bool(np.asarray(res.diverged))
        rows.append(
            {
                "optimizer": name,
                "top eigenvalue of Σ": diag.top_eigenvalue,
                "init max": diag.init_max,
                "eigenvalues > 1.1× init max": diag.n_outliers,
                "tail exponent init": diag.tail_alpha_init,
                "tail exponent end": diag.tail_alpha_end,
                "|<u1, β>|": diag.top_align,
                "‖W−W0‖/√d": float(np.asarray(hist.dW[-1])),
                "train loss": float(np.asarray(hist.train_loss[-1])),
                "diverged": diverged,
            }
        )
        log(f"lwr: {name} in {time.perf_counter() - t0:.1f}s")
    report.section(
        f"Linear-width spectra under four optimizers (n={n}, d={d}, h={h})",
        "A two-layer network f(x) = vᵀφ(Wx/√d)/√h with n, d, h of the same order. At initialization the spectrum of "
        "Σ = WᵀW/h follows Marchenko–Pastur and the CK/NTK follow the Fan–Wang limits (red curves). Full-batch GD "
        "and small-step SGD leave the bulk where it was; a large step plants an outlier aligned with the teacher "
        "direction β (BBP; the |<u1, β>| column, chance level ≈ 1/√d); Adam spreads heavy tails. The table lists "
        "these fingerprints; which optimizer trained a network is decided in the section on recipe identification, "
        "by α̂ against pools of networks of each optimizer (no hand-set thresholds).",
    )
    report.figure(
        spectra_grid(results, cfg),
        "Spectra after training (blue histograms, log density) over the limiting laws at initialization "
        "(red curves, drawn on their support); rows: optimizers; columns: weights Σ, conjugate kernel, NTK.",
        out_dir=out_dir,
        name="lwr_spectra",
    )
    report.table(rows, caption="Spectral fingerprints of each optimizer")
    try:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        lwr.plot_tail_exponents(results, ax=ax)
        report.figure(
            fig,
            "Power-law tail exponent of the spectrum of Σ along training (Clauset MLE ± s.e.).",
            out_dir=out_dir,
            name="lwr_tails",
        )
    except Exception as e:  # noqa: BLE001 - a figure must not sink the report
        report.error("tail-exponent figure", e)
    t0 = time.perf_counter()
    chk = lwr.check_spike(jax.random.fold_in(key, 7), cfg)
    fig = lwr.plot_spike_vs_step(chk)
    report.figure(
        fig,
        "One large GD step: top eigenvalue of Σ and its alignment with β against η/n, beside the BBP "
        "prediction (from the initial state, with the push's correlation with W₀), the textbook BBP reading "
        "that takes the push independent of W₀, and the Marchenko–Pastur edge.",
        out_dir=out_dir,
        name="lwr_spike",
    )
    log(f"lwr: spike check in {time.perf_counter() - t0:.1f}s")
    report.finding(
        "Linear-width spectra: top eigenvalue of Σ after training "
        + "; ".join(f"{row['optimizer']} {row['top eigenvalue of Σ']:.3g}" for row in rows)
        + f" (initial bulk edge {rows[0]['init max']:.3g})."
    )
    return dict(config=dict(n=n, d=d, h=h, steps=steps), runs=rows, spike_check=to_jsonable(chk))


LWR = Section(
    "lwr",
    run,
    cost=2.6,  # CPU seconds relative to the microscope's (--quick, measured 2026-11-29)
    quick=dict(lwr=(120, 60, 90), lwr_steps=20),
    full=dict(lwr=(600, 300, 450), lwr_steps=150),
)
