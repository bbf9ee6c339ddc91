"""Test helpers for the privacy audit."""

from __future__ import annotations

from heml.audit import NoisySumClassifier


class UnderstatedNoisySum(NoisySumClassifier):
    """A buggy mechanism: adds the noise of ε·50 but claims ε (the audit must catch it)."""

    def fit(self, X, y):
        claimed = self.epsilon
        self.epsilon = claimed * 50
        try:
            super().fit(X, y)
        finally:
            self.epsilon = claimed
        self.dp_guarantee_["epsilon"] = claimed
        return self
