"""``jaxcompare lwr``: train the linear-width two-layer network, report its loss, stability bound and spectra."""

from __future__ import annotations

import json
import os
import sys

from ._io import CLIError, check_output_dir
from ._parser import OPTIMIZER_DEFAULT_LR

__all__ = ["cmd_lwr", "default_lr"]

MAX_LR_FACTOR = 1000.0


def default_lr(optimizer: str, n: int) -> float:
    """The default ``--lr`` of an optimizer (:data:`OPTIMIZER_DEFAULT_LR`; ``"0.2n"`` means ``0.2 × n``)."""
    v = OPTIMIZER_DEFAULT_LR[optimizer]
    return float(v[:-1]) * n if v.endswith("n") else float(v)


def cmd_lwr(args) -> int:
    import jax
    import numpy as np

    from .. import lwr
    from .._validation import key_from_seed
    from ..study import to_jsonable
    from ..study._lwr import spectra_grid
    from ..study._section import pyplot

    try:
        cfg = lwr.LWRConfig(n=args.n, d=args.d, h=args.h)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    if args.optimizer == "sgd" and args.batch_size is None:
        raise CLIError("--optimizer sgd needs --batch-size (e.g. 32)")
    if args.optimizer == "gd" and args.batch_size is not None:
        raise CLIError("--optimizer gd is full-batch; use --optimizer sgd with --batch-size for minibatches")
    if args.batch_size is not None and args.batch_size > args.n:
        raise CLIError(f"--batch-size {args.batch_size} exceeds the {args.n} samples (--n)")
    lr = args.lr if args.lr is not None else default_lr(args.optimizer, args.n)
    bound_theory = float(lwr.stable_lr(cfg))
    if args.optimizer in ("gd", "sgd") and lr > MAX_LR_FACTOR * bound_theory:
        raise CLIError(
            f"--lr {lr:g} is {lr / bound_theory:.3g}× the full-batch GD stability bound 2n/λ_max(K) ≈ "
            f"{bound_theory:.4g}: training would overflow at once; use --lr below {bound_theory:.4g} "
            "(stable) or a few times it (large-step regime)"
        )
    if args.optimizer == "adam" and lr > MAX_LR_FACTOR * default_lr("adam", args.n):
        raise CLIError(
            f"--lr {lr:g} is far above Adam's useful range (default {default_lr('adam', args.n):g}; Adam's "
            "step moves every weight by about lr per update)"
        )
    from ..lwr._model import check_fits

    try:
        check_fits(cfg, kernels=True)  # an n too large for memory aborted inside XLA after --out was made
    except ValueError as e:
        raise CLIError(f"--n {args.n}: {e}") from None
    check_output_dir(args.out)  # after the cheap checks, before any work
    kd, kp, kt = jax.random.split(key_from_seed(args.seed), 3)
    data = lwr.sample_data(kd, cfg)
    params = lwr.init_params(kp, cfg)
    res = lwr.train(
        kt,
        params,
        data,
        cfg,
        optimizer=args.optimizer,
        lr=lr,
        steps=args.steps,
        batch_size=args.batch_size,
        record_every=max(1, args.steps // 5),
        n_top=min(3, args.d),
        throw=False,
    )
    h = res.history
    loss = np.asarray(h.train_loss, np.float64)
    test_loss = np.asarray(h.test_loss, np.float64)
    diverged = bool(np.asarray(res.diverged))
    bound = float(np.asarray(res.lr_bound))
    grew = bool(np.isfinite(loss[-1]) and loss[-1] > loss[0])
    flags = (
        [f"diverged (non-finite loss or parameters at step {int(np.asarray(res.first_bad_step))})"] if diverged else []
    ) + ([f"the training loss grew from {loss[0]:.4g} to {loss[-1]:.4g}"] if grew else [])
    unstable = args.optimizer == "gd" and lr > bound
    if unstable:
        flags.append(
            f"lr is {lr / bound:.3g}× the GD stability bound {bound:.4g}: the linearized dynamics diverge "
            "(a finite loss here comes from saturating activations)"
        )
    plt = pyplot()
    fig = spectra_grid({f"{args.optimizer} (lr {lr:g})": res}, cfg)
    fig.savefig(os.path.join(args.out, "spectra.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)
    summary = {
        "config": dict(
            n=args.n,
            d=args.d,
            h=args.h,
            optimizer=args.optimizer,
            lr=lr,
            lr_is_default=args.lr is None,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
        ),
        "train_loss_init": loss[0],
        "train_loss_final": loss[-1],
        "test_loss_final": test_loss[-1],
        "lr_bound": bound,
        "lr_bound_theory": bound_theory,
        "diverged": diverged,
        "loss_increased": grew,
        "above_stability_bound": unstable,
        "flags": flags,
        "history": to_jsonable(h),
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(to_jsonable(summary), f, allow_nan=False)
    top = np.asarray(h.eig_weights)[-1][:3]
    print(
        f"{args.optimizer}, lr = {lr:g} ({'default' if args.lr is None else 'given'}); full-batch GD stability "
        f"bound 2n/λ_max(K_0) = {bound:.4g} (lr/bound = {lr / bound:.3g})"
    )
    print(
        f"train loss {loss[0]:.4g} → {loss[-1]:.4g}, test loss {test_loss[0]:.4g} → {test_loss[-1]:.4g} after "
        f"{args.steps} steps; top eigenvalues of WᵀW/h: {np.round(top, 3).tolist()}"
    )
    print(f"wrote {os.path.join(args.out, 'spectra.png')} and results.json")
    if flags:
        print(f"jaxcompare lwr: warning: {'; '.join(flags)}; lower --lr (exit status 1)", file=sys.stderr)
        return 1
    return 0
