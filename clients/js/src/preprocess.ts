/**
 * Client-side preprocessing, in plaintext before encryption (heml/preprocessing.py): raw input
 * columns -> model features (numeric columns with imputation, one-hot categories), the declared
 * bounds (refuse or clip), the optional row-norm clip, and normalization to [-1, 1].
 */

export type Raw = number | string | boolean | null | undefined;

interface ColumnSpec {
  name: string;
  kind?: "numeric" | "categorical";
  impute?: Raw;
  categories?: Raw[];
  handle_unknown?: "error" | "ignore" | "infrequent_if_exist";
  drop?: Raw;
  infrequent?: Raw[];
  feature_names?: string[];
}

interface RowNormSpec {
  max_norm: number;
  scale: number[];
  offset: number[];
}

export interface PreprocessingSpec {
  inputs?: string[];
  columns?: ColumnSpec[];
  row_norm?: RowNormSpec;
}

const isMissing = (v: Raw): boolean => v === null || v === undefined || (typeof v === "number" && Number.isNaN(v));
const same = (a: Raw, b: Raw): boolean => (isMissing(a) || isMissing(b) ? isMissing(a) && isMissing(b) : a === b);

/** Declared per-feature bounds and the policy outside them ("error" or "clip"). */
export class Bounds {
  readonly encodeLower: number[];
  readonly encodeUpper: number[];

  constructor(
    readonly lower: number[],
    readonly upper: number[],
    readonly outOfBounds: "error" | "clip" = "error",
    encodeLower?: number[],
    encodeUpper?: number[],
  ) {
    if (lower.length !== upper.length) throw new Error("bounds have different lengths");
    if (outOfBounds !== "error" && outOfBounds !== "clip") throw new Error(`unknown out-of-bounds policy ${outOfBounds}`);
    this.encodeLower = encodeLower && encodeLower.length ? encodeLower : lower;
    this.encodeUpper = encodeUpper && encodeUpper.length ? encodeUpper : upper;
  }

  /** Check or clip model features against the bounds. */
  apply(X: number[][], names: string[] = []): number[][] {
    return X.map((row, a) =>
      row.map((v, j) => {
        if (v >= this.lower[j] && v <= this.upper[j]) return v;
        if (this.outOfBounds === "clip") return Math.min(this.upper[j], Math.max(this.lower[j], v));
        throw new RangeError(
          `input outside the model's declared bounds: ${names[j] ?? `x${j}`} = ${v} at row ${a} is outside ` +
            `[${this.lower[j]}, ${this.upper[j]}]; clip it or ask for a model exported with wider bounds`,
        );
      }),
    );
  }

  /** z = clip((x - c) / h, -1, 1) with c, h the centre and half-width of the encoding range. */
  normalize(X: number[][]): number[][] {
    return X.map((row) =>
      row.map((v, j) => {
        const lo = this.encodeLower[j];
        const hi = this.encodeUpper[j];
        const h = (hi - lo) / 2.0;
        const z = (v - (lo + hi) / 2.0) / (h > 0 ? h : 1.0);
        return Math.min(1, Math.max(-1, z));
      }),
    );
  }
}

/** Raw rows (values in the model's input order) -> model features. */
export class Preprocessing {
  readonly inputs: string[];
  readonly columns: ColumnSpec[];
  readonly rowNorm?: RowNormSpec;

  constructor(spec: PreprocessingSpec, nFeatures: number) {
    this.columns = spec.columns?.length ? spec.columns : Array.from({ length: nFeatures }, (_, i) => ({ name: `x${i}` }));
    this.inputs = spec.inputs?.length ? spec.inputs : [...new Set(this.columns.map((c) => c.name))];
    this.rowNorm = spec.row_norm;
    for (const c of this.columns) {
      if (!this.inputs.includes(c.name)) throw new Error(`preprocessing reads unknown input column ${c.name}`);
    }
  }

  get featureNames(): string[] {
    return this.columns.flatMap((c) => (c.kind === "categorical" ? c.feature_names ?? [] : [c.name]));
  }

  /** Raw rows -> model features (before bounds). */
  transform(rows: Raw[][]): number[][] {
    const index = new Map(this.inputs.map((n, i) => [n, i]));
    return rows.map((row, a) => {
      if (row.length !== this.inputs.length) {
        throw new Error(`row ${a} has ${row.length} values, the model expects ${this.inputs.length} (${this.inputs.slice(0, 5).join(", ")}…)`);
      }
      const out: number[] = [];
      for (const col of this.columns) {
        let v = row[index.get(col.name)!];
        if (col.kind === "categorical") {
          out.push(...oneHot(col, v, a));
          continue;
        }
        if (isMissing(v)) {
          if (col.impute === undefined || col.impute === null) {
            throw new Error(`column ${col.name} has a missing value at row ${a}; this model has no imputer for it`);
          }
          v = col.impute;
        }
        const x = typeof v === "number" ? v : Number(v);
        if (!Number.isFinite(x)) throw new Error(`column ${col.name} must be a finite number at row ${a}, got ${String(v)}`);
        out.push(x);
      }
      return out;
    });
  }

  /** Row-norm clip (DP models): with e = x·scale + offset, rows with ‖e‖ > R are scaled onto R. */
  clipRows(X: number[][]): number[][] {
    const rn = this.rowNorm;
    if (!rn) return X;
    return X.map((row) => {
      const e = row.map((v, j) => v * rn.scale[j] + rn.offset[j]);
      const norm = Math.sqrt(e.reduce((acc, v) => acc + v * v, 0));
      if (!(norm > rn.max_norm)) return row;
      return e.map((v, j) => (v * (rn.max_norm / norm) - rn.offset[j]) / rn.scale[j]);
    });
  }
}

function oneHot(col: ColumnSpec, value: Raw, row: number): number[] {
  const cats = col.categories ?? [];
  const names = col.feature_names ?? [];
  let v = value;
  if (isMissing(v) && col.impute !== undefined && col.impute !== null) v = col.impute;
  const infrequent = new Set(cats.map((c, i) => ((col.infrequent ?? []).some((x) => same(c, x)) ? i : -1)).filter((i) => i >= 0));
  const kept = cats.map((_, i) => i).filter((i) => !infrequent.has(i) && !(col.drop !== undefined && col.drop !== null && same(cats[i], col.drop)));
  const width = kept.length + (infrequent.size ? 1 : 0);
  if (width !== names.length) throw new Error(`column ${col.name}: ${width} one-hot features expected, model lists ${names.length}`);
  const out = new Array<number>(width).fill(0);
  const code = cats.findIndex((c) => same(c, v));
  if (code < 0) {
    if (col.handle_unknown === "error" || col.handle_unknown === undefined) {
      throw new Error(`column ${col.name} has an unknown category ${JSON.stringify(v)} at row ${row}`);
    }
    if (col.handle_unknown === "infrequent_if_exist" && infrequent.size) out[width - 1] = 1;
    return out;
  }
  if (infrequent.has(code)) out[width - 1] = 1;
  else {
    const pos = kept.indexOf(code);
    if (pos >= 0) out[pos] = 1;
  }
  return out;
}
