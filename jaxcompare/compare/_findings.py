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
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["STATISTICS", "flag_bounds", "findings_sentences"]

#: Statistics the rule is applied to (larger = more atypical), with their display names.
STATISTICS = {"alpha_hat": "α̂", "accuracy_gap": "accuracy gap", "churn": "churn", "ece": "ECE"}


def flag_bounds(values: dict[str, np.ndarray], ref_mask: np.ndarray, n_test: int, grouped: bool) -> dict[str, dict]:
    """The bound of the rule for each statistic: ``{stat: {"median", "scale", "bound", "n_reference"}}``."""
    out = {}
    for stat, v in values.items():
        r = np.asarray(v, np.float64)[ref_mask]
        med = float(np.median(r))
        scale = max(1.4826 * float(np.median(np.abs(r - med))), 1.0 / n_test)
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


def findings_sentences(
    rows: list[dict[str, Any]],
    bounds: dict[str, dict],
    detection: list[dict[str, Any]],
    settings: dict[str, Any],
    skipped: dict[str, str],
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
    for g in dict.fromkeys(d["group"] for d in detection):
        entries = sorted((d for d in detection if d["group"] == g), key=lambda d: d["statistic"] != "alpha_hat")
        n = entries[0]["n_group"]
        aurocs = ", ".join(f"{STATISTICS[e['statistic']]} {e['auroc']:.2f}" for e in entries)
        out.append(f"Telling group {g!r} ({n} model{'' if n == 1 else 's'}) from the reference, AUROC: {aurocs}.")
    for section, why in skipped.items():
        out.append(f"Section {section!r} skipped: {why.rstrip('.')}.")
    return out
