# %% [markdown]
# # Which optimizer trained this model? Spectra of a linear-width two-layer network
#
# The model of `shared/spec/lwr.md`: $f(x) = v^\top \varphi(Wx/\sqrt d)/\sqrt h$ with $n, d, h$ growing together. We train $W$ with four optimizers from the same data and initialization and compare the spectra of the weights $W^\top W/h$, the conjugate kernel and the NTK with the limiting laws at initialization (Marchenko–Pastur, Fan–Wang). Small sizes keep this notebook under a minute; the theory is the same at $(n, d, h) = (2000, 1000, 1500)$.

# %%
%matplotlib inline
import jax
import numpy as np
from jaxcompare import lwr

cfg = lwr.LWRConfig(n=400, d=200, h=300)  # tanh, softplus teacher, tau = 0.2, noise 0.3
data = lwr.sample_data(jax.random.key(0), cfg)
params = lwr.init_params(jax.random.key(1), cfg)
print('stable GD step (limit): eta < %.1f = %.3f n' % (lwr.stable_lr(cfg), lwr.stable_lr(cfg) / cfg.n))

# %% [markdown]
# ## Four optimizers
# GD and small-step SGD should leave the bulk where it was (T2); large-step SGD pushes eigenvalues out of the bulk (spikes; at these small sizes several minibatch pushes, not one aligned spike); Adam fattens the tail. Step sizes are in the units of $\|y - f\|^2/(2n)$ (halve them for a mean-squared loss without the 1/2).

# %%
runs = {
    'GD, eta = 0.2n': lwr.train(jax.random.key(2), params, data, cfg, optimizer='gd', lr=0.2 * cfg.n,
                                steps=150, record_every=50),
    'SGD small, lr = 2': lwr.train(jax.random.key(2), params, data, cfg, optimizer='sgd', lr=2.0,
                                   batch_size=32, steps=300, record_every=100),
    'SGD large, lr = 300': lwr.train(jax.random.key(2), params, data, cfg, optimizer='sgd', lr=300.0,
                                     batch_size=32, steps=300, record_every=100),
    'Adam, lr = 0.3': lwr.train(jax.random.key(2), params, data, cfg, optimizer='adam', lr=0.3,
                                batch_size=32, steps=300, record_every=100),
}
for name, r in runs.items():
    H = r.history
    print(f'{name:22s} top eig of W^T W/h: {float(H.eig_weights[0, 0]):6.2f} -> {float(H.eig_weights[-1, 0]):7.2f}'
          f'   |<u1, beta>| = {float(H.align[-1, 0, 0]):.2f}   test loss {float(H.test_loss[-1]):.3f}')

# %%
fig = lwr.plot_spectra_grid(runs, cfg, logy=True)

# %% [markdown]
# ## Initialization against the limiting laws
# Distances between Stieltjes transforms at $\operatorname{Im} z = 0.1$ (errors of order $C/n$).

# %%
chk = lwr.check_init_spectra(jax.random.key(1), cfg)
print(f'weights {chk.weights:.3f}   CK {chk.ck:.3f}   NTK {chk.ntk:.3f}')

# %% [markdown]
# ## One large GD step: the BBP spike
# After one step of size $\eta$ the update is rank one, $W_1 \approx W_0 + c\, v\,(X^\top r_0)^\top$. Writing $u = v/\|v\|$ and $a = W_1^\top u$, $\Sigma_1 = W_1^\top W_1/h$ is a Marchenko–Pastur matrix plus $\|a\|^2/h$ along $a$; an outlier leaves the bulk when $\theta = \sqrt{\|a\|^2/h - d/h} > (d/h)^{1/4}$, at the BBP location. The residual $r_0 = y - f_0$ contains the network's own output, so $X^\top r_0$ partly cancels $W_0^\top u$: the textbook reading (push independent of $W_0$, dotted line) over-predicts the spike.

# %%
spike = lwr.check_spike(jax.random.key(3), cfg, lr_over_n=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0))
for r, t, m, p, q, a, ap in zip(spike.lr_over_n, spike.theta, spike.top_eig, spike.top_eig_bbp,
                               spike.top_eig_naive, spike.align, spike.align_bbp):
    print(f'eta/n = {r:4.2f}  theta = {t:5.2f}  top eig {m:7.2f} (BBP {p:7.2f}, textbook {q:7.2f})  '
          f'align {a:.2f} (BBP {ap:.2f})')
fig = lwr.plot_spike_vs_step(spike)

# %% [markdown]
# ## Tail exponents along training (Clauset MLE ± 1 s.e.)

# %%
fig = lwr.plot_tail_exponents(runs)
