"""The audit report: per-model results, JSON (strict, versioned), Markdown, figures, attach()."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._files import write_atomically
from ._attacks import ATTACK_TITLES
from ._metrics import FPR_LEVELS, dp_max_advantage

SCHEMA = "heml.audit-report"
SCHEMA_VERSION = 1
MODEL_SUMMARY_SCHEMA = "heml.audit-summary"

THREAT_MODEL = {
    "adversary": (
        "A black-box client of the service: it queries the model on inputs of its choice, "
        "including the training records and a planted canary, and sees the decrypted score "
        "(the logit or linear output) of each query. CKKS adds ~1e-6 of error, so auditing the "
        "plaintext model is faithful."
    ),
    "audited": (
        "The training procedure make_estimator(ε).fit on this data, under the replace-one "
        "neighbouring relation (the canary replaces a training record)."
    ),
    "dp_covers": (
        "Everything computed from a DP model, for any number of queries: scores, predictions "
        "and the weights themselves are post-processing of the (ε, δ)-DP release."
    ),
    "dp_does_not_cover": (
        "Model extraction: d+1 queries determine a linear model, so a client can copy it (a "
        "rate-limit and model-privacy concern, not a training-data one). Preprocessing, feature "
        "bounds or hyperparameters fitted on the private data outside the estimator's fit: the "
        "audit re-runs only what happens inside fit, so such leaks are invisible to it unless "
        "they are inside make_estimator. Nor this report: it is computed from the private data "
        "without DP (treat it, and above all its per-record table, as private); the summary "
        "attached to a served model discloses a few aggregates (AUC, TPR, ε lower bound)."
    ),
    "interpretation": (
        "The ε lower bound is a statistical test, not a proof: a bound at or below the claimed "
        "ε is consistent with the claim (black-box audits of real mechanisms are loose); a "
        "bound above it means, at the stated confidence, that the mechanism does not meet its "
        "claim. Attack metrics are measured on models trained on half of the audit pool."
    ),
}


def _fmt_level(level: float) -> str:
    return f"{level * 100:g}%"


@dataclass
class ModelAudit:
    """Everything measured for one ε."""

    label: str
    requested_epsilon: float
    claimed_epsilon: float
    claimed_delta: float | None
    private: bool
    claim_source: str
    estimator: str
    dp_guarantee: dict | None
    utility_metric: str
    utility_train: float
    utility_test: float
    attacks: dict[str, dict]
    lira_fix_variance: bool
    canary: dict | None
    vulnerable: list[dict] = field(default_factory=list)
    vulnerable_null_max_effect: float = math.nan
    warnings: dict[str, int] = field(default_factory=dict)
    fit_seconds: float = 0.0
    # the label-set and extreme-record canaries (heml.audit._release), by name
    release_canaries: dict[str, dict] | None = None

    def _canaries(self) -> dict[str, dict]:
        """Every canary result by name: "margin" first, then the release canaries."""
        out = {} if self.canary is None else {"margin": self.canary}
        out.update(self.release_canaries or {})
        return out

    def strongest(self, metric: str, level: float | None = None) -> tuple[str, float, list | None]:
        """(attack, value, CI) of the attack with the highest ``metric`` (worst case)."""
        best = None
        for name, met in self.attacks.items():
            if level is None:
                value, ci = met[metric], met.get(f"{metric}_ci")
            else:
                value = met["tpr_at_fpr"][level]
                ci = (met.get("tpr_at_fpr_ci") or {}).get(level)
            if best is None or value > best[1]:
                best = (name, value, ci)
        if best is None:
            raise ValueError(f"{self.label}: no attack results")
        return best

    @property
    def audit_status(self) -> str:
        """ "FAILED" if any canary's ε lower bound exceeds the claim, else "passed" (or "not
        run", "not private")."""
        canaries = self._canaries()
        if not canaries:
            return "not run"
        verdicts = [c.get("passed") for c in canaries.values()]
        if all(v is None for v in verdicts):
            return "not private"
        return "FAILED" if False in verdicts else "passed"

    @property
    def summary(self) -> dict:
        """Headline numbers (JSON-safe; the strongest attack per metric)."""
        auc_attack, auc, _ = self.strongest("auc")
        adv_attack, adv, _ = self.strongest("advantage")
        out: dict[str, Any] = {
            "label": self.label,
            "private": self.private,
            "claimed_epsilon": None if math.isinf(self.claimed_epsilon) else self.claimed_epsilon,
            "claimed_delta": self.claimed_delta,
            "utility_metric": self.utility_metric,
            "utility_test": self.utility_test,
            "auc": auc,
            "auc_attack": auc_attack,
            "advantage": adv,
            "advantage_attack": adv_attack,
            "advantage_dp_bound": (
                dp_max_advantage(self.claimed_epsilon, self.claimed_delta or 0.0)
                if self.private
                else None
            ),
        }
        for level in FPR_LEVELS:
            name, value, _ = self.strongest("tpr_at_fpr", level)
            out[f"tpr_at_fpr_{level:g}"] = value
            out[f"tpr_at_fpr_{level:g}_attack"] = name
        canaries = self._canaries()
        if canaries:
            # the strongest canary (the margin canary on ties)
            name = max(canaries, key=lambda k: canaries[k]["epsilon_lb"])
            best = canaries[name]
            out["epsilon_lower_bound"] = best["epsilon_lb"]
            out["epsilon_lower_bound_canary"] = name
            out["epsilon_lower_bound_delta"] = best["delta"]
            out["epsilon_lower_bound_confidence"] = best["confidence"]
            out["epsilon_lower_bound_ceiling"] = best["ceiling"]
            if self.release_canaries:
                out["release_epsilon_lower_bounds"] = {
                    k: v["epsilon_lb"] for k, v in self.release_canaries.items()
                }
        else:
            out["epsilon_lower_bound"] = None
        out["audit"] = self.audit_status
        return out


@dataclass
class AuditReport:
    """Result of :func:`heml.audit.audit`.

    Attributes
    ----------
    models : list of ModelAudit
        One entry per audited ε, in the order given.
    config, data, threat_model : dict
        How the audit ran, what data it saw, and what it does and does not cover.
    """

    models: list[ModelAudit]
    config: dict
    data: dict
    threat_model: dict
    created: str
    heml_version: str
    wall_seconds: float = 0.0

    # ------------------------------------------------------------------ views
    @property
    def summary(self) -> dict:
        """Headline numbers for every model, and whether every private model passed."""
        statuses = [m.audit_status for m in self.models]
        failed = [m.label for m in self.models if m.audit_status == "FAILED"]
        checked = [s for s in statuses if s in ("passed", "FAILED")]
        return {
            "created": self.created,
            "audit_passed": (not failed) if checked else None,
            "failed_models": failed,
            "confidence": self.config.get("confidence"),
            "models": [m.summary for m in self.models],
        }

    @property
    def passed(self) -> bool | None:
        """False if some private model's ε lower bound exceeds its claim; None if none checked."""
        return self.summary["audit_passed"]

    def model(self, epsilon: float) -> ModelAudit:
        """The entry audited at (requested or claimed) ``epsilon``."""
        for m in self.models:
            for e in (m.requested_epsilon, m.claimed_epsilon):
                if e == epsilon or (
                    math.isfinite(e) and math.isfinite(epsilon) and math.isclose(e, epsilon)
                ):
                    return m
        have = ", ".join(m.label for m in self.models)
        raise KeyError(f"no audited model at ε={epsilon:g}; the report has {have}")

    # ------------------------------------------------------------------ attach
    def attach(self, model, *, epsilon: float | None = None):
        """Set ``model.audit`` to this report's summary for the model's ε (JSON-serializable).

        Parameters
        ----------
        model : heml.LinearModel
        epsilon : float, optional
            Which audited ε to attach. Default: the model's DP ε, or ∞ if it is not private.

        Returns
        -------
        the model, for chaining.
        """
        if epsilon is None:
            epsilon = float(model.dp.get("epsilon")) if model.is_private else math.inf
        entry = self.model(epsilon)
        s = entry.summary
        model.audit = {
            "schema": MODEL_SUMMARY_SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "date": self.created,
            "heml_version": self.heml_version,
            "claimed_epsilon": s["claimed_epsilon"],
            "claimed_delta": s["claimed_delta"],
            "epsilon_lower_bound": s["epsilon_lower_bound"],
            "epsilon_lower_bound_delta": s.get("epsilon_lower_bound_delta"),
            "epsilon_lower_bound_confidence": s.get("epsilon_lower_bound_confidence"),
            "epsilon_lower_bound_canary": s.get("epsilon_lower_bound_canary"),
            "audit": s["audit"],
            "auc": s["auc"],
            "auc_attack": s["auc_attack"],
            "tpr_at_fpr_0.01": s["tpr_at_fpr_0.01"],
            "tpr_at_fpr_0.001": s["tpr_at_fpr_0.001"],
            "advantage": s["advantage"],
            "n_shadow": self.config["n_shadow"],
            "canary_runs": self.config["canary_runs"],
            "threat_model": "black-box client that sees decrypted scores",
        }
        json.dumps(model.audit, allow_nan=False)  # LinearModel.save writes strict JSON
        return model

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return _to_json(
            {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "created": self.created,
                "heml_version": self.heml_version,
                "wall_seconds": self.wall_seconds,
                "summary": self.summary,
                "threat_model": self.threat_model,
                "config": self.config,
                "data": self.data,
                "models": [asdict(m) for m in self.models],
            }
        )

    @classmethod
    def from_dict(cls, data: dict) -> AuditReport:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"not a heml audit report (schema {data.get('schema')!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"audit report schema_version {data.get('schema_version')!r} is not supported "
                f"(supported: {SCHEMA_VERSION})"
            )
        d = _from_json(data)
        models = []
        for m in d["models"]:
            for met in m["attacks"].values():
                for key in ("tpr_at_fpr", "tpr_at_fpr_ci", "tpr_at_fpr_reliable"):
                    if met.get(key) is not None:
                        met[key] = {float(k): v for k, v in met[key].items()}
            models.append(ModelAudit(**m))
        return cls(
            models=models,
            config=d["config"],
            data=d["data"],
            threat_model=d["threat_model"],
            created=d["created"],
            heml_version=d["heml_version"],
            wall_seconds=d.get("wall_seconds", 0.0),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as strict JSON (infinities as the string "inf")."""
        return write_atomically(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> AuditReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ------------------------------------------------------------------ figures and text
    def plot(self, path: str | os.PathLike, *, dpi: int = 120) -> Path:
        """One PNG: a log-log ROC per model with its DP region, and the privacy–utility curves."""
        from ._plot import plot_report

        return plot_report(self, path, dpi=dpi)

    def plot_roc(self, path: str | os.PathLike, *, dpi: int = 120) -> Path:
        from ._plot import plot_roc

        return plot_roc(self, path, dpi=dpi)

    def plot_privacy_utility(self, path: str | os.PathLike, *, dpi: int = 120) -> Path:
        from ._plot import plot_privacy_utility

        return plot_privacy_utility(self, path, dpi=dpi)

    def to_markdown(self, *, figures: dict[str, str] | None = None) -> str:
        """A short Markdown summary (the table, the threat model, how to read it)."""
        c, dd = self.config, self.data
        lines = ["# heml privacy audit", ""]
        verdict = self.passed
        if verdict is None:
            lines.append("No private model was checked against its claim.")
        elif verdict:
            lines.append(
                f"**Passed**: no private model's ε lower bound exceeds its claimed ε "
                f"({c['confidence']:.0%} confidence)."
            )
        else:
            lines.append(
                f"**FAILED**: the ε lower bound exceeds the claimed ε for "
                f"{', '.join(self.summary['failed_models'])} ({c['confidence']:.0%} confidence): "
                "the training procedure does not deliver its DP guarantee."
            )
        lines += [
            "",
            f"{dd['task'].capitalize()}, {dd['n_train']} training and {dd['n_test']} test records, "
            f"{dd['n_features']} features. Membership inference: {c['n_models']} models per ε on "
            f"random halves of the {dd['n_pool']} pooled records (≈{dd['shadow_train_size']:.0f} "
            f"each), every model the target once. DP audit: {c['canary_runs']} runs with and "
            "without a canary per ε. Attack columns show the strongest of "
            f"{', '.join(ATTACK_TITLES[a] for a in c['attacks'])}.",
            "",
            "| model | claimed ε | utility (test) | AUC | advantage | TPR@1%FPR | TPR@0.1%FPR "
            "| ε lower bound | audit |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in self.models:
            s = m.summary
            ceps = "∞" if s["claimed_epsilon"] is None else f"{s['claimed_epsilon']:g}"
            if m.claimed_delta:
                ceps += f" (δ={m.claimed_delta:g})"
            lb = "—"
            if s["epsilon_lower_bound"] is not None:
                lb = f"{s['epsilon_lower_bound']:.2f}"
                if s["epsilon_lower_bound"] >= s["epsilon_lower_bound_ceiling"] - 1e-9:
                    lb += " (= ceiling)"
                if s["epsilon_lower_bound_canary"] != "margin":
                    lb += f" ({s['epsilon_lower_bound_canary'].replace('_', ' ')} canary)"
            _, _, auc_ci = m.strongest("auc")
            auc = f"{s['auc']:.3f}" + (f" [{auc_ci[0]:.3f}, {auc_ci[1]:.3f}]" if auc_ci else "")
            tprs = []
            for level in FPR_LEVELS:
                _, v, ci = m.strongest("tpr_at_fpr", level)
                tprs.append(f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            lines.append(
                f"| {m.label} | {ceps} | {m.utility_metric} {m.utility_test:.3f} | {auc} | "
                f"{s['advantage']:.3f} | {tprs[0]} | {tprs[1]} | {lb} | {s['audit']} |"
            )
        if self.models and self.models[0].canary is not None:
            m0 = self.models[0].canary
            lines += [
                "",
                f"ε lower bounds: {m0['confidence']:.0%} confidence, δ accounted, threshold "
                f"chosen on {m0['n_selection_in']} + {m0['n_selection_out']} runs and the bound "
                f"computed on the other {m0['n_in']} + {m0['n_out']}; with that many runs no "
                f"bound can exceed the ceiling {m0['ceiling']:.2f}. "
                f"Canary: {m0['canary']['description']}.",
            ]
        release = (self.models[0].release_canaries or {}) if self.models else {}
        if release:
            lines += [
                "",
                f"Release canaries ({c.get('release_runs', 0)} runs a world), read off the "
                "released model rather than its scores:",
            ]
            for name, r0 in release.items():
                bounds = ", ".join(
                    f"{m.label} {m.release_canaries[name]['epsilon_lb']:.2f}"
                    for m in self.models
                    if m.release_canaries and name in m.release_canaries
                )
                lines.append(
                    f"* {name.replace('_', ' ')}: {r0['canary']['description']}; statistic "
                    f"{r0['statistic']}. ε lower bounds: {bounds}."
                )
        lines += ["", "Brackets: " + (self._ci_method() or "no intervals") + "."]
        if figures:
            lines += ["", "## Figures", ""]
            for title, rel in figures.items():
                lines.append(f"![{title}]({rel})")
        lines += ["", "## Threat model", ""]
        for key, text in self.threat_model.items():
            lines.append(f"* **{key.replace('_', ' ')}**: {text}")
        warned = {m.label: m.warnings for m in self.models if m.warnings}
        if warned:
            lines += ["", "## Warnings raised while training", ""]
            for label, ws in warned.items():
                for text, count in list(ws.items())[:5]:
                    lines.append(f"* {label}: {text} (×{count})")
        lines.append("")
        return "\n".join(lines)

    def _ci_method(self) -> str | None:
        for m in self.models:
            for met in m.attacks.values():
                return met.get("ci_method")
        return None


def _to_json(value):
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {
            (f"{k:g}" if isinstance(k, float) else str(k)): _to_json(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return _to_json(value.item())
    return value


def _from_json(value):
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value
