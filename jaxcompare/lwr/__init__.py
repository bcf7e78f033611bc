"""jaxcompare.lwr: the linear-width two-layer simulator (shared/spec/lwr.md), its training, theorem checks and figures.

Model ``f(x) = vᵀφ(Wx/√d)/√h`` trained on ``‖y − f‖²/(2n)``; spectra of ``WᵀW/h``, the CK and the NTK recorded along
training; limiting laws from :mod:`jaxcompare.spectra`.

- Simulator: :class:`LWRConfig`, :func:`sample_data`, :func:`init_params`, :func:`apply`, :func:`kernels`,
  :func:`train` (results :class:`TrainResult`, :class:`History`).
- Theory for a config: :func:`limit_stieltjes`, :func:`limit_density`, :func:`limit_atoms`, :func:`ntk_w_edge`,
  :func:`stable_lr`, :func:`spike_theta`.
- Theorem checks: :func:`check_early_phase` (T1), :func:`check_bulk_invariance` (T2), :func:`check_spike` (T3),
  :func:`check_adam_tails`, :func:`check_init_spectra`, :func:`check_ntk_closed_form`.
- Figures (matplotlib, lazy): :func:`plot_spectra`, :func:`plot_spectra_grid`, :func:`plot_spike_vs_step`,
  :func:`plot_tail_exponents`.
- Which optimizer trained it: :func:`spectral_diagnosis` (a hand-set rule on the final spectra, kept as a baseline;
  the study identifies the optimizer with α̂ against reference pools: :func:`jaxcompare.trimming.identify_recipe`).
"""

from . import _config, _diagnosis, _model, _plots, _theorems, _theory, _train
from ._config import *  # noqa: F401,F403
from ._diagnosis import *  # noqa: F401,F403
from ._model import *  # noqa: F401,F403
from ._plots import *  # noqa: F401,F403
from ._theorems import *  # noqa: F401,F403
from ._theory import *  # noqa: F401,F403
from ._train import *  # noqa: F401,F403

__all__ = [
    *_config.__all__,
    *_model.__all__,
    *_train.__all__,
    *_theory.__all__,
    *_theorems.__all__,
    *_plots.__all__,
    *_diagnosis.__all__,
]
