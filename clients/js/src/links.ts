/**
 * Links: how decrypted scores W·x + b become predictions (heml/links.py, scikit-learn's rules).
 * The server only computes scores; links run here, in plaintext, exactly.
 */

export type Link = "identity" | "logistic" | "softmax" | "ovr_logistic" | "modified_huber" | "none" | "exp";

function expit(x: number): number {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}

function normalizeRow(p: number[]): number[] {
  const total = p.reduce((a, b) => a + b, 0);
  return total === 0 ? p.map(() => 1 / p.length) : p.map((v) => v / total);
}

/** Class probabilities (n × classes) from scores (n × k); binary models give (n × 2). */
export function probabilities(link: Link, scores: number[][]): number[][] {
  return scores.map((row) => {
    const binary = row.length === 1;
    switch (link) {
      case "logistic":
      case "ovr_logistic": {
        const p = row.map(expit);
        return binary ? [1 - p[0], p[0]] : normalizeRow(p);
      }
      case "softmax": {
        if (binary) throw new Error("the softmax link needs at least two scores per sample");
        const top = Math.max(...row);
        const e = row.map((v) => Math.exp(v - top));
        const total = e.reduce((a, b) => a + b, 0);
        return e.map((v) => v / total);
      }
      case "modified_huber": {
        const p = row.map((v) => (Math.min(1, Math.max(-1, v)) + 1) / 2);
        return binary ? [1 - p[0], p[0]] : normalizeRow(p);
      }
      case "none":
        throw new Error("this model has no probability estimates (margin loss); use predict or scores");
      default:
        throw new Error(`link ${link} is not a classification link`);
    }
  });
}

/** Regression outputs (n × k) from scores. */
export function regressionOutput(link: Link, scores: number[][]): number[][] {
  if (link === "identity") return scores;
  if (link === "exp") return scores.map((row) => row.map(Math.exp));
  throw new Error(`link ${link} is not a regression link`);
}

/** Index of the predicted class per sample: sign for one score, argmax otherwise. */
export function classIndices(scores: number[][]): number[] {
  return scores.map((row) => {
    if (row.length === 1) return row[0] > 0 ? 1 : 0;
    let best = 0;
    for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
    return best;
  });
}
