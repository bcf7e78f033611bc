"""Small versions of the architectures of issue 14 against the independent float64 forward-mode Jacobian oracle, through
``implementation="structured"`` and ``"auto"``: a ResNet with BatchNorm in eval mode, a pre-LN GPT (tied embedding,
causal mask, scan over layers), a ViT (class token), depthwise/grouped/dilated/transposed convolutions, an LSTM scan
(flax's ``nn.RNN``; a GRU cell in the same scan takes the same path, every scanned leaf by the per-example fallback
and the dense head structured, so it is not run again). Kernel forms full, trace and pseudo and the trace diagonal on
the eager structured path (the blocked engine), the trace inside jit (the traced path) and in ``batched`` with a
partial last block. Sizes are tiny (N ≤ 5, a few hundred parameters): the cost is compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import conv_zoo, oracle_jacobian, tiny_gpt, tiny_resnet, tiny_rnn, tiny_vit

import jaxcompare as jc
from jaxcompare.ntk import _structured as S

TOL64 = dict(rtol=1e-10, atol=1e-10)


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


def _tokens(seed, n, seq=4, vocab=7):
    return jax.random.randint(jax.random.key(seed), (n, seq), 0, vocab)


ARCHS = {  # name: (model, x1, x2, number of outputs)
    "resnet_bn_eval": lambda: (*tiny_resnet(jax.random.key(0)), _normal(1, (5, 6, 6, 2)), _normal(2, (3, 6, 6, 2)), 3),
    "gpt_tied_causal_scan": lambda: (*tiny_gpt(jax.random.key(0)), _tokens(1, 5), _tokens(2, 3), 7),
    "vit": lambda: (*tiny_vit(jax.random.key(0)), _normal(1, (5, 4, 4, 2)), _normal(2, (3, 4, 4, 2)), 3),
    "convs": lambda: (*conv_zoo(jax.random.key(0)), _normal(1, (4, 6, 6, 4)), _normal(2, (3, 6, 6, 4)), 3),
    "lstm": lambda: (*tiny_rnn(jax.random.key(0), "lstm"), _normal(1, (5, 4, 2)), _normal(2, (3, 4, 2)), 3),
}


# the GPT has no structured leaf yet (scan over layers, tied embedding: every leaf by the per-example fallback) and
# the costliest compilations (≈ 20 s of CPU): its tests are marked slow and its "full" kernel (the same fallback as
# its trace) is left out
_GPT = "gpt_tied_causal_scan"


@pytest.fixture(
    scope="module", params=[pytest.param(a, marks=pytest.mark.slow) if a == _GPT else a for a in sorted(ARCHS)]
)
def case(request):
    f, p, x1, x2, c = ARCHS[request.param]()
    n1 = x1.shape[0]
    j = oracle_jacobian(f, p, jnp.concatenate([x1, x2]))  # (N1 + N2, C, P) float64, one compilation
    j1, j2 = j[:n1], j[n1:]
    o = dict(
        full=np.einsum("icp,jdp->ijcd", j1, j2),
        trace=np.einsum("icp,jcp->ij", j1, j2),
        trace11=np.einsum("icp,jcp->ij", j1, j1),
        pseudo=j1.sum(1) @ j2.sum(1).T / c,
        trace_diag=np.einsum("icp,icp->i", j1, j1),
    )
    return request.param, f, p, x1, x2, c, j1, o


def test_models_are_what_they_claim(case):
    """Several outputs, every parameter leaf reaching them (no dead leaf that would make a kernel trivially right),
    and the structured analysis runs."""
    _, f, p, x1, _, c, j1, _ = case
    assert j1.shape[:2] == (x1.shape[0], c)
    sizes = np.cumsum([0] + [leaf.size for leaf in jax.tree_util.tree_leaves(p)])
    assert all(np.abs(j1[:, :, a:b]).max() > 1e-8 for a, b in zip(sizes[:-1], sizes[1:]))
    plan = S.analyze(f, p, tuple(x1.shape[1:]), x1.dtype)
    assert len(plan.uses) + len(plan.fallback) >= 1


def test_structured_kernels_and_diagonal_match_oracle(case):
    """Eager calls on the structured path (the blocked engine): full, trace, pseudo and the trace diagonal."""
    name, f, p, x1, x2, _, _, o = case
    kw = dict(implementation="structured")
    if name != _GPT:
        np.testing.assert_allclose(jc.empirical_ntk(f, **kw)(p, x1, x2), o["full"], **TOL64)
    tr = jc.trace_ntk(f, normalize=False, **kw)
    np.testing.assert_allclose(tr(p, x1, x2), o["trace"], **TOL64)
    np.testing.assert_allclose(tr.spec.diag(p, x1), o["trace_diag"], **TOL64)
    np.testing.assert_allclose(jc.pseudo_ntk(f, **kw)(p, x1, x2), o["pseudo"], **TOL64)


# the traced path and batched are the same code for every architecture (tested on many models elsewhere): run them on
# the two whose structured layers differ most (convolutions + BatchNorm, attention + LayerNorm), to spare compile time
_TRACED = ("resnet_bn_eval", "vit")


def test_auto_jit_and_batched_match_oracle(case):
    """``implementation="auto"`` (whatever it picks), the traced structured path inside jit, and ``batched`` on the
    structured path with a partial last block (blocks of 2 over 4-5 points)."""
    name, f, p, x1, x2, _, _, o = case
    if name not in _TRACED:
        pytest.skip(f"traced path and batched: checked on {', '.join(_TRACED)}")
    np.testing.assert_allclose(jc.trace_ntk(f, normalize=False)(p, x1, x2), o["trace"], **TOL64)
    tr = jc.trace_ntk(f, normalize=False, implementation="structured")
    np.testing.assert_allclose(jax.jit(tr)(p, x1, x2), o["trace"], **TOL64)
    np.testing.assert_allclose(jc.batched(tr, 2, progress_bar=False)(p, x1), o["trace11"], **TOL64)
