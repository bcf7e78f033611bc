"""One result convention (issue 13 item 5) and the opt-in checked mode under jit (issue 15 scope 2).

Oracles: the inputs are built so that the right outcome is known by construction (NaN inputs, labels outside the
class range, a step size far above the stability bound), never from our own outputs.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxcompare as jc
from jaxcompare import embed, lwr
from jaxcompare._checked import checked
from jaxcompare._results import Result, SolverWarning, report_result

SOLVERS = {
    "fit_kglm": jc.fit_kglm,
    "ensemble_alpha_hat": jc.ensemble_alpha_hat,
    "lwr.train": lwr.train,
    "embed.lda": embed.lda,
    "embed.separability": embed.separability,
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_has_the_same_throw_default(name):
    assert inspect.signature(SOLVERS[name]).parameters["throw"].default is True


def test_result_codes_are_a_small_stable_enum():
    assert [r.name for r in Result] == [
        "successful",
        "max_steps_reached",
        "stalled",
        "diverged",
        "nonfinite",
        "singular",
    ]
    assert [int(r) for r in Result] == list(range(6))
    assert all(isinstance(r.message, str) and r.message for r in Result)
    assert issubclass(jc.KGLMConvergenceWarning, SolverWarning) and issubclass(SolverWarning, RuntimeWarning)


def test_report_result_raises_warns_or_stays_silent():
    report_result(jnp.asarray(0, jnp.int32), True, "never")
    with pytest.raises(ValueError, match=r"1 of 3 problems failed; worst: boom \[result=stalled\]"):
        report_result(jnp.asarray([0, 2, 0], jnp.int32), True, "boom", error=ValueError)
    with pytest.warns(SolverWarning, match=r"\[result=diverged\]"):
        report_result(jnp.asarray(3, jnp.int32), False, lambda r: r.message)


def _kernel_problem():
    F = jax.random.normal(jax.random.key(0), (30, 5))
    return F @ F.T, jnp.argmax(F[:, :3], axis=1)


def test_fit_kglm_result_codes_and_throw():
    K, y = _kernel_problem()
    assert int(jc.fit_kglm(K, y).result) == int(Result.successful)
    with pytest.raises(RuntimeError, match=r"\[result=max_steps_reached\]"):
        jc.fit_kglm(K, y, l2=1e-4, max_iter=3)
    with pytest.warns(jc.KGLMConvergenceWarning, match="did not converge"):
        m = jc.fit_kglm(K, y, l2=1e-4, max_iter=3, throw=False)
    assert int(m.result) == int(Result.max_steps_reached) and not bool(m.converged)
    # under jit the field is the report; nothing is raised
    r = jax.jit(lambda K: jc.fit_kglm(K, y, n_classes=3, max_iter=3, throw=False).result)(K)
    assert int(r) == int(Result.max_steps_reached)


def test_checked_mode_reports_nan_inputs_under_jit():
    ref = jnp.linspace(0.0, 1.0, 50)
    cand = ref.at[3].set(jnp.nan)
    f = jax.jit(lambda c: jc.alpha_hat(c, ref, threshold=0.2))
    assert np.isfinite(float(f(cand)))  # the documented limitation: unchecked jit gives a number
    with pytest.raises(checkify.JaxRuntimeError, match="candidate must be finite"):
        checked(f)(cand)
    assert float(checked(f)(ref)) == 0.0  # a clean input passes through unchanged
    g = jax.jit(jax.vmap(lambda c: jc.trimmed_ks(c, ref, 0.1)))
    with pytest.raises(checkify.JaxRuntimeError, match="candidate must be finite"):
        checked(g)(jnp.stack([ref, cand]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"alpha must lie in \[0, 1\)"):
        checked(jax.jit(lambda a: jc.trimmed_ks(ref, ref, a)))(1.5)


def test_checked_mode_reports_out_of_range_labels_and_failed_fits_under_jit():
    K, y = _kernel_problem()
    bad = y.at[0].set(7)
    fit = jax.jit(lambda y: jc.fit_kglm(K, y, n_classes=3, throw=False).W)
    assert np.all(np.isfinite(np.asarray(fit(bad))))  # unchecked: a plausible model of the wrong labels
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels must lie in \[0, 3\)"):
        checked(fit)(bad)
    nan_labels = y.astype(jnp.float32).at[2].set(jnp.nan)
    with pytest.raises(checkify.JaxRuntimeError, match="whole-number class labels"):
        checked(jax.jit(lambda y: jc.fit_kglm(K, y, n_classes=3, throw=False).W))(nan_labels)
    with pytest.raises(checkify.JaxRuntimeError, match="fit_kglm failed under jit"):
        checked(jax.jit(lambda K: jc.fit_kglm(K, y, n_classes=3, max_iter=2).W))(K)
    Kn = K.at[1, 1].set(jnp.inf)
    with pytest.raises(checkify.JaxRuntimeError, match="kernel_train_train must be finite"):
        checked(jax.jit(lambda K: jc.fit_kglm(K, y, n_classes=3, throw=False).W))(Kn)


def test_checked_mode_covers_embed_and_metrics():
    X = jax.random.normal(jax.random.key(1), (20, 3))
    Xn = X.at[4, 1].set(jnp.nan)
    with pytest.raises(checkify.JaxRuntimeError, match="X must be finite"):
        checked(jax.jit(lambda X: embed.pca(2).fit(X).components))(Xn)
    with pytest.raises(checkify.JaxRuntimeError, match="a must be finite"):
        checked(jax.jit(lambda a: embed.mmd2(a, X)))(Xn)
    scores = jnp.ones((6, 3)).at[0, 0].set(jnp.nan)
    with pytest.raises(checkify.JaxRuntimeError, match="a must be finite"):
        checked(jax.jit(lambda s: jc.churn(s, jnp.ones((6, 3)))))(scores)
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels must lie in \[0, 3\)"):
        checked(jax.jit(lambda l: jc.accuracy(jnp.ones((4, 3)), l)))(jnp.array([0, 1, 3, 0]))


def test_checked_mode_reports_a_diverged_training_run_under_jit():
    cfg = lwr.LWRConfig(n=32, d=16, h=24)
    data, p = lwr.sample_data(jax.random.key(0), cfg), lwr.init_params(jax.random.key(1), cfg)
    run = jax.jit(lambda lr: lwr.train(jax.random.key(2), p, data, cfg, lr=lr, steps=5, spectra=False).result)
    assert int(run(1e6)) == int(Result.diverged)  # unchecked: the code is the report
    with pytest.raises(checkify.JaxRuntimeError, match="lwr.train failed under jit"):
        checked(run)(1e6)
    assert int(checked(run)(1.0)) == int(Result.successful)


def test_checked_rejects_non_callables():
    with pytest.raises(TypeError, match="fn must be callable"):
        checked(3)
