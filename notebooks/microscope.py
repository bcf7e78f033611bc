# %% [markdown]
# # The embedding microscope
#
# Do two sources of samples differ, and how? Embed the samples with any model, then look at the embedding vectors with simple, well-understood tools: PCA (unsupervised: what dominates the variation), LDA (supervised: the directions that separate sources), held-out separability with an interval, a permutation two-sample test, and the samples furthest along the separating direction.
#
# Demo data: scikit-learn's bundled 8x8 digits (no download) in two sources, *original* and *noised* (Gaussian pixel noise), embedded by a small random-feature network (`embed.make_demo_embeddings`). The digit identity plays the role of a hidden topic.

# %%
%matplotlib inline
import jax
import numpy as np
from jaxcompare import embed

key = jax.random.key(0)
k_data, k_sep, k_test, k_null = jax.random.split(key, 4)
demo = embed.make_demo_embeddings(k_data, n_per_source=200, dim=64)
X, src = demo.embeddings, demo.labels
X.shape, X.dtype, demo.names

# %% [markdown]
# ## PCA: what varies most?
#
# `pca(k)` is a `Transform(fit, apply)` pair: `fit` returns a frozen state (mean, components, explained variance), `apply` projects. The leading components follow the digits (the hidden topic), not the source.

# %%
p = embed.pca(2)
ps = p.fit(X)
Z = p.apply(ps, X)
print('explained variance ratio:', np.round(np.asarray(ps.explained_variance_ratio), 3))
embed.plot_projection(Z, src, names=demo.names, axis_label='PC', title='PCA coloured by source')

# %%
embed.plot_projection(Z, demo.digits, names=[str(i) for i in range(10)], axis_label='PC',
                     title='PCA coloured by the hidden digit')

# %% [markdown]
# ## LDA: the direction that separates the sources
#
# `chain(pca(20), lda())` fits PCA, then LDA on the PCA coordinates (fit each on the output of the previous). With two sources there is one discriminant.

# %%
t = embed.chain(embed.pca(20), embed.lda())
state = t.fit(X, src)
Zl = t.apply(state, X)
embed.plot_projection(Zl, src, names=demo.names, axis_label='LD', title='LDA')

# %% [markdown]
# ## How separable, and is the difference real?
#
# `separability` = 5-fold held-out LDA accuracy with a 95% Wilson interval; `two_sample_test` = permutation test (MMD with a median-heuristic Gaussian kernel, or a classifier test), p-value `(1 + #{T_perm >= T}) / (1 + B)`.

# %%
sep = embed.separability(k_sep, X, src)
print(f'held-out accuracy {float(sep.accuracy):.3f} [{float(sep.ci_low):.3f}, {float(sep.ci_high):.3f}], '
      f'chance {float(sep.chance):.2f}')
a, b = X[src == 0], X[src == 1]
for method in ['mmd', 'classifier']:
    r = embed.two_sample_test(k_test, a, b, method=method, n_permutations=200)
    print(f'{method:10s} statistic {float(r.statistic):.4f}  p = {float(r.p_value):.4f}')

# %% [markdown]
# A null check: with `noise=0` the two sources are draws from the same distribution, so the p-value is uniform and separability is at chance.

# %%
null = embed.make_demo_embeddings(k_data, n_per_source=200, dim=64, noise=0.0)
r0 = embed.two_sample_test(k_null, null.embeddings[null.labels == 0], null.embeddings[null.labels == 1],
                           n_permutations=200)
s0 = embed.separability(k_sep, null.embeddings, null.labels)
print(f'p = {float(r0.p_value):.3f}; accuracy {float(s0.accuracy):.3f} '
      f'[{float(s0.ci_low):.3f}, {float(s0.ci_high):.3f}]')

# %% [markdown]
# ## The samples furthest along the separating direction

# %%
ex = embed.extremes(Zl, 0, k=8)
print('most "noised"-like:  ', np.asarray(ex.top_indices), 'sources', np.asarray(src[ex.top_indices]))
print('most "original"-like:', np.asarray(ex.bottom_indices), 'sources', np.asarray(src[ex.bottom_indices]))

# %% [markdown]
# ## Your own embeddings
#
# `load_embeddings` reads `.npz` (arrays `embeddings`, `labels`, optional `names`), `.npy`, `.csv`/`.tsv`, or a list of files (one source per file); nothing is unpickled.

# %%
import tempfile, os
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, 'demo.npz')
    embed.save_embeddings(path, X, src, names=demo.names)
    data = embed.load_embeddings(path)
data.embeddings.shape, data.names

# %% [markdown]
# ## Overview figure (used by the report)

# %%
embed.plot_microscope(X, src, names=demo.names, hidden=demo.digits)
