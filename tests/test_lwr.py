"""Tests of the jaxcompare.lwr simulator against independent float64 NumPy oracles (closed-form gradients, Jacobian
Grams by autodiff, LAPACK eigenvalues, Adam written out by hand)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompare as jc
from jaxcompare import lwr

CFG64 = lwr.LWRConfig(n=40, d=16, h=24, dtype="float64")


@pytest.fixture(scope="module")
def small():
    data = lwr.sample_data(jax.random.key(0), CFG64)
    params = lwr.init_params(jax.random.key(1), CFG64)
    return data, params


def _np_forward(W, v, X):
    d, h = W.shape[1], W.shape[0]
    U = X @ W.T / np.sqrt(d)
    return U, np.tanh(U) @ v / np.sqrt(h)


# ---------------------------------------------------------------- configuration and sampling
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(n=0, d=5, h=5), ValueError, "n must be >= 1"),
        (dict(n=5, d=-1, h=5), ValueError, "d must be >= 1"),
        (dict(n=5, d=5, h=2.5), TypeError, "h must be an integer"),
        (dict(n=5, d=5, h=5, activation="swish"), ValueError, "activation must be one of"),
        (dict(n=5, d=5, h=5, teacher=("softplus", "cube")), ValueError, "teacher must be one of"),
        (dict(n=5, d=5, h=5, noise_std=-0.1), ValueError, "noise_std"),
        (dict(n=5, d=5, h=5, train_v=1), TypeError, "train_v"),
    ],
)
def test_config_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lwr.LWRConfig(**kwargs)


def test_sample_data_matches_formula_and_is_reproducible():
    cfg = lwr.LWRConfig(n=50, d=20, h=30, noise_std=0.0, teacher=("softplus", "square"), dtype="float64")
    data = lwr.sample_data(jax.random.key(3), cfg)
    X, B = np.asarray(data.X), np.asarray(data.beta)
    assert X.shape == (50, 20) and B.shape == (2, 20) and data.X_test.shape == (50, 20)
    np.testing.assert_allclose(np.linalg.norm(B, axis=1), 1.0, rtol=1e-12)
    P = X @ B.T
    y = np.logaddexp(0, P[:, 0]) + (P[:, 1] ** 2 - 1) + 0.2 * np.sum(X**2, 1) / 20
    np.testing.assert_allclose(np.asarray(data.y), y, rtol=1e-12)
    again = lwr.sample_data(jax.random.key(3), cfg)
    np.testing.assert_array_equal(np.asarray(again.y), np.asarray(data.y))
    one = lwr.sample_data(jax.random.key(3), lwr.LWRConfig(n=50, d=20, h=30))
    assert one.beta.shape == (20,) and one.X.dtype == jnp.float32 and one.y.dtype == jnp.float32


def test_init_params():
    p = lwr.init_params(jax.random.key(0), lwr.LWRConfig(n=10, d=300, h=400))
    assert p.W.shape == (400, 300) and p.v.shape == (400,) and p.W.dtype == jnp.float32
    assert set(np.unique(np.asarray(p.v))) <= {-1.0, 1.0}
    # mean/variance of 1.2e5 N(0,1) entries: 6-sigma bounds (false failure < 1e-8)
    W = np.asarray(p.W, np.float64)
    assert abs(W.mean()) < 6 / np.sqrt(W.size) and abs(W.var() - 1) < 6 * np.sqrt(2 / W.size)
    with pytest.raises(TypeError, match="LWRConfig"):
        lwr.init_params(jax.random.key(0), {"n": 3})
    with pytest.raises(TypeError, match="PRNG key"):
        lwr.init_params(0, lwr.LWRConfig(n=10, d=3, h=4))


# ---------------------------------------------------------------- forward pass and kernels
def test_apply_and_kernels_match_numpy(small):
    data, p = small
    W, v, X = (np.asarray(a) for a in (p.W, p.v, data.X))
    U, f = _np_forward(W, v, X)
    np.testing.assert_allclose(np.asarray(lwr.apply(p, data.X)), f, rtol=1e-12)
    K = lwr.kernels(p, data.X)
    h, d = W.shape
    G = X @ X.T / d
    Fp = (1 - np.tanh(U) ** 2) * v
    np.testing.assert_allclose(np.asarray(K.weights), W.T @ W / h, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(K.ck), np.tanh(U) @ np.tanh(U).T / h, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(K.ntk_w), G * (Fp @ Fp.T) / h, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(np.asarray(K.ntk), np.asarray(K.ntk_w + K.ck), rtol=1e-12)
    jitted = jax.jit(lwr.kernels)(p, data.X)
    np.testing.assert_allclose(np.asarray(jitted.ntk), np.asarray(K.ntk), rtol=1e-12)


def test_closed_form_ntk_equals_jacobian_gram_and_trace_ntk(small):
    data, p = small
    chk = lwr.check_ntk_closed_form(p, data.X)
    assert chk.rel_err_w_jacobian < 1e-12 and chk.rel_err_full_jacobian < 1e-12
    if not hasattr(jc, "trace_ntk"):
        pytest.skip("jaxcompare.trace_ntk not available yet")
    assert chk.rel_err_w_trace_ntk < 1e-12 and chk.rel_err_full_trace_ntk < 1e-12


def test_kernels_float32_and_bad_input(small):
    data, _ = small
    cfg = lwr.LWRConfig(n=40, d=16, h=24)
    p32 = lwr.init_params(jax.random.key(1), cfg)
    K = lwr.kernels(p32, data.X.astype(jnp.float32))
    assert K.ntk.dtype == jnp.float32 and K.weights.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"X must have shape \(\*, 16\)"):
        lwr.kernels(p32, jnp.ones((5, 7)))
    with pytest.raises(ValueError, match="finite"):
        lwr.apply(p32, jnp.full((5, 16), jnp.nan))
    with pytest.raises(TypeError, match="LWRParams"):
        lwr.apply({"W": p32.W, "v": p32.v}, data.X)


# ---------------------------------------------------------------- training
def _np_grad_W(W, v, X, y):
    n, d = X.shape
    h = W.shape[0]
    U, f = _np_forward(W, v, X)
    r = y - f
    return -((r[:, None] * (1 - np.tanh(U) ** 2) * v).T @ X) / (n * np.sqrt(d * h)), 0.5 * np.mean(r**2)


def test_gd_steps_match_numpy_gradient_and_history(small):
    data, p = small
    W, v, X, y = (np.asarray(a) for a in (p.W, p.v, data.X, data.y))
    lr = 0.3 * CFG64.n
    res = lwr.train(jax.random.key(0), p, data, CFG64, lr=lr, steps=3, record_every=2)
    Wn, losses = W.copy(), []
    for _ in range(3):
        g, loss = _np_grad_W(Wn, v, X, y)
        losses.append(loss)
        Wn = Wn - lr * g
    np.testing.assert_allclose(np.asarray(res.params.W), Wn, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res.losses), losses, rtol=1e-10)
    H = res.history
    np.testing.assert_array_equal(np.asarray(H.step), [0, 2, 3])
    np.testing.assert_allclose(
        np.asarray(H.eig_weights[-1]), np.linalg.eigvalsh(Wn.T @ Wn / 24)[::-1], rtol=1e-9, atol=1e-12
    )
    U, f = _np_forward(Wn, v, X)
    Fp = (1 - np.tanh(U) ** 2) * v
    ntk = (X @ X.T / 16) * (Fp @ Fp.T) / 24 + np.tanh(U) @ np.tanh(U).T / 24
    np.testing.assert_allclose(np.asarray(H.eig_ntk[-1]), np.linalg.eigvalsh(ntk)[::-1], rtol=1e-9, atol=1e-12)
    ck_eigs = np.linalg.eigvalsh(np.tanh(U) @ np.tanh(U).T / 24)[::-1]
    np.testing.assert_allclose(np.asarray(H.eig_ck[-1]), ck_eigs, rtol=1e-8, atol=1e-10)  # h < n: h×h route
    np.testing.assert_allclose(float(H.dW[-1]), np.linalg.norm(Wn - W) / 4.0, rtol=1e-10)
    top = np.linalg.eigh(Wn.T @ Wn)[1][:, -1]
    assert float(H.align[-1, 0, 0]) == pytest.approx(abs(top @ np.asarray(data.beta)), rel=1e-8)
    assert float(H.train_loss[-1]) == pytest.approx(0.5 * np.mean((y - f) ** 2), rel=1e-10)
    assert res.params.v is not None and np.array_equal(np.asarray(res.params.v), v)
    assert not bool(res.diverged) and int(res.first_bad_step) == -1


def test_adam_first_step_matches_hand_written_adam(small):
    data, p = small
    W, v, X, y = (np.asarray(a) for a in (p.W, p.v, data.X, data.y))
    lr = 1e-2
    res = lwr.train(jax.random.key(0), p, data, CFG64, optimizer="adam", lr=lr, steps=2)
    g, _ = _np_grad_W(W, v, X, y)
    m, s = 0.1 * g, 0.001 * g**2
    W1 = W - lr * (m / (1 - 0.9)) / (np.sqrt(s / (1 - 0.999)) + 1e-8)
    g2, _ = _np_grad_W(W1, v, X, y)
    m, s = 0.9 * m + 0.1 * g2, 0.999 * s + 0.001 * g2**2
    W2 = W1 - lr * (m / (1 - 0.9**2)) / (np.sqrt(s / (1 - 0.999**2)) + 1e-8)
    np.testing.assert_allclose(np.asarray(res.params.W), W2, rtol=1e-9, atol=1e-12)


def test_sgd_full_batch_equals_gd_and_train_v(small):
    data, p = small
    kw = dict(lr=5.0, steps=2)  # the gd program of test_eig_backends_agree (2 steps, recorded at the end)
    gd = lwr.train(jax.random.key(0), p, data, CFG64, **kw)
    sgd = lwr.train(jax.random.key(1), p, data, CFG64, optimizer="sgd", batch_size=CFG64.n, **kw)
    np.testing.assert_allclose(np.asarray(sgd.params.W), np.asarray(gd.params.W), rtol=1e-10)
    cfg_v = lwr.LWRConfig(n=40, d=16, h=24, dtype="float64", train_v=True)
    both = lwr.train(jax.random.key(0), p, data, cfg_v, **kw)
    W, v, X, y = (np.asarray(a) for a in (p.W, p.v, data.X, data.y))
    for _ in range(2):
        gW, _ = _np_grad_W(W, v, X, y)
        U, f = _np_forward(W, v, X)
        gv = -(np.tanh(U).T @ (y - f)) / (40 * np.sqrt(24))
        W, v = W - 5.0 * gW, v - 5.0 * gv
    np.testing.assert_allclose(np.asarray(both.params.v), v, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(both.params.W), W, rtol=1e-10)


def test_vmap_over_keys_equals_loop_and_float32_kept():
    cfg = lwr.LWRConfig(n=48, d=16, h=24)
    data = lwr.sample_data(jax.random.key(0), cfg)
    keys = jax.random.split(jax.random.key(5), 2)

    def run(k):
        p = lwr.init_params(jax.random.fold_in(k, 1), cfg)
        return lwr.train(k, p, data, cfg, optimizer="sgd", batch_size=8, lr=2.0, steps=6, record_every=3)

    batched = jax.vmap(run)(keys)
    assert batched.history.eig_ntk.shape == (2, 3, 48)
    for i in range(2):
        one = run(keys[i])
        assert one.params.W.dtype == jnp.float32 and one.history.eig_weights.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(batched.params.W[i]), np.asarray(one.params.W), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(batched.history.eig_ck[i]), np.asarray(one.history.eig_ck), rtol=1e-4, atol=1e-5
        )
    # same key, same result; different keys, different minibatches
    np.testing.assert_array_equal(np.asarray(run(keys[0]).params.W), np.asarray(run(keys[0]).params.W))
    assert not np.allclose(np.asarray(batched.params.W[0]), np.asarray(batched.params.W[1]))


@pytest.mark.parametrize("optimizer, batch_size, train_v", [("gd", None, False), ("sgd", 8, False), ("adam", 16, True)])
def test_resume_equals_one_long_run(optimizer, batch_size, train_v):
    # Oracle: one uninterrupted run. Split runs must continue the optimizer state and the minibatch stream exactly.
    # Step counts chosen so that the runs share compiled programs (each (steps, record_every, resumed or not) is one
    # program): the 4-step run is the first chunk of the chunked run, the resumed 4-step chunk is the rest; the
    # resume happens mid-epoch for the minibatches (48 rows, batches of 8 or 16) and ends on a remainder record.
    cfg = lwr.LWRConfig(n=48, d=16, h=24, train_v=train_v, dtype="float64")
    data, p = lwr.sample_data(jax.random.key(0), cfg), lwr.init_params(jax.random.key(1), cfg)
    kw = dict(optimizer=optimizer, lr=0.1 if optimizer == "adam" else 5.0, batch_size=batch_size, record_every=4)
    full = lwr.train(jax.random.key(2), p, data, cfg, steps=10, **kw)
    a = lwr.train(jax.random.key(2), p, data, cfg, steps=4, **kw)
    b = lwr.train(jax.random.key(2), p, data, cfg, steps=6, resume=a, **kw)
    assert b.history.step.tolist() == [8, 10] and int(b.step) == 10 and b.losses.shape == (6,)
    joined = lwr.concat_results(a, b)
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(joined)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-12, atol=1e-12)
    # eager calls with a progress bar run one chunk per record (with a remainder chunk here): the same result
    chunked = lwr.train(jax.random.key(2), p, data, cfg, steps=10, progress_bar=True, **kw)
    assert chunked.history.step.tolist() == [0, 4, 8, 10]
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(chunked)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-12, atol=1e-12)
    # a plain restart from the trained parameters is *not* the same run (fresh optimizer state / batch stream)
    if optimizer != "gd":
        c = lwr.train(jax.random.key(2), a.params, data, cfg, steps=6, **kw)
        assert not np.allclose(np.asarray(c.params.W), np.asarray(full.params.W), atol=1e-9)


def test_resume_vmapped_over_seeds_and_bad_input(small):
    cfg = lwr.LWRConfig(n=48, d=16, h=24)
    data = lwr.sample_data(jax.random.key(0), cfg)
    keys = jax.random.split(jax.random.key(5), 2)

    def run(k, steps, resume=None):
        p = lwr.init_params(jax.random.fold_in(k, 1), cfg)
        return lwr.train(
            k, p, data, cfg, optimizer="sgd", batch_size=8, lr=2.0, steps=steps, record_every=3, resume=resume
        )

    full = jax.vmap(lambda k: run(k, 12))(keys)
    a = jax.vmap(lambda k: run(k, 6))(keys)
    b = jax.vmap(lambda k, r: run(k, 6, r))(keys, a)
    joined = lwr.concat_results(a, b, axis=1)
    assert joined.history.eig_ntk.shape == full.history.eig_ntk.shape == (2, 5, 48)
    np.testing.assert_allclose(np.asarray(joined.params.W), np.asarray(full.params.W), rtol=1e-5, atol=1e-5)

    data64, p64 = small
    r = lwr.train(jax.random.key(0), p64, data64, CFG64, lr=1.0, steps=2)
    with pytest.raises(TypeError, match="TrainResult"):
        lwr.train(jax.random.key(0), p64, data64, CFG64, lr=1.0, steps=2, resume=r.params)
    with pytest.raises(ValueError, match="optimizer"):
        lwr.train(jax.random.key(0), p64, data64, CFG64, optimizer="adam", lr=1.0, steps=2, resume=r)
    cfg_v = lwr.LWRConfig(n=32, d=16, h=24, train_v=True)
    data_v, p_v = lwr.sample_data(jax.random.key(0), cfg_v), lwr.init_params(jax.random.key(1), cfg_v)
    bad = lwr.train(jax.random.key(2), p_v, data_v, cfg_v, lr=1e4, steps=60, throw=False)
    with pytest.raises(ValueError, match="diverged"):
        lwr.train(jax.random.key(2), p_v, data_v, cfg_v, lr=1.0, steps=2, resume=bad)
    with pytest.raises(TypeError, match="TrainResult"):
        lwr.concat_results(r, r.history)


def test_eig_backends_agree(small):
    data, p = small
    a = lwr.train(jax.random.key(0), p, data, CFG64, lr=3.0, steps=2, eig_backend="lapack")
    b = lwr.train(jax.random.key(0), p, data, CFG64, lr=3.0, steps=2, eig_backend="jax")
    for name in ("eig_weights", "eig_ck", "eig_ntk", "align"):
        np.testing.assert_allclose(
            np.asarray(getattr(a.history, name)), np.asarray(getattr(b.history, name)), rtol=1e-9, atol=1e-12
        )


def test_divergence_is_flagged_with_step_and_bound():
    cfg = lwr.LWRConfig(n=32, d=16, h=24, train_v=True)
    data = lwr.sample_data(jax.random.key(0), cfg)
    p = lwr.init_params(jax.random.key(1), cfg)
    res = lwr.train(jax.random.key(2), p, data, cfg, lr=1e4, steps=60, throw=False)
    assert bool(res.diverged)
    bad = int(res.first_bad_step)
    assert 1 <= bad <= 60
    losses = np.asarray(res.losses)
    assert np.all(np.isfinite(losses[: bad - 1])) and np.all(np.isnan(losses[bad:]))
    assert np.all(np.isfinite(np.asarray(res.params.W))) and np.all(np.isfinite(np.asarray(res.history.eig_ntk)))
    assert 1e4 > float(res.lr_bound) > 0
    with pytest.raises(FloatingPointError, match=r"step \d+ of 60.*2n/λ_max"):
        lwr.train(jax.random.key(2), p, data, cfg, lr=1e4, steps=60)
    # chunked eager run (progress bar): the divergence flag and the frozen parameters carry across chunks
    kw = dict(lr=1e4, steps=60, record_every=7, throw=False)
    one = lwr.train(jax.random.key(2), p, data, cfg, progress_bar=False, **kw)
    chunked = lwr.train(jax.random.key(2), p, data, cfg, progress_bar=True, **kw)
    assert int(chunked.first_bad_step) == int(one.first_bad_step) == bad and bool(chunked.diverged)
    np.testing.assert_array_equal(np.isnan(np.asarray(chunked.losses)), np.isnan(np.asarray(one.losses)))
    np.testing.assert_allclose(np.asarray(chunked.params.W), np.asarray(one.params.W), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(optimizer="lbfgs", lr=1.0, steps=2), ValueError, "optimizer must be one of"),
        (dict(lr=-1.0, steps=2), ValueError, "lr must lie in"),
        (dict(lr=float("nan"), steps=2), ValueError, "lr must be finite"),
        (dict(steps=2), TypeError, "lr is required"),
        (dict(lr=1.0, steps=0), ValueError, "steps must be >= 1"),
        (dict(optimizer="sgd", lr=1.0, steps=2), ValueError, "needs a batch_size"),
        (dict(lr=1.0, steps=2, batch_size=4), ValueError, "full-batch"),
        (dict(optimizer="sgd", lr=1.0, steps=2, batch_size=1000), ValueError, "batch_size must be <="),
        (dict(lr=1.0, steps=2, record_every=5), ValueError, "record_every must be <="),
    ],
)
def test_train_bad_input(small, kwargs, exc, match):
    data, p = small
    with pytest.raises(exc, match=match):
        lwr.train(jax.random.key(0), p, data, CFG64, **kwargs)


def test_train_mismatched_shapes(small):
    data, p = small
    other = lwr.LWRConfig(n=40, d=16, h=30, dtype="float64")
    with pytest.raises(ValueError, match=r"params.W must have shape \(h, d\) = \(30, 16\)"):
        lwr.train(jax.random.key(0), p, data, other, lr=1.0, steps=1)
    with pytest.raises(ValueError, match="n = 41 rows"):
        lwr.train(jax.random.key(0), p, data, lwr.LWRConfig(n=41, d=16, h=24, dtype="float64"), lr=1.0, steps=1)


def test_spike_theta_validates(small):
    data, p = small
    with pytest.raises(ValueError, match="n = 41 rows"):
        lwr.spike_theta(p, data, lwr.LWRConfig(n=41, d=16, h=24, dtype="float64"), lr=10.0)
    with pytest.raises(ValueError, match="lr must"):
        lwr.spike_theta(p, data, CFG64, lr=0.0)
    with pytest.raises(TypeError, match="LWRData"):
        lwr.spike_theta(p, (data.X, data.y), CFG64, lr=10.0)


def test_several_planted_directions_recorded():
    cfg = lwr.LWRConfig(n=24, d=8, h=12, teacher=("softplus", "tanh"), dtype="float64")
    data = lwr.sample_data(jax.random.key(0), cfg)
    p = lwr.init_params(jax.random.key(1), cfg)
    res = lwr.train(jax.random.key(2), p, data, cfg, lr=2.0, steps=2, n_top=2)
    assert res.history.align.shape == (2, 2, 2)
    W = np.asarray(res.params.W)
    vecs = np.linalg.eigh(W.T @ W)[1][:, ::-1][:, :2]
    np.testing.assert_allclose(
        np.asarray(res.history.align[-1]), np.abs(vecs.T @ np.asarray(data.beta).T), rtol=1e-8, atol=1e-12
    )


# ---------------------------------------------------------------------------------------------------- issue 15 / 13
def test_finite_but_exploding_run_is_flagged_diverged():
    cfg = lwr.LWRConfig(n=64, d=32, h=48)  # tanh: the loss stays finite however large W grows
    data, p = lwr.sample_data(jax.random.key(0), cfg), lwr.init_params(jax.random.key(1), cfg)
    ok = lwr.train(jax.random.key(2), p, data, cfg, lr=0.2 * 64, steps=30, spectra=False)
    assert int(ok.result) == 0 and not bool(ok.diverged)
    lr = 1e4 * float(ok.lr_bound)
    with pytest.raises(FloatingPointError, match=r"norm grew past max_growth=100.*\[result=diverged\]"):
        lwr.train(jax.random.key(2), p, data, cfg, lr=lr, steps=30, spectra=False)
    res = lwr.train(jax.random.key(2), p, data, cfg, lr=lr, steps=30, spectra=False, throw=False)
    assert int(res.result) == 3 and bool(res.diverged) and int(res.first_bad_step) >= 1
    # frozen at the last update inside the bound: ||W|| <= 100 ||W0|| (numpy norms of the returned arrays)
    assert np.linalg.norm(np.asarray(res.params.W)) <= 100 * np.linalg.norm(np.asarray(p.W))
    # without the growth rule the same run stays finite (the silent case the rule exists for)
    loose = lwr.train(jax.random.key(2), p, data, cfg, lr=lr, steps=30, spectra=False, throw=False, max_growth=1e30)
    assert int(loose.result) == 0 and np.all(np.isfinite(np.asarray(loose.losses)))
    assert np.linalg.norm(np.asarray(loose.params.W)) > 100 * np.linalg.norm(np.asarray(p.W))
    with pytest.raises(ValueError, match="max_growth"):
        lwr.train(jax.random.key(2), p, data, cfg, lr=1.0, steps=2, max_growth=0.5)


def test_huge_learning_rate_raises_floating_point_error_not_lapack():
    cfg = lwr.LWRConfig(n=32, d=16, h=24)
    data, p = lwr.sample_data(jax.random.key(0), cfg), lwr.init_params(jax.random.key(1), cfg)
    with pytest.raises(FloatingPointError, match="training diverged"):
        lwr.train(jax.random.key(2), p, data, cfg, lr=1e30, steps=3, record_every=1, eig_backend="lapack")
    res = lwr.train(
        jax.random.key(2), p, data, cfg, lr=1e30, steps=3, record_every=1, eig_backend="lapack", throw=False
    )
    assert int(res.result) in (3, 4) and int(res.first_bad_step) == 1
    assert np.all(np.isfinite(np.asarray(res.history.eig_weights)))  # recorded from the frozen parameters


def test_result_survives_chunks_resume_and_concat():
    cfg = lwr.LWRConfig(n=32, d=16, h=24)
    data, p = lwr.sample_data(jax.random.key(0), cfg), lwr.init_params(jax.random.key(1), cfg)
    kw = dict(lr=1e6, steps=12, record_every=4, spectra=False, throw=False)
    one = lwr.train(jax.random.key(2), p, data, cfg, progress_bar=False, **kw)
    chunked = lwr.train(jax.random.key(2), p, data, cfg, progress_bar=True, **kw)
    assert int(one.result) == int(chunked.result) == 3
    a = lwr.train(jax.random.key(2), p, data, cfg, lr=1.0, steps=3, spectra=False)
    b = lwr.train(jax.random.key(2), p, data, cfg, lr=1.0, steps=3, spectra=False, resume=a)
    assert int(lwr.concat_results(a, b).result) == 0
    vm = jax.vmap(
        lambda lr: lwr.train(jax.random.key(2), p, data, cfg, lr=lr, steps=5, spectra=False, throw=False).result
    )(jnp.array([1.0, 1e6]))
    assert vm.tolist() == [0, 3]


def test_too_large_for_memory_is_refused_before_any_work(small, monkeypatch, tmp_path, capsys):
    """n = 200 000 aborted inside XLA ("Out of memory allocating 160000000000 bytes") after the CLI had made --out.
    Now the n × n kernels are estimated first (about 9 float64/float32 n² matrices: measured 35–37 bytes per n² in
    float32) and the error gives the largest n that fits, which must then be accepted."""
    import re

    from jaxcompare.cli import main

    data, p = small
    monkeypatch.setenv("JAXCOMPARE_MEMORY_BUDGET", "100K")
    with pytest.raises(ValueError, match=r"n = 40 needs an estimated .*n × n kernels.*JAXCOMPARE_MEMORY_BUDGET") as e:
        lwr.train(jax.random.key(0), p, data, CFG64, lr=1.0, steps=1)
    n_max = int(re.search(r"n ≤ (\d+) fits", str(e.value)).group(1))
    assert 0 < n_max < 40
    cfg_fit = lwr.LWRConfig(n=n_max, d=16, h=24, dtype="float64")
    d2 = lwr.sample_data(jax.random.key(0), cfg_fit)
    lwr.train(jax.random.key(0), lwr.init_params(jax.random.key(1), cfg_fit), d2, cfg_fit, lr=1.0, steps=1)
    with pytest.raises(ValueError, match=r"n = \d+ needs"):
        cfg_over = lwr.LWRConfig(n=n_max + 1, d=16, h=24, dtype="float64")
        lwr.train(jax.random.key(0), lwr.init_params(jax.random.key(1), cfg_over),
                  lwr.sample_data(jax.random.key(0), cfg_over), cfg_over, lr=1.0, steps=1)  # fmt: skip
    monkeypatch.setenv("JAXCOMPARE_MEMORY_BUDGET", "1K")
    with pytest.raises(ValueError, match="the data of n = 40"):
        lwr.sample_data(jax.random.key(0), CFG64)
    monkeypatch.delenv("JAXCOMPARE_MEMORY_BUDGET")
    out = tmp_path / "out"
    assert main(["lwr", "--n", "200000", "--out", str(out)]) == 2  # against the memory available now
    err = capsys.readouterr().err
    assert "--n 200000: n = 200000 needs an estimated" in err and "fits" in err and not out.exists()
