"""MNIST-1D: generated offline by the mnist1d package (the package itself is the oracle), no network, global random
state left alone; the three architectures against NumPy forward passes written here (conv, GRU recurrence)."""

from __future__ import annotations

import random

import jax
import numpy as np
import pytest

from jaxcompare.data import ARCHITECTURES, PAPER_ACCURACY, make_mnist1d_model, mnist1d_task

mnist1d_data = pytest.importorskip("mnist1d.data")


@pytest.fixture(scope="module")
def small():
    return mnist1d_task(seed=3, num_samples=200)


def test_task_equals_the_package_generator(small):
    args = mnist1d_data.get_dataset_args()
    args.seed, args.num_samples = 3, 200
    want = mnist1d_data.make_dataset(args)
    np.testing.assert_array_equal(small.x_train, want["x"].astype(np.float32))
    np.testing.assert_array_equal(small.x_test, want["x_test"].astype(np.float32))
    np.testing.assert_array_equal(small.y_train, want["y"])
    np.testing.assert_array_equal(small.y_test, want["y_test"])
    assert small.x_train.shape == (160, 40) and small.x_test.shape == (40, 40)
    assert small.y_train.dtype == np.int32 and np.bincount(np.r_[small.y_train, small.y_test]).tolist() == [20] * 10


def test_task_leaves_global_random_state_and_needs_no_network(monkeypatch):
    import requests

    def refuse(*a, **k):
        raise AssertionError("mnist1d_task must not touch the network")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    np.random.seed(123)  # noqa: NPY002 - the legacy global state is what must be left alone
    random.seed(7)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    a = mnist1d_task(seed=5, num_samples=100)
    after_np = np.random.get_state()[1]  # noqa: NPY002
    assert np.array_equal(after_np, before_np) and random.getstate() == before_py
    b = mnist1d_task(seed=5, num_samples=100)
    c = mnist1d_task(seed=6, num_samples=100)
    np.testing.assert_array_equal(a.x_train, b.x_train)  # same seed, same data
    assert not np.array_equal(a.x_train, c.x_train)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(num_samples=105), "multiple of 10"),
        (dict(num_samples=10), "num_samples"),
        (dict(train_split=1.0), "train_split"),
        (dict(train_split=0.01, num_samples=20), "empty train or test"),
        (dict(seed=-1), "seed"),
    ],
)
def test_task_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        mnist1d_task(**kw)


def test_paper_accuracy_table():
    # the mnist1d README's table (4000 train / 1000 test): logistic regression 32%, MLP 68%, CNN 94%, GRU 91%
    assert PAPER_ACCURACY == {"logistic regression": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91}


# ----------------------------------------------------------------------------------------------------------------
# the architectures against NumPy forward passes
# ----------------------------------------------------------------------------------------------------------------
def _np(p):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)


def _mlp_ref(p, x):
    h = x
    for name in ("Dense_0", "Dense_1"):
        h = np.maximum(h @ p[name]["kernel"] + p[name]["bias"], 0)
    return h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]


def _conv1d(h, kernel, bias, stride=2, pad=1):
    """Cross-correlation of (n, L, Cin) with (k, Cin, Cout), zero padding ``pad`` each side, VALID after padding."""
    k = kernel.shape[0]
    hp = np.pad(h, ((0, 0), (pad, pad), (0, 0)))
    n_out = (hp.shape[1] - k) // stride + 1
    out = np.stack([np.einsum("nkc,kcd->nd", hp[:, i * stride : i * stride + k], kernel) for i in range(n_out)], 1)
    return out + bias


def _cnn_ref(p, x):
    h = x[..., None]
    for name in ("Conv_0", "Conv_1", "Conv_2"):
        h = np.maximum(_conv1d(h, p[name]["kernel"], p[name]["bias"]), 0)
    return h.reshape(h.shape[0], -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]


def _gru_ref(p, x):
    c = p["RNN_0"]["GRUCell_0"] if "RNN_0" in p else p["GRUCell_0"]

    def lin(name, v, bias=True):
        out = v @ c[name]["kernel"]
        return out + c[name]["bias"] if bias and "bias" in c[name] else out

    def sig(v):
        return 1 / (1 + np.exp(-v))

    h = np.zeros((x.shape[0], c["hr"]["kernel"].shape[0]))
    for t in range(x.shape[1]):
        xt = x[:, t : t + 1]
        r = sig(lin("ir", xt) + lin("hr", h))
        z = sig(lin("iz", xt) + lin("hz", h))
        nn_ = np.tanh(lin("in", xt) + r * lin("hn", h))
        h = (1 - z) * nn_ + z * h
    return h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]


REFS = {"mlp": _mlp_ref, "cnn": _cnn_ref, "gru": _gru_ref}
N_PARAMS = {  # closed forms at L = 40, 10 classes, default widths
    "mlp": (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10),
    "cnn": (5 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + (5 * 25 * 10 + 10),
    "gru": 3 * (32 + 32) + 3 * 32 * 32 + 32 + (32 * 10 + 10),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_against_numpy_forward(arch, small):
    module = make_mnist1d_model(arch)
    x = small.x_test[:7]
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]
    assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == N_PARAMS[arch]
    got = np.asarray(jax.jit(module.apply)({"params": params}, x), np.float64)
    want = REFS[arch](_np(params), x.astype(np.float64))
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_architecture_width_and_classes():
    m = make_mnist1d_model("cnn", 3, width=4)
    p = jax.eval_shape(m.init, jax.random.key(0), np.zeros((2, 40), np.float32))["params"]
    assert p["Conv_0"]["kernel"].shape == (5, 1, 4) and p["Dense_0"]["kernel"].shape == (20, 3)


@pytest.mark.parametrize(
    "args,kw,match",
    [
        (("transformer",), {}, "arch"),
        (("mlp", 1), {}, "n_classes"),
        (("gru",), dict(width=0), "width"),
    ],
)
def test_architecture_bad_input(args, kw, match):
    with pytest.raises(ValueError, match=match):
        make_mnist1d_model(*args, **kw)
