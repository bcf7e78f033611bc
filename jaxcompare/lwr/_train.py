"""Training of the two-layer model in one jitted ``lax.scan`` program, recording spectra along the way."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checked import traced_finite, traced_result
from .._precision import HIGHEST
from .._progress import progress, progress_enabled
from .._results import Result, worst_result
from .._validation import check_choice, check_float, check_int, check_key, is_concrete
from ..spectra._activations import ACTIVATIONS
from ._config import LWRConfig
from ._eig import default_eig_backend, eigh_top, eigvalsh_desc
from ._model import LWRData, LWRParams, _apply, _check_cfg, _check_model_data, _kernels, _preact, check_fits

__all__ = ["History", "TrainResult", "train", "concat_results", "OPTIMIZERS"]

OPTIMIZERS = ("gd", "sgd", "adam")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class History:
    """Quantities recorded at steps ``step`` (``R`` records, the first at initialization).

    Attributes:
      step: ``(R,)`` number of updates done at each record.
      eig_weights: ``(R, d)`` eigenvalues of ``Σ = WᵀW/h``, **descending**.
      eig_ck: ``(R, n)`` eigenvalues of the CK, descending.
      eig_ntk: ``(R, n)`` eigenvalues of the full NTK ``K_W + K_CK``, descending.
      align: ``(R, n_top, k)`` ``|⟨u_i, β_j⟩|`` for the top ``n_top`` eigenvectors ``u_i`` of ``Σ`` (top first).
      dW: ``(R,)`` ``‖W_t − W_0‖_F/√d``.
      dck: ``(R,)`` ``‖K^CK_t − K^CK_0‖_F``.
      dntk: ``(R,)`` ``‖K^NTK_t − K^NTK_0‖_F``.
      train_loss, test_loss: ``(R,)`` ``‖y − f‖²/(2n)`` on the training / test set.
    """

    step: jax.Array
    eig_weights: jax.Array
    eig_ck: jax.Array
    eig_ntk: jax.Array
    align: jax.Array
    dW: jax.Array
    dck: jax.Array
    dntk: jax.Array
    train_loss: jax.Array
    test_loss: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Result of :func:`train`.

    Attributes:
      params: final :class:`LWRParams` (the last finite ones if training diverged).
      history: :class:`History`.
      losses: ``(steps,)`` loss of the batch used at each update (full batch for GD); the steps after a failure
        are not taken and hold NaN (``result`` says why).
      diverged: bool, True if training failed: ``result`` is ``diverged`` or ``nonfinite``.
      first_bad_step: int, the first update (1-based) that diverged or gave a non-finite loss or parameters; -1 if
        none.
      lr_bound: full-batch GD stability bound ``2n/λ_max(K_0)`` with ``K = K_W`` (``K_W + K_CK`` if ``train_v``).
      step: int, number of updates done since initialization (counting earlier runs this one resumed).
      opt_state: the optimizer's state after the last update (what ``train(..., resume=result)`` continues from).
      result: int32 :class:`jaxcompare.Result` code: ``successful``; ``diverged`` when the trained parameters' norm
        grew past ``max_growth`` times its initial value (finite but exploding, e.g. a step size far above
        ``lr_bound`` with a bounded activation that keeps the loss finite); ``nonfinite`` when a loss or parameter
        became NaN/inf. The parameters are then frozen at the last update before the failure.
    """

    params: LWRParams
    history: History
    losses: jax.Array
    diverged: jax.Array
    first_bad_step: jax.Array
    lr_bound: jax.Array
    step: jax.Array
    opt_state: object
    result: jax.Array | None = None


def _trainable(W, v, train_v: bool) -> dict:
    """The trained parameters as the optimizer sees them."""
    return {"W": W, "v": v} if train_v else {"W": W}


def _make_optimizer(optimizer, lr):
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if optimizer in ("gd", "sgd"):
        return optax.sgd(lr)
    return optax.adam(lr)


def _record_fn(X, y, Xt, yt, B, W0, ck0, ntk0, v_fixed, cfg: LWRConfig, n_top: int, backend: str, spectra: bool):
    act = cfg.activation
    h, d = W0.shape
    n = X.shape[0]
    phi = ACTIVATIONS[act][0]

    def _spectra(W, K):
        ew, vw = eigh_top(K.weights, backend)
        align = jnp.abs(jnp.matmul(vw[:, :n_top].T, B.T, precision=HIGHEST))
        if h < n:  # the CK has rank ≤ h: its nonzero eigenvalues are those of φ(U)ᵀφ(U)/h (h × h)
            F = phi(_preact(W, X))
            small = jnp.matmul(F.T, F, precision=HIGHEST) / jnp.asarray(h, W.dtype)
            e_ck = jnp.concatenate([eigvalsh_desc(small, backend), jnp.zeros((n - h,), W.dtype)])
        else:
            e_ck = eigvalsh_desc(K.ck, backend)
        return ew, e_ck, eigvalsh_desc(K.ntk, backend), align

    def record(tp, step):
        W = tp["W"]
        v = tp.get("v", v_fixed)
        K = _kernels(W, v, X, act)
        if not spectra:
            empty = jnp.zeros((0,), W.dtype)
            ew, e_ck, e_ntk, align = empty, empty, empty, jnp.zeros((0, B.shape[0]), W.dtype)
        else:
            ew, e_ck, e_ntk, align = _spectra(W, K)
        r = y - _apply(W, v, X, act)
        rt = yt - _apply(W, v, Xt, act)
        return History(
            step=jnp.asarray(step, jnp.int32),
            eig_weights=ew,
            eig_ck=e_ck,
            eig_ntk=e_ntk,
            align=align,
            dW=jnp.linalg.norm(W - W0) / jnp.sqrt(jnp.asarray(d, W.dtype)),
            dck=jnp.linalg.norm(K.ck - ck0),
            dntk=jnp.linalg.norm(K.ntk - ntk0),
            train_loss=0.5 * jnp.mean(r * r),
            test_loss=0.5 * jnp.mean(rt * rt),
        )

    return record


@partial(jax.jit, static_argnames=("cfg", "eig_backend"))
def _references(W0, v0, X, *, cfg, eig_backend):
    """The initial kernels the history measures changes from, and the GD stability bound ``2n/λ_max(K₀)``."""
    K0 = _kernels(W0, v0, X, cfg.activation)
    lam_max = eigvalsh_desc(K0.ntk if cfg.train_v else K0.ntk_w, eig_backend)[0]
    return K0.ck, K0.ntk, 2 * X.shape[0] / lam_max


def _scalar_like(ref: jax.Array, value, dtype) -> jax.Array:
    """A scalar constant on ``ref``'s mesh. A bare constant has no mesh, and ``vmap`` over keys sharded on ``Explicit``
    mesh axes cannot broadcast a ``scan`` carry that starts from one and becomes batched (JAX names the sharded axis
    from the carry's mesh); without a mesh this is the plain constant."""
    sharding = getattr(jax.typeof(ref), "sharding", None)
    if sharding is None or getattr(sharding, "mesh", None) is None or sharding.mesh.empty:
        return jnp.asarray(value, dtype)
    return jnp.full((), value, dtype, device=sharding.update(spec=jax.sharding.PartitionSpec()))


def _tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(tree)))


@partial(
    jax.jit,
    static_argnames=(
        "cfg",
        "optimizer",
        "steps",
        "batch_size",
        "record_every",
        "n_top",
        "eig_backend",
        "spectra",
        "max_growth",
    ),
)
def _train_core(
    key,
    W0,
    v0,
    X,
    y,
    Xt,
    yt,
    B,
    lr,
    refs,
    start,
    *,
    cfg,
    optimizer,
    steps,
    batch_size,
    record_every,
    n_top,
    eig_backend,
    spectra,
    max_growth=100.0,
):
    act = cfg.activation
    n = X.shape[0]
    dt = W0.dtype
    ck0, ntk0, lr_bound = refs
    record = _record_fn(X, y, Xt, yt, B, W0, ck0, ntk0, v0, cfg, n_top, eig_backend, spectra)
    opt = _make_optimizer(optimizer, lr)
    tp0 = _trainable(W0, v0, cfg.train_v)

    def loss_fn(tp, Xb, yb):
        r = yb - _apply(tp["W"], tp.get("v", v0), Xb, act)
        return 0.5 * jnp.mean(r * r)

    grad_fn = jax.value_and_grad(loss_fn)
    n0 = _tree_norm(tp0)
    size = sum(a.size for a in jax.tree.leaves(tp0))
    growth_bound = max_growth * jnp.where(n0 > 0, n0, jnp.sqrt(jnp.asarray(size, dt)))

    def step(state, _):
        tp, opt_state, t, diverged, first_bad, code = state
        if batch_size is None:
            Xb, yb = X, y
        else:
            idx = jax.random.choice(jax.random.fold_in(key, t), n, (batch_size,), replace=False)
            Xb, yb = X[idx], y[idx]
        loss, g = grad_fn(tp, Xb, yb)
        upd, new_opt = opt.update(g, opt_state, tp)
        new_tp = optax.apply_updates(tp, upd)
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(new_tp)]))
        grown = finite & (_tree_norm(new_tp) > growth_bound)
        bad = ~finite | grown
        ok = ~bad & ~diverged
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        tp = jax.tree.map(keep, new_tp, tp)
        opt_state = jax.tree.map(keep, new_opt, opt_state)
        first = bad & ~diverged
        first_bad = jnp.where(first, t + 1, first_bad)
        code = jnp.where(first, jnp.where(finite, int(Result.diverged), int(Result.nonfinite)), code)
        out_loss = jnp.where(diverged, jnp.nan, loss)
        return (tp, opt_state, t + 1, diverged | bad, first_bad, code.astype(jnp.int32)), out_loss

    scalar = partial(_scalar_like, W0)
    if start is None:
        state = (
            tp0,
            opt.init(tp0),
            scalar(0, jnp.int32),
            scalar(False, jnp.bool_),
            scalar(-1, jnp.int32),
            scalar(int(Result.successful), jnp.int32),
        )
        recs = [jax.tree.map(lambda a: a[None], record(tp0, 0))]
    else:  # resume from the scan state of an earlier run; the first record is the earlier run's last
        tp, opt_state, t, diverged, first_bad, code = start
        state = (
            tp,
            opt_state,
            jnp.asarray(t, jnp.int32),
            jnp.asarray(diverged),
            jnp.asarray(first_bad, jnp.int32),
            jnp.asarray(code, jnp.int32),
        )
        recs = []
    r = steps if record_every is None else record_every
    n_chunks, rem = divmod(steps, r)

    def chunk(state, _):
        state, losses = jax.lax.scan(step, state, None, length=r)
        return state, (record(state[0], state[2]), losses)

    losses = []
    if n_chunks:
        state, (hist, l1) = jax.lax.scan(chunk, state, None, length=n_chunks)
        recs.append(hist)
        losses.append(l1.reshape(-1))
    if rem:
        state, l2 = jax.lax.scan(step, state, None, length=rem)
        recs.append(jax.tree.map(lambda a: a[None], record(state[0], state[2])))
        losses.append(l2)
    history = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *recs)
    tp = state[0]
    params = LWRParams(W=tp["W"], v=tp.get("v", v0), activation=act)
    return TrainResult(
        params=params,
        history=history,
        losses=jnp.concatenate(losses).astype(dt),
        diverged=state[3],
        first_bad_step=state[4],
        lr_bound=lr_bound,
        step=state[2],
        opt_state=state[1],
        result=state[5],
    )


def _resume_state(resume, params: LWRParams, cfg: LWRConfig, optimizer, lr):
    """Validate an earlier :class:`TrainResult` and return ``(trained params dict, optimizer state, step)``."""
    if not isinstance(resume, TrainResult):
        raise TypeError(f"resume must be the TrainResult of an earlier train call, got {type(resume).__name__}.")
    W, v = resume.params.W, resume.params.v
    if W.shape[-2:] != params.W.shape or v.shape[-1:] != params.v.shape:
        raise ValueError(
            f"resume holds W {W.shape} and v {v.shape}; this run trains W {params.W.shape} and "
            f"v {params.v.shape}: resume with the same cfg and initial params."
        )
    if is_concrete(resume.diverged) and np.any(np.asarray(resume.diverged)):
        raise ValueError(
            f"cannot resume a run that diverged (first bad step "
            f"{np.asarray(resume.first_bad_step).max()}); restart with a smaller lr."
        )
    dt = params.W.dtype
    tp = _trainable(W.astype(dt), v.astype(dt), cfg.train_v)
    expected = jax.tree.structure(jax.eval_shape(_make_optimizer(optimizer, lr).init, tp))
    if jax.tree.structure(resume.opt_state) != expected:
        raise ValueError(
            "resume.opt_state does not match this optimizer's state: resume with the optimizer (and "
            "cfg.train_v) of the earlier run."
        )
    return tp, resume.opt_state, resume.step, False, -1, int(Result.successful)


def _result_of(res: TrainResult) -> jax.Array:
    """``res.result``, or for results made before the field existed, ``nonfinite`` where ``diverged``."""
    if res.result is not None:
        return res.result
    return jnp.where(res.diverged, int(Result.nonfinite), int(Result.successful)).astype(jnp.int32)


def _scan_state(res: TrainResult, train_v: bool):
    return (
        _trainable(res.params.W, res.params.v, train_v),
        res.opt_state,
        res.step,
        res.diverged,
        res.first_bad_step,
        _result_of(res),
    )


def concat_results(first: TrainResult, *rest: TrainResult, axis: int = 0) -> TrainResult:
    """Join a run and its resumptions (``train(..., resume=first)``, ...) into one :class:`TrainResult`: histories
    and per-step losses are concatenated along ``axis`` (use ``axis=1`` for results ``vmap``-ed over seeds);
    parameters, optimizer state, step and bound are the last part's, ``diverged`` is any part's,
    ``first_bad_step`` the first diverged part's and ``result`` the worst part's.

    Example:
      >>> from jaxcompare import lwr
      >>> cfg = lwr.LWRConfig(n=64, d=32, h=48)
      >>> data, p = lwr.sample_data(jax.random.key(0), cfg), lwr.init_params(jax.random.key(1), cfg)
      >>> kw = dict(lr=0.2 * 64, record_every=10)
      >>> a = lwr.train(jax.random.key(2), p, data, cfg, steps=20, **kw)
      >>> b = lwr.train(jax.random.key(2), p, data, cfg, steps=20, resume=a, **kw)
      >>> both = lwr.concat_results(a, b)
      >>> both.history.step.tolist(), int(both.step)
      ([0, 10, 20, 30, 40], 40)
    """
    parts = (first, *rest)
    for i, r in enumerate(parts):
        if not isinstance(r, TrainResult):
            raise TypeError(f"part {i} must be a TrainResult, got {type(r).__name__}.")
    diverged, first_bad = parts[0].diverged, parts[0].first_bad_step
    for r in parts[1:]:
        first_bad = jnp.where(diverged, first_bad, r.first_bad_step)
        diverged = diverged | r.diverged
    return dataclasses.replace(
        parts[-1],
        result=worst_result(*(_result_of(r) for r in parts)),
        history=jax.tree.map(lambda *a: jnp.concatenate(a, axis=axis), *(r.history for r in parts)),
        losses=jnp.concatenate([r.losses for r in parts], axis=axis),
        diverged=diverged,
        first_bad_step=first_bad,
    )


def train(
    key,
    params: LWRParams,
    data: LWRData,
    cfg: LWRConfig,
    *,
    optimizer="gd",
    lr=None,
    steps: int,
    batch_size: int | None = None,
    record_every: int | None = None,
    n_top: int = 3,
    eig_backend: str | None = None,
    spectra: bool = True,
    throw: bool = True,
    resume: TrainResult | None = None,
    progress_bar: bool | None = None,
    max_growth: float = 100.0,
) -> TrainResult:
    r"""Train ``W`` (and ``v`` if ``cfg.train_v``) on ``L = ‖y − f(X)‖²/(2n)`` and record spectra.

    One jitted program: the steps run in ``lax.scan`` in chunks of ``record_every``; after each chunk (and at
    initialization, and after the last step) the history records the eigenvalues of ``Σ = WᵀW/h``, the CK and
    the NTK, the alignment of the top eigenvectors of ``Σ`` with ``β``, the norms of the changes since
    initialization and the train/test losses. ``jax.vmap`` over ``key`` (and ``params``/``data``/``lr``) runs
    many seeds or step sizes in one program (pass ``throw=False`` or rely on it being skipped under tracing).
    Across devices and processes (``jax.distributed``), shard the keys: ``jax.jit(jax.vmap(run))(keys)`` with
    ``keys = jax.jit(lambda k: jax.random.split(k, S), out_shardings=NamedSharding(mesh, P("seeds")))(key)`` trains
    each device's seeds on that device, on a mesh with ``Auto`` axes (``jax.sharding.Mesh``) or ``Explicit`` axes
    (``jax.make_mesh``'s default in JAX 0.10; call inside ``jax.set_mesh(mesh)``, which JAX needs to batch the
    program's constants against the sharded seeds; ``jaxcompare.checked`` needs ``Auto`` axes here). A seed's
    result depends only on its key, the backend and the number of seeds each device batches (XLA's CPU matmuls
    round differently for other batch sizes): with the same seeds per device and ``eig_backend`` it is bit-identical
    across process counts.

    Optimizers (optax): ``"gd"`` full-batch gradient descent, ``"sgd"`` minibatch SGD (``batch_size`` required;
    batches of distinct indices drawn from ``key`` at every step; the loss is then the batch mean), ``"adam"``
    (full batch, or minibatch with ``batch_size``), or any ``optax.GradientTransformation`` (``lr`` unused).
    The function-space step is ``(η/n) K``, so full-batch GD is stable for ``η < 2n/λ_max(K)``, reported as
    ``lr_bound``. Divergence is flagged, not left to overflow: an update is a failure when it makes the loss or a
    parameter non-finite (``result = nonfinite``), or when the norm of the trained parameters ``‖θ_t‖_F``
    (``θ = W``, or ``(W, v)`` if ``cfg.train_v``) exceeds ``max_growth · ‖θ_0‖_F`` (``result = diverged``). The
    second rule catches step sizes far above ``lr_bound`` that a bounded activation keeps at a finite, plausible
    loss (``tanh``: ``lr = 10⁴ lr_bound`` ends at a flat loss with ``‖W‖`` grown ~10³-fold); stable and
    edge-of-stability runs grow ``‖W‖`` by a few times at most, so ``max_growth = 100`` leaves a wide margin. A
    failure freezes the parameters at the last update before it and sets ``diverged``, ``first_bad_step`` and
    ``result``; with ``throw=True`` (the package-wide default, :class:`jaxcompare.Result`) an eager call raises
    ``FloatingPointError``, ``throw=False`` returns the flagged result (vmapped runs: check ``result``).

    Long runs can be split and resumed: ``train(key, params, data, cfg, ..., resume=earlier)`` with the same
    ``key``, initial ``params``, ``data``, ``cfg`` and optimizer settings continues from ``earlier``'s parameters,
    optimizer state and step count (minibatches are drawn from ``key`` by global step), so the two results together
    equal one run of the summed length: concatenate them with :func:`concat_results`. The resumed history holds only
    the new records (steps numbered globally); norms of changes are still measured from ``params``.

    Args:
      key: PRNG key (minibatches).
      params: initial :class:`LWRParams` with ``W (h, d)``, ``v (h,)``.
      data: :class:`LWRData` matching ``cfg``.
      cfg: :class:`LWRConfig`.
      optimizer: ``"gd"``, ``"sgd"``, ``"adam"`` or an ``optax.GradientTransformation``.
      lr: step size ``η > 0`` in the units of ``L`` (may be traced, e.g. ``vmap`` over step sizes).
      steps: number of updates (≥ 1).
      batch_size: minibatch size in ``[1, n]``.
      record_every: record every this many steps (default: only at the start and the end).
      n_top: number of top eigenvectors of ``Σ`` whose alignment with ``β`` is recorded.
      eig_backend: ``"lapack"`` (eigenvalues-only LAPACK through a host callback; default on a single CPU device)
        or ``"jax"`` (``jnp.linalg.eigh`` on each device; default on accelerators and whenever there are several
        devices or processes: a callback would funnel every seed through one device). The two agree to rounding;
        for bit-identical runs across device and process counts pass the same backend everywhere.
      spectra: record eigenvalues and alignments (``False``: only norms and losses; the eigenvalue arrays then
        have 0 columns).
      throw: raise ``FloatingPointError`` when training failed (eager calls; under ``jit`` inside
        :func:`jaxcompare.checked`); ``False`` returns the flagged result.
      resume: a :class:`TrainResult` of an earlier call to continue (see above); ``None`` starts from ``params``.
      progress_bar: for eager calls with several records, run one compiled chunk per record and show progress
        (default: on unless ``JAXCOMPARE_PROGRESS=0``); the result is the same. Under ``jit``/``vmap`` the whole
        run is one program and shows none.
      max_growth: divergence bound on ``‖θ_t‖_F / ‖θ_0‖_F`` (``> 1``; ``‖θ_0‖ = 0`` uses ``√(number of
        parameters)``).

    Returns:
      :class:`TrainResult`.

    Raises:
      ValueError: bad arguments, or a run whose ``n × n`` kernels (about 9 matrices of ``n²`` entries at once, with
        the eigendecompositions' workspace) exceed the memory available (``JAXCOMPARE_MEMORY_BUDGET`` when set),
        before any work, with the largest ``n`` that fits.
      FloatingPointError: training diverged (``throw=True``).

    Example:
      >>> from jaxcompare import lwr
      >>> cfg = lwr.LWRConfig(n=64, d=32, h=48)
      >>> data = lwr.sample_data(jax.random.key(0), cfg)
      >>> res = lwr.train(jax.random.key(1), lwr.init_params(jax.random.key(2), cfg), data, cfg, lr=0.2 * 64,
      ...                 steps=20, record_every=10)
      >>> res.history.eig_weights.shape
      (3, 32)
    """
    _check_cfg(cfg)
    key = check_key(key)
    check_fits(cfg, kernels=True)
    params, X, y, Xt, yt, B = _check_model_data(params, data, cfg)
    for name, a in (("params.W", params.W), ("params.v", params.v), ("data.X", X), ("data.y", y)):
        traced_finite(a, name)
    max_growth = float(check_float(max_growth, "max_growth", low=1.0, low_open=True))
    if not isinstance(optimizer, optax.GradientTransformation):
        check_choice(optimizer, "optimizer", OPTIMIZERS)
        if lr is None:
            raise TypeError(f"lr is required for optimizer={optimizer!r}: a positive step size.")
        check_float(lr, "lr", low=0.0, low_open=True)
    steps = check_int(steps, "steps", min=1)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", min=1, max=cfg.n)
    if optimizer == "sgd" and batch_size is None:
        raise ValueError('optimizer="sgd" needs a batch_size (e.g. 32); use optimizer="gd" for full-batch steps.')
    if optimizer == "gd" and batch_size is not None:
        raise ValueError('optimizer="gd" is full-batch; use optimizer="sgd" with batch_size for minibatches.')
    if record_every is not None:
        record_every = check_int(record_every, "record_every", min=1, max=steps)
    n_top = check_int(n_top, "n_top", min=1, max=cfg.d)
    if eig_backend is None:
        eig_backend = default_eig_backend()
    check_choice(eig_backend, "eig_backend", ("lapack", "jax"))
    dt = params.W.dtype
    lr_arr = jnp.asarray(0.0 if lr is None else lr, dt)
    start = None if resume is None else _resume_state(resume, params, cfg, optimizer, lr_arr)
    args = (
        key,
        params.W,
        params.v.astype(dt),
        X.astype(dt),
        y.astype(dt),
        Xt.astype(dt),
        yt.astype(dt),
        B.astype(dt),
        lr_arr,
    )
    refs = _references(params.W, args[2], args[3], cfg=cfg, eig_backend=eig_backend)
    static = dict(
        cfg=cfg,
        optimizer=optimizer,
        batch_size=batch_size,
        n_top=n_top,
        eig_backend=eig_backend,
        spectra=bool(spectra),
        max_growth=max_growth,
    )
    r = steps if record_every is None else record_every
    chunks = [r] * (steps // r) + ([steps % r] if steps % r else [])
    if len(chunks) > 1 and progress_enabled(progress_bar) and all(is_concrete(a) for a in jax.tree.leaves(args)):
        # eager call: one compiled chunk per record, resumed from the previous chunk's scan state (same result as
        # one program), so that a progress bar can follow the run
        parts = []
        for c in progress(chunks, total=len(chunks), desc="lwr.train records", enabled=True):
            parts.append(_train_core(*args, refs, start, steps=c, record_every=c, **static))
            start = _scan_state(parts[-1], cfg.train_v)
        res = concat_results(*parts)
    else:
        res = _train_core(*args, refs, start, steps=steps, record_every=record_every, **static)
    traced_result(res.result, throw, "lwr.train")
    if throw and is_concrete(res.result) and np.any(np.asarray(res.result) != int(Result.successful)):
        bad = np.atleast_1d(np.asarray(res.first_bad_step))
        bound = np.atleast_1d(np.asarray(res.lr_bound))
        worst = Result(int(np.max(np.asarray(res.result))))
        what = (
            "the loss or parameters became non-finite"
            if worst == Result.nonfinite
            else f"the parameters' norm grew past max_growth={max_growth:g} times its initial value"
        )
        raise FloatingPointError(
            f"training diverged: {what} at step {int(bad.max())} of {int(np.max(np.asarray(res.step)))} "
            f"(optimizer={optimizer!r}, lr={lr}). Full-batch GD is stable for lr < 2n/λ_max(K) = "
            f"{float(bound.min()):.4g}; "
            f"lower lr, or pass throw=False to get the flagged result (result, diverged, first_bad_step) "
            f"[result={worst.name}]."
        )
    return res
