"""jc.sharded on 8 simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8, in a subprocess:
this test process has already initialised JAX with one device). Oracles: the float64 forward-mode Jacobian kernels
of ntk_models and the unsharded kernels; the result must be row-sharded over the 8 devices, and with x2=None each pair
of row blocks must be computed once (the symmetric saving, seen in XLA's flop count of the compiled program)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

import jaxcompare as jc

_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import jaxcompare as jc
    from jax.sharding import Mesh
    from ntk_models import mlp, oracle_kernels

    assert len(jax.devices()) == 8, jax.devices()
    f, p = mlp(jax.random.key(0))
    x1 = jax.random.normal(jax.random.key(1), (16, 5))
    x2 = jax.random.normal(jax.random.key(2), (5, 5))
    x_odd = x1[:13]
    x32 = jax.random.normal(jax.random.key(3), (32, 5))
    tol = dict(rtol=1e-10, atol=1e-10)
    # one oracle program for every input set below (compiling it dominates): the kernels of the rows of `big`, of
    # which each set is a contiguous slice; each entry of the oracle's kernels depends only on its two rows
    big = jnp.concatenate([x1, x1 + 0.5, x32, x2])
    ob = oracle_kernels(f, p, big, big)

    def oracle(r1, r2):  # the oracle kernels of big[r1] x big[r2] (r1, r2: slices)
        return {k: v[r1, r2] for k, v in ob.items()}

    X1, X32, X2 = slice(0, 16), slice(32, 64), slice(64, 69)
    o12, o11 = oracle(X1, X2), oracle(X1, X1)
    def check_padded(kp):
        assert kp.shape == (16, 13) and len(kp.sharding.device_set) == 8 and kp.sharding.spec[0] is not None
        np.testing.assert_allclose(kp[:13], o11["trntk"][:13, :13], **tol)
        assert np.all(np.asarray(kp[13:]) == 0)  # padding rows masked

    # pad=True (handled outside the per-device program, whatever its tiles) with (structured, no block size),
    # (jacobian, 3) and below (auto, no block size); pseudo_ntk's norms with and without a block size
    for impl, bs in (("structured", None), ("structured", 3), ("jacobian", 3)):
        t = jc.sharded(jc.trace_ntk(f, implementation=impl), block_size=bs)
        k = t(p, x1)
        assert len(k.sharding.device_set) == 8 and k.sharding.spec[0] is not None, k.sharding
        np.testing.assert_allclose(k, o11["trntk"], **tol)
        np.testing.assert_allclose(t(p, x1, x2), o12["trntk"], **tol)
        if (impl, bs) != ("structured", 3):
            check_padded(jc.sharded(jc.trace_ntk(f, implementation=impl), block_size=bs, pad=True)(p, x_odd))
        try:
            t(p, x_odd)
            raise AssertionError("13 rows over 8 devices without pad=True must raise")
        except ValueError as e:
            assert "pad=True" in str(e) and "13 rows" in str(e), e
        e = jc.sharded(jc.empirical_ntk(f, implementation=impl), block_size=bs)(p, x1, x2)
        np.testing.assert_allclose(e, o12["full"], **tol)
        if (impl, bs) != ("structured", 3):
            pn = jc.sharded(jc.pseudo_ntk(f, normalize=True, implementation=impl), block_size=bs)(p, x1, x2)
            np.testing.assert_allclose(pn, o12["pntk_norm"], **tol)
    # the symmetric scheme on 1..8 devices, class axes, no block size: odd device counts (no half blocks; 1, 2 shifts)
    # and even ones (half blocks exchanged; 0, 2, 3 shifts), each with odd and even rows per device (b = 3, 2; the
    # half blocks of an odd b overlap by a row). 8 devices with 2 rows each: the checks of x1 above
    for nd, b in ((1, 3), (2, 3), (3, 2), (5, 3), (6, 2), (8, 3)):
        sub = Mesh(np.array(jax.devices()[:nd]), ("r",))
        xs, oo = big[: nd * b], oracle(slice(0, nd * b), slice(0, nd * b))
        np.testing.assert_allclose(jc.sharded(jc.trace_ntk(f), sub, block_size=2)(p, xs), oo["trntk"], **tol)
        if nd in (2, 5, 6, 8):  # the class axes transposed: by the shifts (odd and even D) and the halves (even D)
            np.testing.assert_allclose(jc.sharded(jc.empirical_ntk(f), sub)(p, xs), oo["full"], **tol)
    # the output of the symmetric scheme is row-sharded and gathers/saves to the oracle
    k = jc.sharded(jc.trace_ntk(f), block_size=4)(p, x1)
    np.testing.assert_allclose(jc.gather(k), o11["trntk"], **tol)
    import tempfile
    np.testing.assert_allclose(jc.save_rows(k, os.path.join(tempfile.mkdtemp(), "K.npy")), o11["trntk"], **tol)
    kp = jc.sharded(jc.trace_ntk(f), pad=True)(p, x_odd)
    check_padded(kp)
    np.testing.assert_allclose(jc.save_rows(kp, os.path.join(tempfile.mkdtemp(), "K.npy"), rows=13),
                               o11["trntk"][:13, :13], **tol)
    # a 2-D mesh: rows split over both axes
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
    k = jc.sharded(jc.trace_ntk(f, normalize=False), mesh)(p, x1, x2)
    np.testing.assert_allclose(k, o12["trntk0"], **tol)
    # a user's kernel without a spec, and the sharded function under jit
    rbf = lambda q, a, b=None: jnp.exp(-q * jnp.sum((a[:, None] - (a if b is None else b)[None]) ** 2, -1))
    np.testing.assert_allclose(jc.sharded(rbf)(0.5, x1, x2), rbf(0.5, x1, x2), **tol)
    # composition: batched(sharded(k)) and kernel_to_disk(sharded(k)) compute every tile sharded. Observed through
    # the row counts the model is traced with: 16-row tiles over 8 devices -> 2 rows per device (unsharded: 16)
    def spy():  # a fresh model function (fresh traces) that records the row counts it is traced with
        seen = []

        def g(q, xx):
            seen.append(xx.shape[0])
            return f(q, xx)

        return jc.sharded(jc.trace_ntk(g, implementation="jacobian")), seen

    o32 = oracle(X32, X32)
    k, seen = spy()
    assert k.spec.transforms == ("sharded",)
    np.testing.assert_allclose(jc.batched(k, 16)(p, x32), o32["trntk"], **tol)
    assert 2 in seen and 16 not in seen, seen
    k, seen = spy()
    d = jc.kernel_to_disk(k, p, x32, path=tempfile.mkdtemp(), block_size=16, progress_bar=False)
    np.testing.assert_allclose(d, o32["trntk"], **tol)
    assert 2 in seen and 16 not in seen, seen
    # the symmetric saving, in XLA's count of the compiled program's flops: x2=None computes each pair of row blocks
    # once (36 of 64 blocks on 8 devices, 0.56; plus per-point work), x2=x computes all 64
    ks = jc.sharded(jc.trace_ntk(f, normalize=False))
    def flops(fn):
        c = jax.jit(fn).lower(p, x32).compile().cost_analysis()
        return (c[0] if isinstance(c, list) else c)["flops"]
    ratio = flops(lambda q, a: ks(q, a)) / flops(lambda q, a: ks(q, a, a))
    assert 0.5 < ratio < 0.7, ratio
    print("SHARDED-OK")
    """
)


@pytest.mark.slow
def test_sharded_on_eight_cpu_devices(tmp_path):
    script = tmp_path / "sharded_check.py"
    script.write_text(_SCRIPT)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        JAXCOMPARE_PROGRESS="0",
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "SHARDED-OK" in r.stdout, r.stdout[-3000:] + r.stderr[-5000:]


def test_sharded_single_device_and_validation():
    """In this process (one device) sharded is the identity transform; bad arguments raise clear errors."""
    import numpy as np
    from ntk_models import mlp

    f, p = mlp(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, 5))
    k = jc.trace_ntk(f)
    np.testing.assert_allclose(jc.sharded(k, block_size=4)(p, x), k(p, x), rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="Mesh"):
        jc.sharded(k, mesh="devices")
    with pytest.raises(TypeError, match="callable"):
        jc.sharded(3)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        jc.sharded(k, block_size=0)
    with pytest.raises(ValueError, match="same per-example shape"):
        jc.sharded(k)(p, x, jax.numpy.ones((2, 3)))
