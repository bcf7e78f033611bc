"""Bad inputs to jaxcompare.data's models and training: clear errors (what was wrong, what was expected) before any
training, instead of silent meaningless parameters, wrong-shaped logits or errors from deep inside flax/jax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompare.data import ARCHITECTURES, Recipe, make_mlp, make_mnist1d_model, mlp_feature_fns, train_ensemble

pytest.importorskip("flax.linen")

KEY = jax.random.key(0)
X = np.asarray(jax.random.normal(jax.random.key(1), (32, 4)), np.float32)
Y = (X[:, 0] > 0).astype(np.int32)
RECIPE = [Recipe("a", steps=2, batch_size=8)]


def test_train_ensemble_refuses_module_with_fewer_outputs_than_classes():
    # optax's cross-entropy is NaN for labels >= 2 on 2 logits while its gradient is finite: it trained silently
    with pytest.raises(ValueError, match=r"module gives 2 outputs .* n_classes=10: expected logits of shape \(1, 10\)"):
        train_ensemble(KEY, make_mlp(2, width=4, depth=1), X, np.arange(32) % 10, 10, RECIPE)
    with pytest.raises(ValueError, match=r"n_classes=2: expected logits of shape \(1, 2\)"):
        train_ensemble(KEY, make_mlp(3, width=4, depth=1), X, Y, 2, RECIPE)


def test_train_ensemble_refuses_x_without_a_points_axis():
    with pytest.raises(ValueError, match=r"x must have shape \(n, features\.\.\.\).*got shape \(32,\)"):
        train_ensemble(KEY, make_mlp(2, width=4, depth=1), X[:, 0], Y, 2, RECIPE)


@pytest.mark.parametrize("module", ["mlp", None, make_mlp], ids=["str", "None", "factory"])
def test_train_ensemble_refuses_what_is_not_a_flax_module(module):
    with pytest.raises(TypeError, match=r"module must be a flax\.linen Module instance .*make_mlp\(n_classes\)"):
        train_ensemble(KEY, module, X, Y, 2, RECIPE)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mnist1d_models_refuse_input_that_is_not_n_by_L(arch):
    m = make_mnist1d_model(arch, width=4)
    # the GRU and the MLP returned (3, 2, 10) and (3, 40, 10) logits here; the CNN failed inside jax
    with pytest.raises(
        ValueError, match=rf"make_mnist1d_model\('{arch}'\) takes signals of shape \(n, L\).*\(3, 40, 2\)"
    ):
        jax.eval_shape(m.init, KEY, jnp.zeros((3, 40, 2)))


def test_mnist1d_cnn_names_its_minimum_length():
    m = make_mnist1d_model("cnn", width=4)
    with pytest.raises(ValueError, match=r"L >= 3 .*got input of shape \(3, 2\)"):  # was ZeroDivisionError in jax
        jax.eval_shape(m.init, KEY, jnp.zeros((3, 2)))
    out = jax.eval_shape(lambda k, x: m.init_with_output(k, x)[0], KEY, jnp.zeros((3, 3)))
    assert out.shape == (3, 10)


def test_train_ensemble_takes_a_shortest_cnn_signal():
    x = np.asarray(jax.random.normal(jax.random.key(2), (8, 3)), np.float32)
    p = train_ensemble(
        KEY, make_mnist1d_model("cnn", 3, width=2), x, np.arange(8) % 3, 3, [Recipe("c", steps=1, batch_size=4)]
    )
    assert p["Dense_0"]["kernel"].shape == (1, 2, 3)
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(p))


def test_mlp_feature_fns_refuses_modules_not_from_make_mlp():
    with pytest.raises(TypeError, match=r"mlp_feature_fns takes the MLP returned by make_mlp.*got the flax module CNN"):
        mlp_feature_fns(make_mnist1d_model("cnn"))  # was KeyError: 'intermediates' at the first feature_fn call
    with pytest.raises(TypeError, match=r"make_mlp.*got None"):
        mlp_feature_fns(None)
    assert len(mlp_feature_fns(make_mlp(2, width=4))) == 3


@pytest.mark.parametrize("to_array", [list, np.asarray, jnp.asarray], ids=["list", "numpy", "jax"])
def test_non_integer_labels_are_named_as_not_whole_numbers(to_array):
    # was "y must lie in [0, 2); found values from 0.5 to 1.5" for a list or NumPy array (values that are in range)
    with pytest.raises(ValueError, match=r"y must hold integer class labels; .*e\.g\. 0\.5, not a whole number"):
        train_ensemble(KEY, make_mlp(2, width=4), X[:2], to_array([0.5, 1.5]), 2, [Recipe("a", steps=1, batch_size=1)])
