# %% [markdown]
# # Kernels and kernel surrogates of a small digits MLP
#
# We train a 64-32-10 MLP on scikit-learn's 8×8 digits, compute its trace NTK, fit a kernel GLM surrogate `logits(x) = W κ(x, X_train) + b` on the training kernel, measure how faithful it is to the network (TAD, Kendall τ_K, R_Miss) and explain test predictions by the training points that drive them. Finally every kernel of the network (trNTK, trNTK⁰, pNTK, CK, Em) is compared side by side.
#
# Everything runs on CPU in well under a minute.

# %%
import time
import jax, jax.numpy as jnp, numpy as np, optax
import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
import jaxcompare as jc

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
perm = np.random.default_rng(0).permutation(len(X))
X, y = X[perm], y[perm]
x_train, y_train, x_test, y_test = X[:800], y[:800], X[800:1200], y[800:1200]
x_train.shape, x_test.shape

# %% [markdown]
# ## A small network, trained full-batch with Adam

# %%
def feature_fn(p, x):                      # penultimate features (for the conjugate kernel)
    return jnp.tanh(x @ p['W1'] + p['b1'][None, :])

def apply_fn(p, x):                        # logits (N, 10)
    return feature_fn(p, x) @ p['W2'] + p['b2'][None, :]

def layers_fn(p, x):                       # every layer's output (for the embedding kernel)
    h = feature_fn(p, x)
    return [h, h @ p['W2'] + p['b2'][None, :]]

k1, k2 = jax.random.split(jax.random.key(0))
params = {'W1': jax.random.normal(k1, (64, 32)) / 8.0, 'b1': jnp.zeros(32),
          'W2': jax.random.normal(k2, (32, 10)) / np.sqrt(32), 'b2': jnp.zeros(10)}
opt = optax.adam(1e-2)

def step(carry, _):
    p, s = carry
    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(apply_fn(q, x_train), y_train).mean()
    u, s = opt.update(jax.grad(loss)(p), s)
    return (optax.apply_updates(p, u), s), None

(params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=100))(params)
nn_logits = apply_fn(params, x_test)
print('network test accuracy', float(jc.accuracy(nn_logits, y_test)))

# %% [markdown]
# ## The trace NTK
#
# `jc.trace_ntk(apply_fn)` is the cosine-normalized trNTK: the cosine similarity of the concatenated per-class parameter gradients. Sorted by class, the training kernel shows the block structure the network has learned.

# %%
kernel_fn = jc.trace_ntk(apply_fn)
t0 = time.perf_counter()
K_train = kernel_fn(params, x_train)                # (800, 800)
K_test = kernel_fn(params, x_test, x_train)         # (400, 800)
print(f'kernels in {time.perf_counter() - t0:.1f} s', K_train.shape, K_test.shape)
order = np.argsort(y_train, kind='stable')
plt.figure(figsize=(4.5, 4))
plt.imshow(np.asarray(K_train)[np.ix_(order, order)], cmap='viridis')
plt.colorbar(label='trNTK'); plt.title('train×train trNTK, sorted by class'); plt.show()

# %% [markdown]
# ## The kernel surrogate and its faithfulness
#
# `fit_kglm` minimizes `(1/N) Σ_i CE(W k_i + b, y_i) + (l2/2)‖W‖²` with L-BFGS (deterministic, reports convergence). Faithfulness compares it to the network on the test set: TAD (accuracy difference), Kendall τ_K between the probabilities both give the correct class, and R_Miss (overlap of their mistakes).

# %%
model = jc.fit_kglm(K_train, y_train, l2=1e-3)
print('converged', bool(model.converged), 'in', int(model.n_iter), 'iterations')
logits = jc.kglm_logits(model, K_test)
report = jc.faithfulness(nn_logits, logits, y_test, r2='linear')
{k: round(v, 4) for k, v in report.as_dict().items()}

# %% [markdown]
# ## Which training points drive a prediction?
#
# The surrogate's logit decomposes exactly over training points, `logit_c(x) = Σ_i (W[c, i] κ(x, x_i) + b_c / N)`; `attribute` keeps the top-k per test point (here for the class the surrogate predicts). The last row is a test digit the network misclassifies: the training images behind the surrogate's answer show why.

# %%
top = jc.attribute(model, K_test, k=6)
A = jc.contributions(model, K_test)
print('contributions add up to the logits:',
      bool(jnp.allclose(A.sum(1), logits[jnp.arange(len(y_test)), top.classes], atol=1e-4)))
nn_right = np.argmax(np.asarray(nn_logits), 1) == y_test
# two test points the network gets right, and its first mistake
rows = [int(i) for i in np.flatnonzero(nn_right)[:2]] + [int(i) for i in np.flatnonzero(~nn_right)[:1]]
fig = jc.plot_attribution(top, x_test, x_train, index=rows, y_test=y_test, y_train=y_train)
plt.show()

# %% [markdown]
# ## All kernels side by side
#
# `surrogate_table` computes each kernel, fits the published one-vs-rest protocol (here with `l2=1e-3`) and reports faithfulness — the shape of the published comparison table. Its first argument is a PRNG key, used by the projected kernels (`proj_trntk`, `proj_pntk`); they are left out here to stay fast, so the key is `None`.

# %%
table = jc.surrogate_table(None, apply_fn, params, x_train[:300], y_train[:300], x_test[:150], y_test[:150],
                           feature_fn=feature_fn, layers_fn=layers_fn,
                           kernels=['trntk', 'trntk0', 'pntk', 'ck', 'em'], l2=1e-3, progress_bar=False)
from IPython.display import Markdown
Markdown(table.to_markdown())
