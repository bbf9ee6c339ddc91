"""heml.dp: linear and logistic models trained with differential privacy.

Estimators follow scikit-learn's API and carry their guarantee in ``dp_guarantee_``, which
``heml.export`` writes into the model file. Neighbouring relation everywhere: replace-one.
"""

from ._accountant import BudgetAccountant, BudgetError, PrivacyLeakWarning

# the estimators pull in scipy and dp-accounting: load them on first use so that importing
# heml.dp.cli (for the `heml` command line) stays fast
_LAZY = {
    "DPLinearRegression": "._linear",
    "DPLogisticRegression": "._logistic",
    "ConvergenceError": "._logistic",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'heml.dp' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BudgetAccountant",
    "BudgetError",
    "ConvergenceError",
    "DPLinearRegression",
    "DPLogisticRegression",
    "PrivacyLeakWarning",
]
