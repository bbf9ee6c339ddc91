"""Privacy audit: what a DP model leaks compared with the same model trained without privacy.

Trains heml.dp.DPLogisticRegression at ε = 0.5, 1, 2, 5 and without privacy (ε = ∞) on the
breast-cancer data, attacks every model with membership inference (LOSS threshold, LiRA offline
and online, 64 shadow models per ε) and audits each DP claim with a canary over 1000 training runs
per world. Then it attaches the ε = 1 audit to the exported model, as a provider would before
serving it.

    python examples/privacy_audit.py                 # 10 330 fits: 89–146 s on a busy 2-core box
    python examples/privacy_audit.py --overfit       # also: a small, wide dataset that memorises
    python examples/privacy_audit.py --quick         # 16 shadows, 200 canary runs

Writes audit.json, summary.md, audit.png, roc.png and privacy_utility.png under
out/privacy_audit/ (and out/privacy_audit_overfit/), and the model out/breast_cancer_dp1.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import heml
from heml.audit import audit

try:
    from heml.dp import DPLogisticRegression
except ImportError:  # pragma: no cover
    sys.exit("this example needs heml.dp (the DP estimators)")

EPSILONS = (0.5, 1.0, 2.0, 5.0, math.inf)
DELTA = 1e-5


def public_bounds(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature bounds, standing in for ranges a provider knows from the domain.

    They are read from the data here and rounded outward; in production they must come from
    domain knowledge (a data dictionary, sensor ranges), or reading them leaks what ε does not
    cover. The audit cannot see that leak: it happens once, outside the training runs.
    """
    lo, hi = X.min(axis=0), X.max(axis=0)
    step = 10.0 ** np.floor(np.log10(np.maximum(hi - lo, 1e-12)))
    return np.floor(lo / step) * step, np.ceil(hi / step) * step


def run(name, X, y, out: Path, *, n_shadow: int, canary_runs: int, baseline=None, seed: int = 0):
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    bounds = public_bounds(X)

    def make_estimator(epsilon):
        if math.isinf(epsilon) and baseline is not None:
            return baseline()
        return DPLogisticRegression(epsilon=epsilon, delta=DELTA, classes=[0, 1], bounds_X=bounds)

    start = time.perf_counter()
    report = audit(
        make_estimator,
        Xtr,
        ytr,
        Xte,
        yte,
        epsilons=EPSILONS,
        n_shadow=n_shadow,
        canaries=True,
        canary_runs=canary_runs,
        random_state=seed,
        n_jobs=-1,
    )
    elapsed = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / "audit.json")
    report.plot(out / "audit.png")
    report.plot_roc(out / "roc.png")
    report.plot_privacy_utility(out / "privacy_utility.png")
    figures = {"ROC per model": "roc.png", "Privacy–utility": "privacy_utility.png"}
    (out / "summary.md").write_text(report.to_markdown(figures=figures))

    print(f"\n{name}: {Xtr.shape[0]} training records, {X.shape[1]} features ({elapsed:.0f} s)")
    print(
        f"{'model':<20} {'accuracy':>8} {'AUC':>6} {'TPR@1%':>7} {'TPR@.1%':>8} {'ε LB':>6}  audit"
    )
    for m in report.models:
        s = m.summary
        print(
            f"{m.label:<20} {m.utility_test:>8.3f} {s['auc']:>6.3f} {s['tpr_at_fpr_0.01']:>7.3f} "
            f"{s['tpr_at_fpr_0.001']:>8.3f} {s['epsilon_lower_bound']:>6.2f}  {s['audit']}"
        )
    print(f"wrote {out}/audit.json, summary.md and the figures")
    return report, (Xtr, ytr, bounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 shadows, 200 canary runs")
    parser.add_argument("--overfit", action="store_true", help="also audit a wide, small dataset")
    parser.add_argument("--out", default="out", help="output directory (default: out)")
    args = parser.parse_args()
    n_shadow, canary_runs = (16, 200) if args.quick else (64, 1000)
    root = Path(args.out)

    X, y = load_breast_cancer(return_X_y=True)
    report, (Xtr, ytr, bounds) = run(
        "breast_cancer", X, y, root / "privacy_audit", n_shadow=n_shadow, canary_runs=canary_runs
    )

    # the provider's side: fit the model to serve, attach its audit, save the artifact
    model = DPLogisticRegression(epsilon=1.0, delta=DELTA, classes=[0, 1], bounds_X=bounds)
    model.fit(Xtr, ytr)
    artifact = report.attach(heml.export(model, name="breast_cancer_dp1"))
    path = artifact.save(root / "breast_cancer_dp1.json")
    a = artifact.audit
    print(
        f"attached to {path}: claimed ε={a['claimed_epsilon']:g}, ε lower bound "
        f"{a['epsilon_lower_bound']:.2f} ({a['audit']}), AUC {a['auc']:.3f}"
    )

    if args.overfit:
        # separable data: the unpenalised maximum-likelihood fit (DPLogisticRegression at ε=∞)
        # does not exist, so the non-private baseline is scikit-learn's, weakly regularised
        Xo, yo = make_classification(
            n_samples=300, n_features=100, n_informative=10, random_state=0
        )
        run("overfit (n=210, d=100)", Xo, yo, root / "privacy_audit_overfit",
            n_shadow=n_shadow, canary_runs=canary_runs,
            baseline=lambda: LogisticRegression(C=100.0, solver="newton-cholesky"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
