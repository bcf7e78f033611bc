"""One key, one result with ``jax_enable_x64`` on or off: the draws that depended on the default integer or float
width (``randint``/``uniform`` without a dtype draw 64-bit numbers under x64) use 32-bit words. The suite runs with
x64 on (conftest.py); a child process without it must give the same numbers for float32 inputs. Oracle: the
same computation in the other mode (independent of either value)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxcompare as jc

_CHILD = r"""
import json, sys, numpy as np, jax, jax.numpy as jnp, jaxcompare as jc
print(json.dumps(__import__("parity").run()))
"""


def run() -> dict:
    """The draws under test, for float32 inputs (module-level: the child imports this file)."""
    g = np.random.default_rng(0)
    s = jnp.asarray(g.normal(size=(8, 200)), jnp.float32).at[2].add(1.0)
    x1, x2 = jc.bootstrap_halves(jax.random.key(0), 200, 5)
    r = jc.ensemble_alpha_hat(jax.random.key(0), s, candidates=jnp.arange(4), reference=jnp.arange(4, 8), n_boot=6)
    logits = jnp.asarray(g.normal(size=(120, 3)), jnp.float32)
    probs, labels = jax.nn.softmax(logits), jnp.asarray(g.integers(0, 3, 120))
    ci = jc.ece_interval(jax.random.key(1), probs, labels, n_boot=20)
    return dict(
        x1=np.asarray(x1).tolist(),
        x2=np.asarray(x2).tolist(),
        alpha_hat=np.asarray(r.alpha_hat).tolist(),
        ci=[float(v) for v in jax.tree_util.tree_leaves(ci) if jnp.ndim(v) == 0],
    )


def test_bootstrap_draws_do_not_depend_on_x64(tmp_path):
    assert jax.config.jax_enable_x64
    (tmp_path / "parity.py").write_text(open(__file__).read())
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["JAX_ENABLE_X64"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    child, mine = json.loads(out.stdout.strip().splitlines()[-1]), run()
    assert child["x1"] == mine["x1"] and child["x2"] == mine["x2"]
    np.testing.assert_allclose(mine["alpha_hat"], child["alpha_hat"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mine["ci"], child["ci"], rtol=1e-5, atol=1e-6)


_RANKS_CHILD = r"""
import json, numpy as np, jax, jaxcompare as jc
assert not jax.config.jax_enable_x64
g = np.random.default_rng(3)
x = 1.0 + 1e-9 * g.permutation(40)        # distinct in float64, one value in float32
y = g.normal(size=40)
pos = np.arange(40) % 3 == 0
t = jc.metrics.kendall_tau_test(x, y)
print(json.dumps(dict(tau=float(jc.metrics.kendall_tau(x, y)), test=[float(t.statistic), float(t.pvalue)],
                      auroc=float(jc.metrics.auroc(x, pos)), auroc_list=float(jc.metrics.auroc(list(x), pos)))))
"""


def test_rank_metrics_keep_float64_inputs_without_x64():
    """Kendall's tau and AUROC of NumPy float64 scores that differ by 1e-9 (one float32 value): without x64 they
    were computed on float32-rounded copies (x "constant", AUROC 0.5); oracle: SciPy and scikit-learn in float64."""
    import scipy.stats
    import sklearn.metrics

    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["JAX_ENABLE_X64"] = "0"
    out = subprocess.run([sys.executable, "-c", _RANKS_CHILD], env=env, capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    g = np.random.default_rng(3)
    x, y = 1.0 + 1e-9 * g.permutation(40), g.normal(size=40)
    pos = np.arange(40) % 3 == 0
    ref = scipy.stats.kendalltau(x, y, method="asymptotic")
    np.testing.assert_allclose(child["tau"], ref.statistic, rtol=1e-6)
    np.testing.assert_allclose(child["test"], [ref.statistic, ref.pvalue], rtol=1e-5)
    auc = sklearn.metrics.roc_auc_score(pos, x)
    assert abs(auc - 0.5) > 0.05  # the rounded scores would all tie
    np.testing.assert_allclose([child["auroc"], child["auroc_list"]], auc, rtol=1e-6)


_ORDER_CHILD = r"""
import json, numpy as np, jax, jaxcompare as jc
from jaxcompare.trimming import trimmed_ks, w1_excess, recipe_alpha, pool_threshold
assert not jax.config.jax_enable_x64
g = np.random.default_rng(5)
c, r = 1.0 + 1e-9 * g.permutation(60), 1.0 + 1e-9 * (g.permutation(80) + 0.5)   # one float32 value
out = dict(
    ks=[float(trimmed_ks(c, r, a)) for a in (0.0, 0.2)],
    big=float(trimmed_ks(np.array([2**32]), np.array([0]), 0.0)),
    near=float(trimmed_ks(np.array([2**24 + 1]), np.array([2**24]), 0.0)),
    w1=float(w1_excess(np.array([2**32]), np.array([0]), 0.0)),
    recipe=float(recipe_alpha(c, np.stack([r, r + 1e-10]), threshold=0.05)),
    pool=float(pool_threshold(np.stack([c[:50], r[:50], r[30:]]))),
)
try:
    jc.metrics.churn(np.array([2**32, 1]), np.array([0, 1])); out["churn"] = "accepted"
except ValueError as e:
    out["churn"] = str(e)
print(json.dumps(out))
"""


def test_rank_statistics_keep_the_order_of_float64_inputs_without_x64():
    """KS-type statistics depend only on the order of the pooled scores; without x64, NumPy float64 scores that
    differ below float32 resolution tied (a KS distance of 0.6 read as 0) and int64 2**32 wrapped to 0. They are
    now computed on the joint ranks. Oracles: SciPy's ks_2samp in float64, the same functions in this process
    (x64 on), and W1 by hand."""
    import scipy.stats

    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", _ORDER_CHILD], env=env, capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    from jaxcompare.trimming import pool_threshold, recipe_alpha, trimmed_ks

    g = np.random.default_rng(5)
    c, r = 1.0 + 1e-9 * g.permutation(60), 1.0 + 1e-9 * (g.permutation(80) + 0.5)
    ks = scipy.stats.ks_2samp(c, r).statistic
    assert ks > 0.1
    np.testing.assert_allclose(child["ks"], [ks, float(trimmed_ks(c, r, 0.2))], rtol=1e-6)
    assert child["big"] == 1.0 and child["near"] == 1.0 and child["w1"] == 2.0**32
    np.testing.assert_allclose(child["recipe"], float(recipe_alpha(c, np.stack([r, r + 1e-10]), threshold=0.05)))
    # the pool threshold is the largest leave-one-out KS distance raised by 8 ulps of the dtype it is computed
    # in (float32 in the child)
    rows = np.stack([c[:50], r[:50], r[30:]])
    loo = max(scipy.stats.ks_2samp(rows[i], np.delete(rows, i, axis=0).ravel()).statistic for i in range(3))
    assert loo <= child["pool"] <= loo + 10 * np.finfo(np.float32).eps
    assert loo <= float(pool_threshold(rows)) <= loo + 10 * np.finfo(np.float64).eps
    assert "must lie in" in child["churn"]


_SEED_CHILD = r"""
import json, jax
from jaxcompare._validation import key_from_seed
assert not jax.config.jax_enable_x64
seeds = [0, 5, 2**32 - 1, 2**32, 2**32 + 5, 2**63 - 1]
print(json.dumps({"plain": [jax.random.key_data(jax.random.key(s)).tolist() for s in seeds],
                  "ours": [jax.random.key_data(key_from_seed(s)).tolist() for s in seeds]}))
"""


def test_seeds_beyond_32_bits_give_the_x64_key_in_both_modes():
    """Without x64 jax.random.key kept a seed's low 32 bits: seeds 0 and 2**32 gave one key (the same study numbers
    under different recorded seeds), and a seed >= 2**32 another key than under x64. Oracle: jax.random.key under
    x64 (this process) and without it (a child), seed by seed."""
    from jaxcompare._validation import key_from_seed

    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["JAX_ENABLE_X64"] = "0"
    out = subprocess.run([sys.executable, "-c", _SEED_CHILD], env=env, capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    seeds = [0, 5, 2**32 - 1, 2**32, 2**32 + 5, 2**63 - 1]
    x64 = [jax.random.key_data(jax.random.key(s)).tolist() for s in seeds]
    assert child["plain"][3] == child["plain"][0] and x64[3] != x64[0]  # the collision the fix is for
    assert child["ours"] == x64 == [jax.random.key_data(key_from_seed(s)).tolist() for s in seeds]
    assert child["plain"][:3] == x64[:3]  # below 2**32 nothing changes
