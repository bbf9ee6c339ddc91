"""heml.audit: membership-inference attacks, canary-based DP auditing and a privacy report.

Usage (``make_estimator(epsilon)`` returns an unfitted estimator; ``inf`` = non-private)::

    from heml.audit import audit
    report = audit(make_estimator, X_train, y_train, X_test, y_test, n_shadow=64, canaries=True)
    report.save("audit.json"); report.plot("audit.png"); report.attach(model)

Convention everywhere: attack scores are "higher = more likely a member", and members are the
positive class. Plots need matplotlib (``pip install 'heml[audit]'``); nothing else here does.
"""

from .._lazy import lazy_attributes

# submodules pull in scikit-learn and scipy: load them on first use (fast `heml` CLI start)
_LAZY = {
    "ATTACKS": "._attacks",
    "AuditReport": "._report",
    "Canary": "._dp_audit",
    "CanaryAudit": "._audit",
    "EpsilonLowerBound": "._dp_audit",
    "FPR_LEVELS": "._metrics",
    "ModelAudit": "._report",
    "NoisySumClassifier": "._mechanisms",
    "RELEASE_CANARIES": "._release",
    "Roc": "._metrics",
    "THREAT_MODEL": "._report",
    "analytic_gaussian_sigma": "._mechanisms",
    "attack_metrics": "._metrics",
    "audit": "._audit",
    "balanced_keep": "._attacks",
    "canary_audit": "._audit",
    "cp_lower": "._dp_audit",
    "cp_upper": "._dp_audit",
    "dp_max_advantage": "._metrics",
    "dp_tpr_bound": "._metrics",
    "epsilon_lower_bound": "._dp_audit",
    "extreme_canary": "._release",
    "gaussian_delta": "._mechanisms",
    "label_canary": "._release",
    "leave_one_out_scores": "._attacks",
    "lira": "._attacks",
    "make_canary": "._dp_audit",
    "membership_signal": "._signals",
    "plant": "._dp_audit",
    "release_statistic": "._release",
    "roc_curve": "._metrics",
}

__all__ = [
    "ATTACKS",
    "FPR_LEVELS",
    "RELEASE_CANARIES",
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
    "extreme_canary",
    "gaussian_delta",
    "label_canary",
    "leave_one_out_scores",
    "lira",
    "make_canary",
    "membership_signal",
    "plant",
    "release_statistic",
    "roc_curve",
]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
