"""jaxcompare.data: built-in data and models for the main job, the notebooks and examples.

- :func:`digits_task`: scikit-learn's bundled digits (binary even/odd or 10 classes), split into train and test.
- :func:`make_mlp`, :func:`mlp_feature_fns`: a small flax MLP and its logits / last features / every layer.
- :class:`Recipe`, :data:`RECIPES`, :func:`train_ensemble`: many models of several training recipes in one program.

These need the demo extras (``pip install 'jaxcompare[demo]'``: flax, scikit-learn), imported when called.
"""

from ._digits import DigitsTask, digits_task
from ._mlp import RECIPES, Recipe, make_mlp, mlp_feature_fns, train_ensemble

__all__ = ["digits_task", "DigitsTask", "make_mlp", "mlp_feature_fns", "Recipe", "RECIPES", "train_ensemble"]
