"""heml.audit: membership-inference attacks, canary-based DP auditing and a privacy report.

Usage (``make_estimator(epsilon)`` returns an unfitted estimator; ``inf`` = non-private)::

    from heml.audit import audit
    report = audit(make_estimator, X_train, y_train, X_test, y_test, n_shadow=64, canaries=True)
    report.save("audit.json"); report.plot("audit.png"); report.attach(model)

Convention everywhere: attack scores are "higher = more likely a member", and members are the
positive class. Plots need matplotlib (``pip install 'heml[audit]'``); nothing else here does.
"""

from ._attacks import ATTACKS, balanced_keep, leave_one_out_scores, lira
from ._audit import CanaryAudit, audit, canary_audit
from ._dp_audit import (
    Canary,
    EpsilonLowerBound,
    cp_lower,
    cp_upper,
    epsilon_lower_bound,
    make_canary,
    plant,
)
from ._mechanisms import NoisySumClassifier, analytic_gaussian_sigma, gaussian_delta
from ._metrics import (
    FPR_LEVELS,
    Roc,
    attack_metrics,
    dp_max_advantage,
    dp_tpr_bound,
    roc_curve,
)
from ._report import THREAT_MODEL, AuditReport, ModelAudit
from ._signals import membership_signal

__all__ = [
    "ATTACKS",
    "FPR_LEVELS",
    "THREAT_MODEL",
    "AuditReport",
    "Canary",
    "CanaryAudit",
    "EpsilonLowerBound",
    "ModelAudit",
    "NoisySumClassifier",
    "Roc",
    "analytic_gaussian_sigma",
    "attack_metrics",
    "audit",
    "balanced_keep",
    "canary_audit",
    "cp_lower",
    "cp_upper",
    "dp_max_advantage",
    "dp_tpr_bound",
    "epsilon_lower_bound",
    "gaussian_delta",
    "leave_one_out_scores",
    "lira",
    "make_canary",
    "membership_signal",
    "plant",
    "roc_curve",
]
