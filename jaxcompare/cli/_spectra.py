"""``jaxcompare spectra``: per-layer weight spectra of one checkpoint (:func:`jaxcompare.spectra.analyze_params`)."""

from __future__ import annotations

import json
import os

from ._io import CLIError, check_output_dir

__all__ = ["add_layout_arguments", "add_parser", "cmd_spectra"]


def add_layout_arguments(parser, *, defaults: bool = True) -> None:
    """``--conv``, ``--heads``, ``--stacked``: how the weight tensors are read as matrices (``spectra``, and the
    spectra section of ``compare``, where they default to ``None``: a flag given without that section is refused)."""
    parser.add_argument(
        "--conv",
        choices=["flatten", "slices"],
        default="flatten" if defaults else None,
        help="convolution kernels as one patch matrix (flatten, the default) or pooled (cin, cout) slices",
    )
    parser.add_argument(
        "--heads",
        choices=["merge", "split"],
        default="merge" if defaults else None,
        help="attention kernels with a heads axis ((d, heads, head_dim), flax DenseGeneral) as one map d -> "
        "heads·head_dim (merge, the default) or pooled per-head matrices (split)",
    )
    parser.add_argument(
        "--stacked",
        default=None,
        metavar="REGEX",
        help="parameters stacked over layers by nn.scan/nnx.scan (axis 0 is the layer), as a regular expression "
        "searched in each path (e.g. ScanBlock): each layer is analysed on its own, path[j]",
    )


def add_parser(sub, *, parents, formatter_class, seed_type, positive_int) -> None:
    """Add the ``spectra`` sub-command."""
    s = sub.add_parser(
        "spectra",
        parents=parents,
        formatter_class=formatter_class,
        help="per-layer weight spectra of a checkpoint (Marchenko–Pastur fit, outliers, power-law tails)",
        description="Reads one checkpoint (orbax directory, flax msgpack, .safetensors or .npz with '/'-joined "
        "names; never pickle) and analyses every weight matrix: eigenvalues of WᵀW/N, Marchenko–Pastur bulk fit, "
        "outliers above its edge, power-law tail (α, xmin, KS distance, standard error, bootstrap p-value) and "
        "stable rank. Prints one row per layer; with --out also writes spectra.json (every number and setting), "
        "spectra.png (every layer's α, stable rank and outliers on one figure) and one figure of eigenvalue "
        "histograms with their fits per layer group, spectra_<group>.png (convolutions by output channels, "
        "attention, MLP, embeddings, other dense layers; jaxcompare.spectra.layer_groups documents the rule).",
    )
    s.add_argument("--checkpoint", required=True, help="checkpoint file or directory")
    add_layout_arguments(s)
    s.add_argument("--n-boot", type=positive_int, default=100, help="bootstrap rounds of the power-law p-value")
    s.add_argument("--seed", type=seed_type, default=0, help="PRNG seed of the bootstrap")
    s.add_argument("--out", default=None, help="output directory for spectra.json and the figures")


def cmd_spectra(args) -> int:
    from .._validation import key_from_seed
    from ..compare import load_checkpoint
    from ..compare._result import to_jsonable
    from ..spectra import analyze_params, format_report
    from ..spectra._layer_plots import group_file_name, plot_layer_groups, plot_layer_overview

    if args.out is not None:
        check_output_dir(args.out)
    if not os.path.exists(args.checkpoint):
        raise CLIError(f"--checkpoint: no such file or directory: {args.checkpoint}")
    params = load_checkpoint(args.checkpoint)
    res = analyze_params(
        key_from_seed(args.seed), params, conv=args.conv, heads=args.heads, stacked=args.stacked, n_boot=args.n_boot
    )
    print(format_report(res))
    if args.out is not None:
        data = res.to_dict()
        data["settings"] = dict(
            data.get("settings", {}),
            checkpoint=os.path.abspath(args.checkpoint),
            seed=args.seed,
            conv=args.conv,
            heads=args.heads,
            stacked=args.stacked,
            n_boot=args.n_boot,
        )
        with open(os.path.join(args.out, "spectra.json"), "w") as f:  # strict JSON: NaN (no fit) as null
            json.dump(to_jsonable(data), f, indent=1, allow_nan=False)
        from .._optional import optional_import

        plt = optional_import("matplotlib.pyplot", purpose="the figures of jaxcompare spectra --out")
        plt.close(plot_layer_overview(res, path=os.path.join(args.out, "spectra.png")))
        figs = plot_layer_groups(res, directory=args.out)
        for fig in figs.values():
            plt.close(fig)
        names = ", ".join(group_file_name(label) for label in figs)
        print(f"wrote {os.path.join(args.out, 'spectra.json')}, spectra.png (all layers) and per group: {names}")
    return 0
