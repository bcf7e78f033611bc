"""Build notebooks/kernels_surrogates.ipynb (``--execute`` runs it in place; ``--figure PATH`` also writes the
attribution figure of the executed notebook as a PNG, e.g. for the README)."""
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# Kernels and kernel surrogates of a small digits MLP\n\n"
        "We train a 64-32-10 MLP on scikit-learn's 8×8 digits, compute its trace NTK, fit a kernel GLM surrogate "
        "`logits(x) = W κ(x, X_train) + b` on the training kernel, measure how faithful it is to the network "
        "(TAD, Kendall τ_K, R_Miss) and explain test predictions by the training points that drive them. "
        "Finally every kernel of the network (trNTK, trNTK⁰, pNTK, CK, Em) is compared side by side.\n\n"
        "Everything runs on CPU in well under a minute."
    ),
    new_code_cell(
        "import time\n"
        "import jax, jax.numpy as jnp, numpy as np, optax\n"
        "import matplotlib.pyplot as plt\n"
        "from sklearn.datasets import load_digits\n"
        "import jaxcompare as jc\n\n"
        "X, y = load_digits(return_X_y=True)\n"
        "X = (X / 16.0).astype(np.float32)\n"
        "perm = np.random.default_rng(0).permutation(len(X))\n"
        "X, y = X[perm], y[perm]\n"
        "x_train, y_train, x_test, y_test = X[:800], y[:800], X[800:1200], y[800:1200]\n"
        "x_train.shape, x_test.shape"
    ),
    new_markdown_cell("## A small network, trained full-batch with Adam"),
    new_code_cell(
        "def feature_fn(p, x):                      # penultimate features (for the conjugate kernel)\n"
        "    return jnp.tanh(x @ p['W1'] + p['b1'][None, :])\n\n"
        "def apply_fn(p, x):                        # logits (N, 10)\n"
        "    return feature_fn(p, x) @ p['W2'] + p['b2'][None, :]\n\n"
        "def layers_fn(p, x):                       # every layer's output (for the embedding kernel)\n"
        "    h = feature_fn(p, x)\n"
        "    return [h, h @ p['W2'] + p['b2'][None, :]]\n\n"
        "k1, k2 = jax.random.split(jax.random.key(0))\n"
        "params = {'W1': jax.random.normal(k1, (64, 32)) / 8.0, 'b1': jnp.zeros(32),\n"
        "          'W2': jax.random.normal(k2, (32, 10)) / np.sqrt(32), 'b2': jnp.zeros(10)}\n"
        "opt = optax.adam(1e-2)\n\n"
        "def step(carry, _):\n"
        "    p, s = carry\n"
        "    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(apply_fn(q, x_train), y_train).mean()\n"
        "    u, s = opt.update(jax.grad(loss)(p), s)\n"
        "    return (optax.apply_updates(p, u), s), None\n\n"
        "(params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=100))(params)\n"
        "nn_logits = apply_fn(params, x_test)\n"
        "print('network test accuracy', float(jc.accuracy(nn_logits, y_test)))"
    ),
    new_markdown_cell(
        "## The trace NTK\n\n"
        "`jc.trace_ntk(apply_fn)` is the cosine-normalized trNTK: the cosine similarity of the concatenated "
        "per-class parameter gradients. Sorted by class, the training kernel shows the block structure the "
        "network has learned."
    ),
    new_code_cell(
        "kernel_fn = jc.trace_ntk(apply_fn)\n"
        "t0 = time.perf_counter()\n"
        "K_train = kernel_fn(params, x_train)                # (800, 800)\n"
        "K_test = kernel_fn(params, x_test, x_train)         # (400, 800)\n"
        "print(f'kernels in {time.perf_counter() - t0:.1f} s', K_train.shape, K_test.shape)\n"
        "order = np.argsort(y_train, kind='stable')\n"
        "plt.figure(figsize=(4.5, 4))\n"
        "plt.imshow(np.asarray(K_train)[np.ix_(order, order)], cmap='viridis')\n"
        "plt.colorbar(label='trNTK'); plt.title('train×train trNTK, sorted by class'); plt.show()"
    ),
    new_markdown_cell(
        "## The kernel surrogate and its faithfulness\n\n"
        "`fit_kglm` minimizes `(1/N) Σ_i CE(W k_i + b, y_i) + (l2/2)‖W‖²` with L-BFGS (deterministic, reports "
        "convergence). Faithfulness compares it to the network on the test set: TAD (accuracy difference), Kendall "
        "τ_K between the probabilities both give the correct class, and R_Miss (overlap of their mistakes)."
    ),
    new_code_cell(
        "model = jc.fit_kglm(K_train, y_train, l2=1e-3)\n"
        "print('converged', bool(model.converged), 'in', int(model.n_iter), 'iterations')\n"
        "logits = jc.kglm_logits(model, K_test)\n"
        "report = jc.faithfulness(nn_logits, logits, y_test, r2='linear')\n"
        "{k: round(v, 4) for k, v in report.as_dict().items()}"
    ),
    new_markdown_cell(
        "## Which training points drive a prediction?\n\n"
        "The surrogate's logit decomposes exactly over training points, "
        "`logit_c(x) = Σ_i (W[c, i] κ(x, x_i) + b_c / N)`; `attribute` keeps the top-k per test point (here for the "
        "class the surrogate predicts). The last row is a test digit the network misclassifies: the training "
        "images behind the surrogate's answer show why."
    ),
    new_code_cell(
        "top = jc.attribute(model, K_test, k=6)\n"
        "A = jc.contributions(model, K_test)\n"
        "print('contributions add up to the logits:',\n"
        "      bool(jnp.allclose(A.sum(1), logits[jnp.arange(len(y_test)), top.classes], atol=1e-4)))\n"
        "nn_right = np.argmax(np.asarray(nn_logits), 1) == y_test\n"
        "# two test points the network gets right, and its first mistake\n"
        "rows = [int(i) for i in np.flatnonzero(nn_right)[:2]] + [int(i) for i in np.flatnonzero(~nn_right)[:1]]\n"
        "fig = jc.plot_attribution(top, x_test, x_train, index=rows, y_test=y_test, y_train=y_train)\n"
        "plt.show()"
    ),
    new_markdown_cell(
        "## All kernels side by side\n\n"
        "`surrogate_table` computes each kernel, fits the published one-vs-rest protocol (here with `l2=1e-3`) and "
        "reports faithfulness — the shape of the published comparison table. Projected kernels "
        "(`proj_trntk`, `proj_pntk`) are added when a `key` is given; they are left out here to stay fast."
    ),
    new_code_cell(
        "table = jc.surrogate_table(apply_fn, params, x_train[:300], y_train[:300], x_test[:150], y_test[:150],\n"
        "                           feature_fn=feature_fn, layers_fn=layers_fn,\n"
        "                           kernels=['trntk', 'trntk0', 'pntk', 'ck', 'em'], l2=1e-3, progress_bar=False)\n"
        "from IPython.display import Markdown\n"
        "Markdown(table.to_markdown())"
    ),
]

nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
out = Path(__file__).with_name("kernels_surrogates.ipynb")
if "--execute" in sys.argv:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(out.parent)}}).execute()
nbformat.write(nb, out)
print("wrote", out)
if "--figure" in sys.argv:
    import base64

    path = Path(sys.argv[sys.argv.index("--figure") + 1])
    cell = next(c for c in nb.cells if c.cell_type == "code" and "plot_attribution" in c.source)
    png = next(o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(png))
    print("wrote", path)
