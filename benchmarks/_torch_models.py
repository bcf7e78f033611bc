"""The torch.func tutorial's NTK recipe on bench_ntk_models' models and weights (no jax here).

Runs under the benchmark's own torch environment (:func:`_peer_env.torch_env`), never a dependency of jaxcompare::

    python benchmarks/_torch_models.py '{"model": "cnn", "n": 512, "device": "cpu", "npz": ..., ...}'

The recipe is the one of the torch.func tutorial "Neural Tangent Kernels" (its ``empirical_ntk_jacobian_contraction``
with ``compute='trace'``): per-example Jacobians by ``vmap(jacrev(f_single), (None, 0))`` over the parameter dict,
flattened per parameter, contracted by ``einsum('Naf,Maf->NM')`` and summed over parameters. The Jacobian is
computed once and used on both sides (x2 = x1; the tutorial computes it per side). ``chunk`` sets ``vmap``'s
``chunk_size`` (None: all examples at once, as the tutorial does).

The models are ports of bench_ntk_models' plain-JAX functions to ``torch.nn.functional`` on the same parameter arrays
(an ``.npz`` written by bench_ntk_models.export): NHWC inputs kept as they are, HWIO filters permuted to OIHW, XLA's
SAME padding (lower half floor) by an explicit pad, GELU with the tanh approximation (jax.nn.gelu's default). The
child checks the logits of the first points against the JAX logits stored with the weights before timing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _subprocess  # noqa: E402


def _same_conv(h, w_hwio, stride):
    """lax.conv_general_dilated(h, w, stride, "SAME") for NCHW ``h``: XLA pads (total // 2, total - total // 2)."""
    k = w_hwio.shape[0]
    size = h.shape[-1]
    pad = max((-(-size // stride) - 1) * stride + k - size, 0)
    h = F.pad(h, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return F.conv2d(h, w_hwio.permute(3, 2, 0, 1), stride=stride)


def _layers(p):
    n = 1 + max(int(k[1:].split("_")[0]) for k in p)
    return [{k.split("_", 1)[1]: v for k, v in p.items() if k.startswith(f"p{i}_")} for i in range(n)]


def mlp(p, x):
    ls = _layers(p)
    h = x.reshape(x.shape[0], -1)
    for layer in ls[:-1]:
        h = torch.relu(h @ layer["w"])
    return h @ ls[-1]["w"]


def cnn(p, x):
    ls = _layers(p)
    h = x.permute(0, 3, 1, 2)
    for layer, s in zip(ls[:-1], (1, 2, 2)):
        h = torch.relu(_same_conv(h, layer["w"], s) + layer["b"][None, :, None, None])
    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # flatten in NHWC order, as jax does
    return h @ ls[-1]["w"] + ls[-1]["b"]


def resnet(p, x):
    ls = _layers(p)

    def bn(h, layer, tag):
        return h * layer["s" + tag][None, :, None, None] + layer["t" + tag][None, :, None, None]

    h = torch.relu(bn(_same_conv(x.permute(0, 3, 1, 2), ls[0]["w"], 1), ls[0], ""))
    for layer in ls[1:-1]:
        stride = 2 if "wd" in layer and layer["wd"].shape[2] != layer["wd"].shape[3] else 1
        y = torch.relu(bn(_same_conv(h, layer["w1"], stride), layer, "1"))
        y = bn(_same_conv(y, layer["w2"], 1), layer, "2")
        sc = bn(_same_conv(h, layer["wd"], stride), layer, "d") if "wd" in layer else h
        h = torch.relu(y + sc)
    return h.mean(dim=(2, 3)) @ ls[-1]["w"] + ls[-1]["b"]


def _ln(h, s, b):
    m = h.mean(-1, keepdim=True)
    v = ((h - m) ** 2).mean(-1, keepdim=True)
    return (h - m) * torch.rsqrt(v + 1e-5) * s + b


def _encoder(layers, h, heads):
    n, t, d = h.shape
    hd = d // heads
    for layer in layers:
        y = _ln(h, layer["ln1s"], layer["ln1b"])
        q, k, v = ((y @ layer[w]).reshape(n, t, heads, hd) for w in ("wq", "wk", "wv"))
        att = torch.softmax(torch.einsum("nthd,nshd->nhts", q, k) / math.sqrt(hd), dim=-1)
        h = h + torch.einsum("nhts,nshd->nthd", att, v).reshape(n, t, -1) @ layer["wo"]
        y = _ln(h, layer["ln2s"], layer["ln2b"])
        h = h + F.gelu(y @ layer["w1"] + layer["b1"], approximate="tanh") @ layer["w2"] + layer["b2"]
    return h


def _head(head, h):
    return _ln(h, head["lns"], head["lnb"]).mean(1) @ head["w"] + head["b"]


def transformer(p, tokens, heads):
    ls = _layers(p)
    h = ls[0]["emb"][tokens.long()] + ls[0]["pos"][None, : tokens.shape[1]]
    return _head(ls[-1], _encoder(ls[1:-1], h, heads))


def vit(p, x, heads, patch):
    ls = _layers(p)
    n, size, _, c = x.shape
    g = size // patch
    patches = x.reshape(n, g, patch, g, patch, c).permute(0, 1, 3, 2, 4, 5).reshape(n, g * g, patch * patch * c)
    h = patches @ ls[0]["wp"] + ls[0]["bp"] + ls[0]["pos"][None]
    return _head(ls[-1], _encoder(ls[1:-1], h, heads))


def apply_fn(cfg):
    """The torch port of ``cfg["model"]``: ``(params dict, batch) -> (N, C)`` logits."""
    name = cfg["model"]
    if name in ("resnet", "resnet_q"):
        return resnet
    if name == "transformer":
        return lambda p, x: transformer(p, x, cfg["heads"])
    if name == "vit":
        return lambda p, x: vit(p, x, cfg["heads"], cfg["patch"])
    return {"mlp": mlp, "cnn": cnn}[name]


def recipe(cfg: dict) -> dict:
    """Time the tutorial's recipe on the weights and inputs of ``cfg["npz"]``; compare with our exact kernel."""
    dev = torch.device("cuda" if cfg["device"] == "gpu" else "cpu")
    z = np.load(cfg["npz"])
    params = {k: torch.tensor(z[k], device=dev) for k in z.files if k.startswith("p")}
    x = torch.tensor(z["x"], device=dev)
    f = apply_fn(cfg)
    with torch.no_grad():
        logits = f(params, x[:8]).cpu().numpy()
    ref = np.load(cfg["logits"])[: logits.shape[0]]
    logit_err = float(np.abs(logits - ref).max())
    if not logit_err <= 1e-4 * max(1.0, float(np.abs(ref).max())):
        raise SystemExit(f"torch port of {cfg['model']} disagrees with the JAX model: max |Δ logit| {logit_err:.2e}")

    def f_single(p, xi):
        return f(p, xi.unsqueeze(0)).squeeze(0)

    jac_fn = vmap(jacrev(f_single), (None, 0), chunk_size=cfg.get("chunk"))

    def run():
        jac = [j.flatten(2) for j in jac_fn(params, x).values()]
        k0 = torch.stack([torch.einsum("Naf,Maf->NM", j, j) for j in jac]).sum(0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return k0

    t0 = time.perf_counter()
    k0 = run()
    first = t = time.perf_counter() - t0
    if first < cfg.get("repeat_below", 60.0):
        del k0
        t0 = time.perf_counter()
        k0 = run()
        t = time.perf_counter() - t0
    k0 = k0.double().cpu().numpy()
    d = np.sqrt(np.diag(k0))
    kern = k0 / d[:, None] / d[None, :]
    out = {"time": t, "first": first, "logit_err": logit_err, "torch": torch.__version__}
    out["threads"] = torch.get_num_threads()
    exact = Path(cfg["exact"])
    if exact.exists():
        iu = np.triu_indices(k0.shape[0], 1)
        diff = np.abs(kern - np.load(exact))[iu]
        out["err"], out["max_err"] = float(diff.mean()), float(diff.max())
    return out


if __name__ == "__main__":
    _subprocess.emit(recipe(json.loads(sys.argv[1])))
