"""One key, one result with ``jax_enable_x64`` on or off: the draws that depended on the default integer or float
width (``randint``/``uniform`` without a dtype draw 64-bit numbers under x64) use 32-bit words. The suite runs with
x64 on (conftest.py); a child process without it must give the same numbers for float32 inputs. Oracle: the
same computation in the other mode (independent of either value)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxcompare as jc

_CHILD = r"""
import json, sys, numpy as np, jax, jax.numpy as jnp, jaxcompare as jc
print(json.dumps(__import__("parity").run()))
"""


def run() -> dict:
    """The draws under test, for float32 inputs (module-level: the child imports this file)."""
    g = np.random.default_rng(0)
    s = jnp.asarray(g.normal(size=(8, 200)), jnp.float32).at[2].add(1.0)
    x1, x2 = jc.bootstrap_halves(jax.random.key(0), 200, 5)
    r = jc.ensemble_alpha_hat(jax.random.key(0), s, candidates=jnp.arange(4), reference=jnp.arange(4, 8), n_boot=6)
    logits = jnp.asarray(g.normal(size=(120, 3)), jnp.float32)
    probs, labels = jax.nn.softmax(logits), jnp.asarray(g.integers(0, 3, 120))
    ci = jc.ece_interval(jax.random.key(1), probs, labels, n_boot=20)
    return dict(
        x1=np.asarray(x1).tolist(),
        x2=np.asarray(x2).tolist(),
        alpha_hat=np.asarray(r.alpha_hat).tolist(),
        ci=[float(v) for v in jax.tree_util.tree_leaves(ci) if jnp.ndim(v) == 0],
    )


def test_bootstrap_draws_do_not_depend_on_x64(tmp_path):
    assert jax.config.jax_enable_x64
    (tmp_path / "parity.py").write_text(open(__file__).read())
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["JAX_ENABLE_X64"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    child, mine = json.loads(out.stdout.strip().splitlines()[-1]), run()
    assert child["x1"] == mine["x1"] and child["x2"] == mine["x2"]
    np.testing.assert_allclose(mine["alpha_hat"], child["alpha_hat"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mine["ci"], child["ci"], rtol=1e-5, atol=1e-6)
