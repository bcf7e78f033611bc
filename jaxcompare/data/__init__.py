"""jaxcompare.data: built-in data and models for the main job, the notebooks and examples.

- :func:`digits_task`: scikit-learn's bundled digits (binary even/odd or 10 classes), split into train and test.
- :func:`make_mlp`, :func:`mlp_feature_fns`: a small flax MLP and its logits / last features / every layer.
- :class:`Recipe`, :data:`RECIPES`, :func:`train_ensemble`: many models of several training recipes in one program.
- :func:`mnist1d_task`: MNIST-1D (Greydanus 2020) generated offline by the ``mnist1d`` package;
  :func:`make_mnist1d_model`: its MLP, 1-D CNN and GRU (:data:`ARCHITECTURES`, :data:`PAPER_ACCURACY`).

These need the demo extras (``pip install 'jaxcompare[demo]'``: flax, scikit-learn, mnist1d), imported when called.
"""

from ._digits import DigitsTask, digits_task
from ._mlp import RECIPES, Recipe, make_mlp, mlp_feature_fns, train_ensemble
from ._mnist1d import ARCHITECTURES, PAPER_ACCURACY, MNIST1DTask, make_mnist1d_model, mnist1d_task

__all__ = [
    "digits_task",
    "DigitsTask",
    "make_mlp",
    "mlp_feature_fns",
    "Recipe",
    "RECIPES",
    "train_ensemble",
    "mnist1d_task",
    "MNIST1DTask",
    "make_mnist1d_model",
    "ARCHITECTURES",
    "PAPER_ACCURACY",
]
