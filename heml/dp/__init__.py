"""heml.dp: linear and logistic models trained with differential privacy.

Estimators follow scikit-learn's API and carry their guarantee in ``dp_guarantee_``, which
``heml.export`` writes into the model file. Neighbouring relation everywhere: replace-one.
"""

from .._lazy import lazy_attributes
from ._accountant import BudgetAccountant, BudgetError, PrivacyLeakWarning
from ._warnings import BoundsWarning

# the estimators pull in scipy and dp-accounting: load them on first use so that importing
# heml.dp.cli (for the `heml` command line) stays fast
_LAZY = {
    "DPLinearRegression": "._linear",
    "DPLogisticRegression": "._logistic",
    "ConvergenceError": "._logistic",
    "PrivateBounds": "._private_bounds",
}

__all__ = [
    "BoundsWarning",
    "BudgetAccountant",
    "BudgetError",
    "ConvergenceError",
    "DPLinearRegression",
    "DPLogisticRegression",
    "PrivacyLeakWarning",
    "PrivateBounds",
]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
