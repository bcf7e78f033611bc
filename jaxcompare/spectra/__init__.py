"""jaxcompare.spectra: random-matrix theory for the linear-width regime (host float64 laws, JAX estimators).

- Gaussian constants of an activation (Gauss–Hermite): :func:`gaussian_constants`.
- Marchenko–Pastur law: :func:`mp_support`, :func:`mp_density`, :func:`mp_atom`, :func:`mp_stieltjes`.
- Stieltjes transforms of spectra: :func:`empirical_stieltjes`, :func:`stieltjes_distance`.
- Fan–Wang limiting CK/NTK spectra: :func:`fan_wang_stieltjes`, :func:`fan_wang_density`.
- BBP transition: :func:`bbp_threshold`, :func:`bbp_outlier`, :func:`bbp_alignment`.
- Heavy tails: :func:`powerlaw_fit`, :func:`powerlaw_gof`.
"""
from ._bbp import bbp_alignment, bbp_outlier, bbp_threshold
from ._fan_wang import fan_wang_density, fan_wang_stieltjes
from ._gaussian import GaussianConstants, gaussian_constants
from ._marchenko_pastur import mp_atom, mp_density, mp_stieltjes, mp_support
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
]
