"""Build notebooks/microscope.ipynb (run: python notebooks/_build_microscope.py [--execute])."""
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# The embedding microscope\n\n"
        "Do two sources of samples differ, and how? Embed the samples with any model, then look at the embedding "
        "vectors with simple, well-understood tools: PCA (unsupervised: what dominates the variation), LDA "
        "(supervised: the directions that separate sources), held-out separability with an interval, a permutation "
        "two-sample test, and the samples furthest along the separating direction.\n\n"
        "Demo data: scikit-learn's bundled 8x8 digits (no download) in two sources, *original* and *noised* "
        "(Gaussian pixel noise), embedded by a small random-feature network (`embed.make_demo_embeddings`). "
        "The digit identity plays the role of a hidden topic."
    ),
    new_code_cell(
        "%matplotlib inline\nimport jax\nimport numpy as np\nfrom jaxcompare import embed\n\n"
        "key = jax.random.key(0)\n"
        "k_data, k_sep, k_test, k_null = jax.random.split(key, 4)\n"
        "demo = embed.make_demo_embeddings(k_data, n_per_source=200, dim=64)\n"
        "X, src = demo.embeddings, demo.labels\n"
        "X.shape, X.dtype, demo.names"
    ),
    new_markdown_cell(
        "## PCA: what varies most?\n\n`pca(k)` is a `Transform(fit, apply)` pair: `fit` returns a frozen state "
        "(mean, components, explained variance), `apply` projects. The leading components follow the digits "
        "(the hidden topic), not the source."
    ),
    new_code_cell(
        "p = embed.pca(2)\nps = p.fit(X)\nZ = p.apply(ps, X)\n"
        "print('explained variance ratio:', np.round(np.asarray(ps.explained_variance_ratio), 3))\n"
        "embed.plot_projection(Z, src, names=demo.names, axis_label='PC', title='PCA coloured by source')"
    ),
    new_code_cell(
        "embed.plot_projection(Z, demo.digits, names=[str(i) for i in range(10)], axis_label='PC',\n"
        "                     title='PCA coloured by the hidden digit')"
    ),
    new_markdown_cell(
        "## LDA: the direction that separates the sources\n\n`chain(pca(20), lda())` fits PCA, then LDA on the "
        "PCA coordinates (fit each on the output of the previous). With two sources there is one discriminant."
    ),
    new_code_cell(
        "t = embed.chain(embed.pca(20), embed.lda())\nstate = t.fit(X, src)\nZl = t.apply(state, X)\n"
        "embed.plot_projection(Zl, src, names=demo.names, axis_label='LD', title='LDA')"
    ),
    new_markdown_cell(
        "## How separable, and is the difference real?\n\n`separability` = 5-fold held-out LDA accuracy with a "
        "95% Wilson interval; `two_sample_test` = permutation test (MMD with a median-heuristic Gaussian kernel, "
        "or a classifier test), p-value `(1 + #{T_perm >= T}) / (1 + B)`."
    ),
    new_code_cell(
        "sep = embed.separability(X, src, key=k_sep)\n"
        "print(f'held-out accuracy {float(sep.accuracy):.3f} [{float(sep.ci_low):.3f}, {float(sep.ci_high):.3f}], '\n"
        "      f'chance {float(sep.chance):.2f}')\n"
        "a, b = X[src == 0], X[src == 1]\n"
        "for method in ['mmd', 'classifier']:\n"
        "    r = embed.two_sample_test(a, b, key=k_test, method=method, n_permutations=200)\n"
        "    print(f'{method:10s} statistic {float(r.statistic):.4f}  p = {float(r.p_value):.4f}')"
    ),
    new_markdown_cell("A null check: with `noise=0` the two sources are draws from the same distribution, so the "
                      "p-value is uniform and separability is at chance."),
    new_code_cell(
        "null = embed.make_demo_embeddings(k_data, n_per_source=200, dim=64, noise=0.0)\n"
        "r0 = embed.two_sample_test(null.embeddings[null.labels == 0], null.embeddings[null.labels == 1],\n"
        "                           key=k_null, n_permutations=200)\n"
        "s0 = embed.separability(null.embeddings, null.labels, key=k_sep)\n"
        "print(f'p = {float(r0.p_value):.3f}; accuracy {float(s0.accuracy):.3f} '\n"
        "      f'[{float(s0.ci_low):.3f}, {float(s0.ci_high):.3f}]')"
    ),
    new_markdown_cell("## The samples furthest along the separating direction"),
    new_code_cell(
        "ex = embed.extremes(Zl, 0, k=8)\n"
        "print('most \"noised\"-like:  ', np.asarray(ex.top_indices), 'sources', np.asarray(src[ex.top_indices]))\n"
        "print('most \"original\"-like:', np.asarray(ex.bottom_indices), 'sources', np.asarray(src[ex.bottom_indices]))"
    ),
    new_markdown_cell(
        "## Your own embeddings\n\n`load_embeddings` reads `.npz` (arrays `embeddings`, `labels`, optional "
        "`names`), `.npy`, `.csv`/`.tsv`, or a list of files (one source per file); nothing is unpickled."
    ),
    new_code_cell(
        "import tempfile, os\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    path = os.path.join(d, 'demo.npz')\n"
        "    embed.save_embeddings(path, X, src, names=demo.names)\n"
        "    data = embed.load_embeddings(path)\n"
        "data.embeddings.shape, data.names"
    ),
    new_markdown_cell("## Overview figure (used by the report)"),
    new_code_cell("embed.plot_microscope(X, src, names=demo.names, hidden=demo.digits)"),
]

nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}})
out = Path(__file__).with_name("microscope.ipynb")
nbformat.write(nb, out)
print("wrote", out)
if "--execute" in sys.argv:
    import time

    from nbclient import NotebookClient

    t0 = time.time()
    NotebookClient(nbformat.read(out, as_version=4), timeout=300, kernel_name="python3").execute()
    print(f"executed in {time.time() - t0:.1f} s")
