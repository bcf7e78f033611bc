"""``conv_native``: the structured pass's convolution whose input cotangent keeps the filter in the forward layout
(XLA:CPU runs the transposed convolution of JAX's own rule 6-9x slower inside loops). Oracle: JAX's own derivatives
of ``lax.conv_general_dilated`` in float64, for the dimension numbers, strides, dilations and groups of real models,
outside and inside ``lax.map``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompare.ntk._structured._patches import conv_native

jax.config.update("jax_enable_x64", True)

CASES = [
    # (lhs shape, rhs shape, dimension numbers, strides, padding, lhs dilation, rhs dilation, groups)
    ((2, 9, 9, 4), (3, 3, 4, 6), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", (1, 1), (1, 1), 1),
    ((2, 9, 9, 4), (3, 3, 4, 6), ("NHWC", "HWIO", "NHWC"), (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 1),
    ((2, 4, 8, 7), (6, 4, 3, 3), ("NCHW", "OIHW", "NCHW"), (1, 2), "VALID", (1, 1), (1, 1), 1),
    ((2, 10, 10, 4), (3, 3, 2, 6), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", (1, 1), (1, 1), 2),
    ((2, 10, 10, 4), (3, 3, 1, 4), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", (1, 1), (2, 2), 4),
    ((2, 5, 5, 3), (3, 3, 3, 5), ("NHWC", "HWIO", "NHWC"), (1, 1), ((2, 2), (2, 2)), (2, 2), (1, 1), 1),
    ((3, 11, 4), (3, 4, 5), ("NWC", "WIO", "NWC"), (2,), "SAME", (1,), (1,), 1),
]


def _params(case):
    """The primitive's parameters as the structured pass sees them: read from the traced program."""
    ls, rs, dn, strides, padding, lhs_dil, rhs_dil, groups = case
    jaxpr = jax.make_jaxpr(
        lambda a, b: jax.lax.conv_general_dilated(
            a, b, strides, padding, lhs_dil, rhs_dil, dn, feature_group_count=groups
        )
    )(jnp.zeros(ls), jnp.zeros(rs))
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    return dict(eqn.params)


def _reference(lhs, rhs, p):
    return jax.lax.conv_general_dilated(
        lhs,
        rhs,
        p["window_strides"],
        p["padding"],
        p["lhs_dilation"],
        p["rhs_dilation"],
        p["dimension_numbers"],
        feature_group_count=p["feature_group_count"],
    )


@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_value_and_both_cotangents_match_the_primitive(case):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    lhs = jax.random.normal(k1, case[0], jnp.float64)
    rhs = jax.random.normal(k2, case[1], jnp.float64)
    p = _params(case)
    out, vjp = jax.vjp(lambda a, b: conv_native(a, b, p), lhs, rhs)
    ref, vjp_ref = jax.vjp(lambda a, b: _reference(a, b, p), lhs, rhs)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    ct = jax.random.normal(k3, ref.shape, jnp.float64)
    for got, want in zip(vjp(ct), vjp_ref(ct)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_cotangents_inside_a_loop_and_per_class_vmap_match_the_primitive():
    """The structured pass's pattern: ``lax.map`` over examples, ``vmap`` of the pullback over classes."""
    case = CASES[1]
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(k1, (5,) + case[0][1:], jnp.float64)
    rhs = jax.random.normal(k2, case[1], jnp.float64)
    cts = jax.random.normal(k3, (3,), jnp.float64)
    p = _params(case)

    def per_example(conv):
        def one(xi):
            out, vjp = jax.vjp(lambda a: jnp.tanh(conv(a[None], rhs, p)), xi)
            return jax.vmap(lambda c: vjp(c * jnp.ones_like(out))[0])(cts)

        return jax.jit(lambda xs: jax.lax.map(one, xs, batch_size=2))(x)

    np.testing.assert_allclose(per_example(conv_native), per_example(_reference), rtol=1e-11, atol=1e-11)


def test_batch_grouped_convolutions_are_left_to_the_primitive():
    lhs = jax.random.normal(jax.random.key(2), (4, 6, 6, 3), jnp.float64)
    rhs = jax.random.normal(jax.random.key(3), (3, 3, 3, 4), jnp.float64)
    p = dict(_params(CASES[0]), batch_group_count=2)
    ref = jax.lax.conv_general_dilated(
        lhs, rhs, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), batch_group_count=2
    )
    np.testing.assert_allclose(conv_native(lhs, rhs, p), ref, rtol=1e-12, atol=1e-12)
