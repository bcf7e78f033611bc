"""jaxcompare.spectra: random-matrix theory for the linear-width regime (host float64 laws, JAX estimators).

- Gaussian constants of an activation (Gauss–Hermite): :func:`gaussian_constants`.
- Marchenko–Pastur law: :func:`mp_support`, :func:`mp_density`, :func:`mp_atom`, :func:`mp_stieltjes`.
- Stieltjes transforms of spectra: :func:`empirical_stieltjes`, :func:`stieltjes_distance`.
- Fan–Wang limiting CK/NTK spectra: :func:`fan_wang_stieltjes`, :func:`fan_wang_density`.
- BBP transition: :func:`bbp_threshold`, :func:`bbp_outlier`, :func:`bbp_alignment`.
- Heavy tails: :func:`powerlaw_fit`, :func:`powerlaw_gof`.
- Per-layer analysis of a model's weights: :func:`analyze_params` (MP bulk fit :func:`mp_bulk_fit`, outliers,
  power-law tail, stable rank), :func:`report_rows`, :func:`format_report`, :func:`plot_layer_spectra`;
  figures per layer group (:func:`layer_groups`, :func:`plot_layer_groups`) and of every layer at once
  (:func:`plot_layer_overview`).
"""

from ._bbp import bbp_alignment, bbp_outlier, bbp_threshold
from ._fan_wang import fan_wang_density, fan_wang_stieltjes
from ._gaussian import GaussianConstants, gaussian_constants
from ._layer_plots import group_file_name, layer_groups, plot_layer_groups, plot_layer_overview, plot_layer_spectra
from ._layers import LayerSpectra, analyze_params, format_report, report_rows
from ._marchenko_pastur import mp_atom, mp_density, mp_stieltjes, mp_support
from ._mp_fit import MPBulkFit, mp_bulk_fit, mp_median
from ._powerlaw import PowerLawFit, PowerLawGOF, powerlaw_fit, powerlaw_gof
from ._stieltjes import empirical_stieltjes, stieltjes_distance

__all__ = [
    "GaussianConstants",
    "gaussian_constants",
    "mp_support",
    "mp_density",
    "mp_atom",
    "mp_stieltjes",
    "empirical_stieltjes",
    "stieltjes_distance",
    "fan_wang_stieltjes",
    "fan_wang_density",
    "bbp_threshold",
    "bbp_outlier",
    "bbp_alignment",
    "PowerLawFit",
    "PowerLawGOF",
    "powerlaw_fit",
    "powerlaw_gof",
    "MPBulkFit",
    "mp_bulk_fit",
    "mp_median",
    "LayerSpectra",
    "analyze_params",
    "report_rows",
    "format_report",
    "plot_layer_spectra",
    "layer_groups",
    "plot_layer_groups",
    "plot_layer_overview",
    "group_file_name",
]
