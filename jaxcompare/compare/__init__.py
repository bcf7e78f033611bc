"""jaxcompare.compare: compare your own trained models — checkpoints in, a table, findings and a report out.

* :func:`load_checkpoint` / :func:`load_checkpoints` read orbax, flax msgpack, safetensors and ``.npz``
  checkpoints (never pickle) and check that all models share one architecture; :func:`save_params` writes
  ``.npz``/``.safetensors``.
* :func:`compare_models` computes accuracy, churn, ECE and α̂ (published bootstrap protocol) of every model against
  a reference group (or leave-one-out), the debiased CKA between the models' kernels with permutation p-values,
  kernel GLM surrogates of each model with their faithfulness and top training-point attributions (with training
  data), per-layer weight spectra, names the atypical models and says which statistics agree;
  :func:`jaxcompare.metrics.logit_scores` turns multiclass logits into the scalar scores α̂ compares.
* The :class:`ComparisonResult` has a tidy table (``.rows``, ``.to_dict()``, ``.to_pandas()``), ``.save(dir)`` /
  :func:`load_comparison` (JSON + ``.npz``) and ``.report(dir)`` (self-contained HTML, ``results.json``,
  ``models.csv``, figures).
"""

from ._checkpoints import CHECKPOINT_FORMATS, load_checkpoint, load_checkpoints, save_params
from ._compare import SECTIONS, compare_models
from ._result import ComparisonResult, load_comparison

__all__ = [
    "compare_models",
    "ComparisonResult",
    "load_comparison",
    "load_checkpoint",
    "load_checkpoints",
    "save_params",
    "SECTIONS",
    "CHECKPOINT_FORMATS",
]
