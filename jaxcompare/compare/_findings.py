r"""Which models are atypical, by how much, and which statistics agree: the rule and the sentences.

**The rule.** Every statistic is oriented so that larger means more atypical: ``alpha_hat``, ``churn``, ``ece`` and
``accuracy_gap`` (``|accuracy − median reference accuracy|``). Its *reference values* ``v`` are the values of the
reference models (each computed leave-one-out against the other reference models); without groups, every model's
(leave-one-out) value. A model is flagged on a statistic when its value exceeds the bound

.. math:: b = \max\big(\mathrm{med}(v) + 3\,\hat\sigma,\ \max(v)\big), \qquad
          \hat\sigma = \max\big(1.4826\,\mathrm{MAD}(v),\ 1/T\big)

with groups (above the reference models' own range, and at least three robust standard deviations above their
median); without groups only ``med(v) + 3σ̂`` (the range of all models would contain the atypical ones). ``MAD`` is
the median absolute deviation (1.4826·MAD estimates a normal standard deviation and ignores up to half the models
being atypical); the floor ``1/T`` (one test point of ``T``) keeps differences no test set can resolve from being
called. For α̂, a mean over ``B`` bootstrap rounds, the Monte Carlo error counts too: a model is flagged when
``α̂ − 2·sd/√B`` exceeds the bound (``sd`` = ``alpha_hat_sd``, the spread over rounds). A model is **atypical** when
it is flagged on ``alpha_hat``; the classic statistics that flag it too *agree*.

The same rule judges ``kernel_dissimilarity`` (``1 −`` the mean debiased CKA of a model's kernel with its reference
models' kernels, section ``"similarity"``), with the floor ``σ̂ ≥`` the median permutation-null standard deviation
of the CKA instead of ``1/T``; the findings say which models' kernels are least similar to the others and whether
they are the atypical ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["STATISTICS", "ALL_STATISTICS", "flag_bounds", "findings_sentences"]

#: Statistics the rule is applied to (larger = more atypical), with their display names: α̂ and the classic ones.
STATISTICS = {"alpha_hat": "α̂", "accuracy_gap": "accuracy gap", "churn": "churn", "ece": "ECE"}
#: All statistics the rule may judge (the kernel's joins with the section "similarity").
ALL_STATISTICS = {**STATISTICS, "kernel_dissimilarity": "kernel dissimilarity (1 − CKA)"}


def flag_bounds(
    values: dict[str, np.ndarray],
    ref_mask: np.ndarray,
    n_test: int,
    grouped: bool,
    floors: dict[str, float] | None = None,
) -> dict[str, dict]:
    """The bound of the rule for each statistic: ``{stat: {"median", "scale", "bound", "n_reference"}}``.

    ``floors`` overrides the floor ``1/n_test`` of the robust sd per statistic."""
    out = {}
    floors = floors or {}
    for stat, v in values.items():
        r = np.asarray(v, np.float64)[ref_mask]
        med = float(np.median(r))
        scale = max(1.4826 * float(np.median(np.abs(r - med))), floors.get(stat, 1.0 / n_test))
        bound = med + 3.0 * scale
        if grouped:
            bound = max(bound, float(np.max(r)))
        out[stat] = {"median": med, "scale": scale, "bound": bound, "n_reference": int(r.size)}
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _atypical_sentences(rows: list[dict[str, Any]], bounds: dict[str, dict], settings: dict[str, Any]) -> list[str]:
    out = []
    k = len(rows)
    b = bounds["alpha_hat"]
    atyp = [r for r in rows if r["atypical"]]
    atyp.sort(key=lambda r: -r["alpha_hat"])
    rule = (
        f"α̂ above {_fmt(b['bound'])}, the larger of the reference models' own α̂ range and their median + 3 robust sd"
        if settings["reference"] is not None
        else f"α̂ above {_fmt(b['bound'])} = median + 3 robust sd of all models' α̂"
    )
    if not atyp:
        top = max(rows, key=lambda r: r["alpha_hat"])
        out.append(f"No model is atypical ({rule}); the largest α̂ is {_fmt(top['alpha_hat'])} ({top['name']}).")
    else:
        out.append(
            f"{len(atyp)} of {k} models {'is' if len(atyp) == 1 else 'are'} atypical ({rule}): "
            + "; ".join(
                f"{r['name']} (α̂ = {_fmt(r['alpha_hat'])} ± {_fmt(r['alpha_hat_sd'])}, "
                f"{_fmt(r['alpha_hat'] / b['bound'])}× the bound)"
                for r in atyp
            )
            + "."
        )
        classic = [s for s in STATISTICS if s != "alpha_hat" and s in bounds]
        for r in atyp:
            agree = [STATISTICS[s] for s in classic if r["flags"].get(s)]
            disagree = [STATISTICS[s] for s in classic if not r["flags"].get(s)]
            details = ", ".join(f"{STATISTICS[s]} {_fmt(r[s])} vs bound {_fmt(bounds[s]['bound'])}" for s in classic)
            if agree and not disagree:
                out.append(f"{r['name']}: all classic statistics agree ({details}).")
            elif agree:
                out.append(
                    f"{r['name']}: {_join(agree)} agree{'s' if len(agree) == 1 else ''}, "
                    f"{_join(disagree)} do{'es' if len(disagree) == 1 else ''} not ({details})."
                )
            else:
                out.append(
                    f"{r['name']}: no classic statistic flags it ({details}); only its score distribution differs."
                )
    return out


def _similarity_sentences(rows: list[dict[str, Any]], bounds: dict[str, dict], sim: dict[str, Any]) -> list[str]:
    k = len(rows)
    b = bounds["kernel_dissimilarity"]
    low = min(rows, key=lambda r: r["kernel_cka"])
    high = max(r["kernel_cka"] for r in rows)
    ref = "its reference models" if rows[0]["role"] != "leave-one-out" else "the other models"
    head = (
        f"Kernel similarity (debiased CKA of the models' {sim['label']} kernels on {sim['n_points']} test points, "
        f"{sim['n_permutations']} permutations): "
    )
    if high - low["kernel_cka"] <= sim["resolution"]:
        head += (
            f"the kernels are alike (mean CKA with {ref} from {_fmt(low['kernel_cka'])} to {_fmt(high)}, within "
            f"the permutation null's spread {_fmt(sim['resolution'])})"
        )
    else:
        head += (
            f"the kernel least similar to {ref} is {low['name']}'s (mean CKA {_fmt(low['kernel_cka'])}; "
            f"reference median {_fmt(1.0 - b['median'])})"
        )
    flagged = [r for r in rows if r["flags"].get("kernel_dissimilarity")]
    flagged.sort(key=lambda r: r["kernel_cka"])
    if not flagged:
        out = [head + f"; no kernel is atypical (mean CKA below {_fmt(1.0 - b['bound'])})."]
    else:
        out = [
            head
            + f"; {len(flagged)} of {k} kernels are atypical (mean CKA below {_fmt(1.0 - b['bound'])}): "
            + _join([r["name"] for r in flagged])
            + "."
        ]
    if "alpha_hat" in bounds:
        atyp = {r["name"] for r in rows if r["atypical"]}
        fl = {r["name"] for r in flagged}
        both = sorted(atyp & fl)
        if both:
            out.append(f"Kernel and α̂ agree on {_join(both)}.")
            if fl - atyp:
                out[-1] += f" Atypical kernel only: {_join(sorted(fl - atyp))}."
        elif atyp and fl:
            out.append("The atypical kernels are not those of the α̂-atypical models.")
        elif atyp:
            out.append(f"The kernels of the α̂-atypical models ({_join(sorted(atyp))}) are not atypical.")
    p = np.asarray(sim["p_value"], np.float64)
    iu = np.triu_indices(k, 1)
    weak = int(np.sum(p[iu] > 0.05 * (1 + 1e-6)))  # p = 1/20 in float32 is not above 0.05
    if sim["n_permutations"] < 19:
        out.append(f"With {sim['n_permutations']} permutations no p-value can reach 0.05; use at least 19.")
    elif weak:
        out.append(f"{weak} of {iu[0].size} model pairs have kernels not significantly aligned (permutation p > 0.05).")
    return out


def _surrogate_sentences(rows: list[dict[str, Any]], sur: dict[str, Any]) -> list[str]:
    taus = np.array([r["surrogate_tau"] for r in rows], np.float64)
    lo, hi = rows[int(np.nanargmin(taus))], rows[int(np.nanargmax(taus))]
    out = [
        f"Kernel surrogates (kGLM on each model's {sur['label']} kernel, {sur['n_train']} training points): "
        f"faithfulness τ_K from {_fmt(lo['surrogate_tau'])} ({lo['name']}) to {_fmt(hi['surrogate_tau'])} "
        f"({hi['name']}), median {_fmt(float(np.nanmedian(taus)))}."
    ]
    ov = np.array([r["attribution_overlap"] for r in rows], np.float64)
    least = rows[int(np.argmin(ov))]
    out.append(
        f"Attribution: {least['name']}'s surrogate explains its predictions with the training points least shared "
        f"with {'its reference models' if rows[0]['role'] != 'leave-one-out' else 'the other models'} (top-"
        f"{sur['attribution_k']} overlap {_fmt(least['attribution_overlap'])}, median {_fmt(float(np.median(ov)))})."
    )
    not_conv = [r["name"] for r in rows if not r["surrogate_converged"]]
    if not_conv:
        out.append(f"The surrogate fit did not converge for {_join(not_conv)} (its faithfulness is approximate).")
    return out


def findings_sentences(
    rows: list[dict[str, Any]],
    bounds: dict[str, dict],
    detection: list[dict[str, Any]],
    settings: dict[str, Any],
    skipped: dict[str, str],
    similarity: dict[str, Any] | None = None,
    surrogate: dict[str, Any] | None = None,
) -> list[str]:
    """Sentences of the findings summary (plain text; the report escapes them)."""
    out = []
    k, t = len(rows), settings["n_test"]
    if settings["reference"] is None:
        out.append(
            f"{k} models compared on {t} test points; without groups each model is compared with all the "
            "others (leave-one-out reference)."
        )
    else:
        n_ref = sum(r["role"] == "reference" for r in rows)
        out.append(
            f"{k} models compared on {t} test points against the reference group "
            f"{settings['reference']!r} ({n_ref} models; each reference model against the other "
            f"{n_ref - 1})."
        )
    if "alpha_hat" not in bounds:
        out.append("α̂ was not computed (section 'alpha' not selected); atypical models cannot be named.")
    else:
        out.extend(_atypical_sentences(rows, bounds, settings))
    missed = [
        (r["name"], [STATISTICS[s] for s in STATISTICS if s != "alpha_hat" and r["flags"].get(s)])
        for r in rows
        if not r["atypical"]
    ]
    missed = [(n, s) for n, s in missed if s]
    if missed:
        out.append(
            (
                "Flagged by a classic statistic but not by α̂: "
                if "alpha_hat" in bounds
                else "Flagged by the classic statistics: "
            )
            + "; ".join(f"{n} ({_join(s)})" for n, s in missed)
            + "."
        )
    if similarity is not None:
        out.extend(_similarity_sentences(rows, bounds, similarity))
    if surrogate is not None:
        out.extend(_surrogate_sentences(rows, surrogate))
    for g in dict.fromkeys(d["group"] for d in detection):
        entries = sorted((d for d in detection if d["group"] == g), key=lambda d: d["statistic"] != "alpha_hat")
        n = entries[0]["n_group"]
        aurocs = ", ".join(f"{ALL_STATISTICS[e['statistic']]} {e['auroc']:.2f}" for e in entries)
        out.append(f"Telling group {g!r} ({n} model{'' if n == 1 else 's'}) from the reference, AUROC: {aurocs}.")
    for section, why in skipped.items():
        out.append(f"Section {section!r} skipped: {why.rstrip('.')}.")
    return out
