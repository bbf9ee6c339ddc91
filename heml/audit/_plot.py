"""Figures for an AuditReport (matplotlib, imported only here; no pyplot global state)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ._attacks import ATTACK_TITLES
from ._metrics import FPR_LEVELS, MIN_EXPECTED_FALSE_POSITIVES, dp_max_advantage, dp_tpr_bound

_COLORS = {"threshold": "#7f7f7f", "lira_offline": "#1f77b4", "lira_online": "#d62728"}


def _figure(**kwargs):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("plots need matplotlib: pip install 'heml[audit]'") from exc
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, dpi: int) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _roc_panels(report, fig) -> None:
    n = len(report.models)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, m in zip(axes, report.models, strict=False):
        floor = 1.0
        for name, met in m.attacks.items():
            fpr = np.asarray(met["roc"]["fpr"])
            tpr = np.asarray(met["roc"]["tpr"])
            floor = min(floor, 0.5 / max(met["n_nonmembers"], 1))
            ax.step(
                np.maximum(fpr, floor),
                np.maximum(tpr, floor),
                where="post",
                color=_COLORS.get(name),
                lw=1.4,
                label=f"{ATTACK_TITLES.get(name, name)} (AUC {met['auc']:.3f})",
            )
        grid = np.logspace(math.log10(floor), 0, 400)
        ax.plot(grid, grid, color="black", lw=0.8, ls=":", label="chance")
        if m.private and math.isfinite(m.claimed_epsilon):
            delta = m.claimed_delta or 0.0
            bound = dp_tpr_bound(grid, m.claimed_epsilon, delta)
            ax.fill_between(grid, bound, 1.0, color="#2ca02c", alpha=0.12, lw=0)
            ax.plot(
                grid,
                bound,
                color="#2ca02c",
                lw=1.2,
                label=f"({m.claimed_epsilon:g}, {delta:g})-DP limit",
            )
        for level in FPR_LEVELS:
            ax.axvline(level, color="#bbbbbb", lw=0.6, ls="--")
        n_neg = min(met["n_nonmembers"] for met in m.attacks.values())
        noisy = MIN_EXPECTED_FALSE_POSITIVES / max(n_neg, 1)
        ax.axvspan(
            floor,
            min(noisy, 1.0),
            color="#000000",
            alpha=0.06,
            lw=0,
            label=f"< {MIN_EXPECTED_FALSE_POSITIVES} non-members: noisy",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1.0)
        ax.set_ylim(floor, 1.05)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        title = m.label
        lb = m.summary["epsilon_lower_bound"]  # the strongest canary's
        if lb is not None:
            title += f"   ε_LB={lb:.2f}"
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(
        "Membership inference, log-log ROC (shaded: unreachable under the claimed DP guarantee)",
        fontsize=11,
    )


def _eps_positions(models) -> tuple[np.ndarray, list[str]]:
    finite = [m.claimed_epsilon for m in models if math.isfinite(m.claimed_epsilon)]
    x_inf = max(finite) * 4 if finite else 1.0
    xs = np.array(
        [m.claimed_epsilon if math.isfinite(m.claimed_epsilon) else x_inf for m in models]
    )
    labels = [f"{m.claimed_epsilon:g}" if math.isfinite(m.claimed_epsilon) else "∞" for m in models]
    return xs, labels


def _pu_panels(report, fig) -> None:
    models = sorted(report.models, key=lambda m: m.claimed_epsilon)
    xs, labels = _eps_positions(models)
    ax_u, ax_a, ax_t, ax_e = fig.subplots(1, 4)
    for ax in (ax_u, ax_a, ax_t, ax_e):
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels)
        ax.minorticks_off()
        ax.set_xlabel("claimed ε")
    metric = models[0].utility_metric
    ax_u.plot(xs, [m.utility_test for m in models], "o-", label="test")
    ax_u.plot(xs, [m.utility_train for m in models], "s--", alpha=0.7, label="train")
    ax_u.set_ylabel(metric)
    ax_u.set_title("utility", fontsize=10)
    ax_u.legend(fontsize=8)

    def series(metric_name, level=None):
        vals, lo, hi = [], [], []
        for m in models:
            _, v, ci = m.strongest(metric_name, level)
            vals.append(v)
            lo.append(v - ci[0] if ci else 0.0)
            hi.append(ci[1] - v if ci else 0.0)
        return np.array(vals), np.array([np.maximum(lo, 0), np.maximum(hi, 0)])

    v, err = series("auc")
    ax_a.errorbar(xs, v, yerr=err, fmt="o-", capsize=3, label="AUC")
    v, err = series("advantage")
    ax_a.errorbar(xs, v, yerr=err, fmt="s-", capsize=3, label="advantage")
    bound = [
        dp_max_advantage(m.claimed_epsilon, m.claimed_delta or 0.0) if m.private else np.nan
        for m in models
    ]
    ax_a.plot(xs, bound, ls=":", color="#2ca02c", label="DP limit on advantage")
    ax_a.axhline(0.5, color="black", lw=0.6, ls=":")
    ax_a.set_ylim(0, 1)
    ax_a.set_title("strongest attack (95% CI)", fontsize=10)
    ax_a.legend(fontsize=8)

    floor = 1.0
    for level, fmt in zip(FPR_LEVELS, ("o-", "^-"), strict=True):
        v, err = series("tpr_at_fpr", level)
        floor = min(floor, level / 3)
        ax_t.errorbar(
            xs, np.maximum(v, floor), yerr=err, fmt=fmt, capsize=3, label=f"TPR @ {level:.1%} FPR"
        )
        ax_t.axhline(level, color="#bbbbbb", lw=0.8, ls=":")
    ax_t.set_yscale("log")
    ax_t.set_ylim(floor, 1.0)
    ax_t.set_title("TPR at low FPR (dotted: chance)", fontsize=10)
    ax_t.legend(fontsize=8)

    audited = [
        (x, m.summary)
        for x, m in zip(xs, models, strict=True)
        if m.summary["epsilon_lower_bound"] is not None
    ]
    if audited:
        ax_e.plot(
            [x for x, _ in audited],
            [s["epsilon_lower_bound"] for _, s in audited],
            "o-",
            color="#d62728",
            label="ε lower bound",
        )
        ax_e.plot(
            [x for x, _ in audited],
            [s["epsilon_lower_bound_ceiling"] for _, s in audited],
            color="#bbbbbb",
            ls="--",
            label="ceiling (runs)",
        )
        fin = [x for x, s in audited if s["claimed_epsilon"] is not None]
        if fin:
            ax_e.plot(fin, fin, color="black", lw=0.8, ls=":", label="claimed ε")
        ax_e.set_yscale("symlog", linthresh=0.1)
        ax_e.legend(fontsize=8)
    ax_e.set_ylabel("ε")
    ax_e.set_title("DP audit (canary)", fontsize=10)
    fig.suptitle("Privacy–utility trade-off", fontsize=11)


def plot_roc(report, path, *, dpi: int = 120) -> Path:
    n = len(report.models)
    ncols, nrows = min(n, 3), math.ceil(n / 3)
    fig = _figure(figsize=(4.2 * ncols, 3.9 * nrows), layout="constrained")
    _roc_panels(report, fig)
    return _save(fig, path, dpi)


def plot_privacy_utility(report, path, *, dpi: int = 120) -> Path:
    fig = _figure(figsize=(16, 3.8), layout="constrained")
    _pu_panels(report, fig)
    return _save(fig, path, dpi)


def plot_report(report, path, *, dpi: int = 120) -> Path:
    n = len(report.models)
    rows = math.ceil(n / 3)
    fig = _figure(figsize=(16, 3.9 * rows + 4.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.9 * rows, 4.0])
    _roc_panels(report, top)
    _pu_panels(report, bottom)
    return _save(fig, path, dpi)
