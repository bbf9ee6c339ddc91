"""heml.dp: linear and logistic models trained with differential privacy.

Estimators follow scikit-learn's API and carry their guarantee in ``dp_guarantee_``, which
``heml.export`` writes into the model file. Neighbouring relation everywhere: replace-one.
"""

from ._accountant import BudgetAccountant, BudgetError, PrivacyLeakWarning
from ._linear import DPLinearRegression
from ._logistic import ConvergenceError, DPLogisticRegression

__all__ = [
    "BudgetAccountant",
    "BudgetError",
    "ConvergenceError",
    "DPLinearRegression",
    "DPLogisticRegression",
    "PrivacyLeakWarning",
]
