"""heml bench: encrypted scoring per model size, beside its baselines, in one run.

For every (d, k, n) cell it measures heml end to end through the SDK over loopback gRPC
(encrypt -> Predict -> decrypt -> link), and beside it in the same run:

* the **floor**: the SEAL operations the server must run on already-loaded ciphertexts for that
  request (plaintext products and additions), timed in this process without gRPC or
  (de)serialization;
* the **naive TenSEAL baseline** (tutorial style: one ``ckks_vector`` per sample, ``dot`` with
  Galois keys, N=8192), crypto and serialization only (no gRPC: flattering to the baseline);
* plaintext **scikit-learn** ``predict_proba``.

A baseline cell that would exceed the time cap prints "not run" (decided from a one-sample
probe); nothing is extrapolated. Medians and p95 over repetitions; the machine is noisy.
Results: a printed table, JSON, and PNG plots (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FULL_D = (8, 32, 128, 512, 2048, 8192)
FULL_K = (1, 10)
FULL_N = (1, 64, 4096, 65536)
QUICK_D = (8, 32, 128)
QUICK_K = (1, 10)
QUICK_N = (1, 64, 4096)
BASELINE_CAP_SECONDS = 20.0


@dataclass
class Cell:
    system: str
    d: int
    k: int
    n: int
    status: str = "ok"  # ok | not run (reason)
    median_s: float | None = None
    p95_s: float | None = None
    per_second: float | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    server_cpu_s: float | None = None
    client_peak_rss_mb: float | None = None
    server_peak_rss_mb: float | None = None
    max_abs_error: float | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- process probes
def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class PeakRSS:
    """Sample the resident set of some processes in the background; report the peaks."""

    def __init__(self, pids: dict[str, list[int]], interval: float = 0.05) -> None:
        self.pids, self.interval = pids, interval
        self.peaks = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pids in self.pids.items():
                self.peaks[name] = max(self.peaks[name], sum(_rss_mb(p) for p in pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for name, pids in self.pids.items():
            self.peaks[name] = max(self.peaks[name], sum(_rss_mb(p) for p in pids))


def _timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _reps(n: int, quick: bool) -> int:
    if n == 1:
        return 15 if quick else 40
    if n <= 64:
        return 5 if quick else 12
    if n <= 4096:
        return 3 if quick else 5
    return 2


# ---------------------------------------------------------------------- models and data
def _make_model(d: int, k: int, seed: int = 0):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed + 7 * d + k)
    n_train = max(400, 3 * k * 10)
    X = np.clip(rng.normal(size=(n_train, d)), -5, 5)
    W = rng.normal(size=(d, max(k, 2))) / np.sqrt(d)
    y = np.argmax(X @ W + 0.5 * rng.normal(size=(n_train, max(k, 2))), axis=1)
    if k == 1:
        y = (y == 0).astype(int)
    clf = LogisticRegression(max_iter=300).fit(X, y)
    return clf


def _data(d: int, n: int, seed: int = 1) -> np.ndarray:
    return np.clip(np.random.default_rng(seed + d).normal(size=(n, d)), -5, 5)


# ---------------------------------------------------------------------- heml cell
def _heml_cell(client, server, d: int, k: int, n: int, X, clf, quick: bool) -> Cell:
    model = client.model(f"d{d}-k{k}")
    plain = clf.decision_function(X)
    model.decision_function(X[: min(n, 64)])  # warm-up: keys, caches, connection
    reps = _reps(n, quick)
    got = None
    cpu = []
    with PeakRSS({"client": [os.getpid()], "server": server.worker_pids}) as rss:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            got = model.decision_function(X)
            times.append(time.perf_counter() - t)
            cpu.append(model.last_call.server_cpu_seconds)
    stats = model.last_call
    med = statistics.median(times)
    err = float(np.max(np.abs(np.asarray(got).reshape(plain.shape) - plain)))
    return Cell(
        "heml",
        d,
        k,
        n,
        median_s=med,
        p95_s=float(np.percentile(times, 95)),
        per_second=n / med,
        bytes_up=stats.bytes_sent,
        bytes_down=stats.bytes_received,
        server_cpu_s=statistics.median(cpu),
        client_peak_rss_mb=rss.peaks["client"],
        server_peak_rss_mb=rss.peaks["server"],
        max_abs_error=err,
        extra={"layouts": stats.layouts, "blocks": stats.blocks},
    )


# ---------------------------------------------------------------------- floor
def _floor_cell(scorer, d: int, k: int, n: int, layout_blocks) -> Cell:
    """SEAL multiply_plain + add on loaded ciphertexts for the request's shape."""
    import tenseal.sealapi as seal

    from .he import seal_bridge

    total = 0.0
    for layout, count, products in layout_blocks:
        plan = scorer.plans[layout]
        params = plan.params
        rng = np.random.default_rng(0)
        words = rng.integers(0, params.q, size=(2, params.n), dtype=np.uint64)
        cts = [seal_bridge.ciphertext_from_words(params, words, ntt=True) for _ in range(5)]
        acc = cts.pop()
        plain = seal.Plaintext()
        seal.CKKSEncoder(params.context).encode(3.0, 1.0, plain)
        ev = seal.Evaluator(params.context)
        prod = seal.Ciphertext(params.context)

        def op(ev=ev, cts=cts, plain=plain, prod=prod, acc=acc, products=products):
            for i in range(products):
                ev.multiply_plain(cts[i % 4], plain, prod)
                ev.add_inplace(acc, prod)

        reps = 3
        best = min(_timed(op, reps)) if products else 0.0
        total += best * count
    rate = n / total if total else None
    return Cell("floor (SEAL ops)", d, k, n, median_s=total, per_second=rate)


def _request_shape(codec, n: int):
    """[(layout, blocks, plaintext products per block)] for a batch of n, as the SDK splits it."""
    from .he.plan import COLUMN

    out: dict[tuple[str, int], list[int]] = {}
    for blk in codec.blocks(n):
        plan = codec.plans[blk.layout]
        if blk.layout == COLUMN:
            products = codec.d * codec.k * plan.digits
        else:
            geo = codec._row_geometry(blk.s)
            products = -(-blk.n // blk.s) * geo.chunks * geo.groups
        out.setdefault((blk.layout, products), []).append(1)
    return [(lay, len(v), prod) for (lay, prod), v in out.items()]


# ---------------------------------------------------------------------- TenSEAL baseline
def _tenseal_cell(d: int, k: int, n: int, X, clf, cap: float) -> Cell:
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2**40
    ctx.generate_galois_keys()
    public = ctx.copy()
    public.make_context_public()
    keys_bytes = len(public.serialize(save_galois_keys=True))
    server_ctx = ts.context_from(public.serialize(save_galois_keys=True))
    W = np.atleast_2d(clf.coef_)
    b = np.atleast_1d(clf.intercept_)
    if d > 4096:
        return Cell("TenSEAL naive", d, k, n, status="not run (d > N/2 slots)")

    def one(x):
        enc = ts.ckks_vector(ctx, x.tolist())
        up = enc.serialize()
        remote = ts.ckks_vector_from(server_ctx, up)
        outs = [(remote.dot(W[c].tolist()) + float(b[c])).serialize() for c in range(W.shape[0])]
        vals = [ts.ckks_vector_from(ctx, o).decrypt()[0] for o in outs]
        return vals, len(up), sum(len(o) for o in outs)

    t = time.perf_counter()
    one(X[0])
    probe = time.perf_counter() - t
    if probe * n > cap:
        return Cell(
            "TenSEAL naive",
            d,
            k,
            n,
            status=f"not run (one sample took {probe:.2f} s; cap {cap:.0f} s)",
            extra={"galois_key_bytes": keys_bytes},
        )
    times, results, up, down = [], [], 0, 0
    for i in range(n):
        t = time.perf_counter()
        vals, u, dn = one(X[i])
        times.append(time.perf_counter() - t)
        results.append(vals)
        up, down = up + u, down + dn
    got = np.array(results)
    plain = np.atleast_2d(clf.decision_function(X[:n]).reshape(n, -1))
    total = sum(times)
    return Cell(
        "TenSEAL naive",
        d,
        k,
        n,
        median_s=total if n > 1 else statistics.median(times),
        p95_s=float(np.percentile(times, 95)) if n == 1 else None,
        per_second=n / total,
        bytes_up=up,
        bytes_down=down,
        max_abs_error=float(np.max(np.abs(got - plain))),
        extra={"galois_key_bytes": keys_bytes},
    )


def _sklearn_cell(d: int, k: int, n: int, X, clf, quick: bool) -> Cell:
    times = _timed(lambda: clf.predict_proba(X), max(3, _reps(n, quick)))
    med = statistics.median(times)
    return Cell(
        "scikit-learn (plaintext)",
        d,
        k,
        n,
        median_s=med,
        p95_s=float(np.percentile(times, 95)),
        per_second=n / med,
        bytes_up=X.nbytes,
    )


# ---------------------------------------------------------------------- throughput
def _client_worker(args):
    target, keyfile, name, X, barrier = args
    import heml

    with heml.Client(target, keys=keyfile) as client:
        model = client.model(name)
        model.decision_function(X[:64])
        barrier.wait()
        t = time.perf_counter()
        model.decision_function(X)
        return time.perf_counter() - t, model.last_call.bytes_sent, model.last_call.bytes_received


def end_to_end_throughput(target: str, name: str, X: np.ndarray, processes: int, keyfile: str):
    """Predictions/s with `processes` client processes encrypting in parallel (spawned)."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        parts = np.array_split(X, processes)
        with ctx.Pool(processes) as pool:
            results = pool.map(_client_worker, [(target, keyfile, name, p, barrier) for p in parts])
    wall = max(r[0] for r in results)
    return len(X) / wall, sum(r[1] for r in results), sum(r[2] for r in results)


def server_throughput(target: str, model, X: np.ndarray, channels: int, seconds: float) -> float:
    """Predictions/s the server sustains on pre-encrypted blocks sent over several channels."""
    import grpc

    from .v1 import heml_pb2_grpc

    codec = model._codec
    blocks = codec.blocks(len(X))
    block = blocks[0]
    request = model._header(block, 0)
    request.ciphertexts.extend(codec.encrypt(codec_normalize(model, X[: block.n]), block))
    done = []
    stop = time.monotonic() + seconds

    def run():
        with grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
                # a connection of its own (channels otherwise share one): one per worker
                ("grpc.use_local_subchannel_pool", 1),
            ],
        ) as ch:
            stub = heml_pb2_grpc.InferenceStub(ch)
            count = 0
            while time.monotonic() < stop:
                stub.Predict(request, timeout=60)
                count += block.n
            done.append(count)

    start = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(channels)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(done) / (time.monotonic() - start)


def codec_normalize(model, X):
    info = model.info
    return info.bounds.normalize(info.preprocessing.model_features(X, info.bounds))


# ---------------------------------------------------------------------- goals
def privacy_latencies(client, name: str, X: np.ndarray, reps: int) -> list[float]:
    """Seconds per single prediction of a model-privacy model through the SDK.

    Each key identity may make fewer than d predictions in its lifetime, so a new model
    object (a new public key, registered by a first prediction that is not timed) is taken
    whenever the quota would run out."""
    lat: list[float] = []
    m, left = None, 0
    for i in range(reps):
        if left == 0:
            m = client.model(name)
            left = m.info.privacy["max_predictions_per_key"] - 1
            m.predict_proba(X[:1])  # registers the key; not timed
        row = X[i % len(X) : i % len(X) + 1]
        lat.append(_timed(lambda m=m, r=row: m.predict_proba(r), 1)[0])
        left -= 1
    return lat


def goals(workers: int, quick: bool, progress) -> list[dict]:
    """The issue's goal rows, each beside its baseline from the same run."""
    import heml

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        specs = {"g30": (30, 1), "g1000": (1000, 1), "g64k10": (64, 10)}
        models = {}
        for name, (d, k) in specs.items():
            clf = _make_model(d, k)
            heml.export(clf, name=name, bounds=(-5.0, 5.0)).save(f"{folder}/{name}.json")
            models[name] = clf
        heml.export(
            models["g30"],
            name="g30p",
            bounds=(-5.0, 5.0),
            model_privacy=True,  # the default quota (15 at d = 30): 29 would give W away
        ).save(f"{folder}/g30p.json")
        keyfile = f"{folder}/client.keys"
        with heml.serve(folder, port=0, workers=workers) as server:
            target = f"127.0.0.1:{server.port}"
            with heml.Client(target, keys=keyfile) as client:
                for name, d in (("g30", 30), ("g1000", 1000)):
                    m = client.model(name)
                    x = _data(d, 64)
                    for i in range(10):
                        m.predict_proba(x[i : i + 1])
                    reps = 30 if quick else 100
                    lat = [
                        _timed(lambda m=m, r=x[i % 64 : i % 64 + 1]: m.predict_proba(r), 1)[0]
                        for i in range(reps)
                    ]
                    st = m.last_call
                    ts_cell = _tenseal_cell(d, 1, 1, x, models[name], BASELINE_CAP_SECONDS)
                    rows.append(
                        {
                            "goal": f"one prediction, d={d}, SDK end to end",
                            "heml": f"{statistics.median(lat) * 1e3:.2f} ms "
                            f"(p95 {np.percentile(lat, 95) * 1e3:.2f})",
                            "baseline": _fmt_ms(ts_cell) + " TenSEAL naive",
                            "target": "≤ 2 ms" if d == 30 else "≤ 3 ms",
                            "pass": statistics.median(lat) <= (0.002 if d == 30 else 0.003),
                        }
                    )
                    if d == 30:
                        private = privacy_latencies(client, "g30p", x, reps)
                        rows.append(
                            {
                                "goal": "one prediction, d=30, model-privacy mode, SDK end to end",
                                "heml": f"{statistics.median(private) * 1e3:.2f} ms "
                                f"(p95 {np.percentile(private, 95) * 1e3:.2f})",
                                "baseline": f"{statistics.median(lat) * 1e3:.2f} ms default "
                                "mode (this run)",
                                "target": "≤ 12 ms",
                                "pass": statistics.median(private) <= 0.012,
                            }
                        )
                        cpu = []
                        for i in range(reps):
                            m.predict_proba(x[i % 64 : i % 64 + 1])
                            cpu.append(m.last_call.server_cpu_seconds)
                        rows.append(_floor_row(m, models[name], 1, statistics.median(cpu)))
                        Xb = _data(d, 4096)
                        cpu = []
                        for _ in range(3 if quick else 5):
                            m.predict_proba(Xb)
                            cpu.append(m.last_call.server_cpu_seconds)
                        rows.append(_floor_row(m, models[name], 4096, statistics.median(cpu)))
                        rows.append(
                            {
                                "goal": "one prediction's bytes, d=30",
                                "heml": f"{st.bytes_sent / 1024:.1f} KiB up / "
                                f"{st.bytes_received / 1024:.1f} KiB down",
                                "baseline": f"{(ts_cell.bytes_up or 0) / 1024:.0f} / "
                                f"{(ts_cell.bytes_down or 0) / 1024:.0f} KiB TenSEAL naive",
                                "target": "≤ 16 KiB up, ≤ 8 KiB down",
                                "pass": st.bytes_sent <= 16 * 1024
                                and st.bytes_received <= 8 * 1024,
                            }
                        )
                        rows.append(
                            {
                                "goal": "evaluation-key bytes uploaded (default mode)",
                                "heml": "0",
                                "baseline": (
                                    f"{ts_cell.extra.get('galois_key_bytes', 0) / 2**20:.1f} MiB"
                                    " TenSEAL (public context with Galois keys)"
                                ),
                                "target": "0",
                                "pass": True,
                            }
                        )
                    progress.update(1)
            n_big = 16384 if quick else 65536
            for name, d, k, target_rate in (("g30", 30, 1, 150_000), ("g64k10", 64, 10, 30_000)):
                X = _data(d, n_big)
                rate, up, down = end_to_end_throughput(
                    target, name, X, os.cpu_count() or 1, keyfile
                )
                t = time.perf_counter()
                models[name].predict_proba(X)
                sk = n_big / (time.perf_counter() - t)
                rows.append(
                    {
                        "goal": f"batch n={n_big}, d={d}, k={k}, end to end incl. encryption "
                        f"({os.cpu_count()} client processes, {workers} worker(s))",
                        "heml": f"{rate:,.0f} predictions/s",
                        "baseline": f"{sk:,.0f}/s scikit-learn plaintext",
                        "target": f"≥ {target_rate:,}/s",
                        "pass": rate >= target_rate,
                    }
                )
                if k == 1:
                    rows.append(
                        {
                            "goal": "upload per feature value / download per output, batch",
                            "heml": f"{up / (n_big * d):.2f} B / {down / n_big:.2f} B",
                            "baseline": "8 B float64 plaintext; TenSEAL slots 57 B",
                            "target": "≤ 8 B / ≤ 8 B",
                            "pass": up / (n_big * d) <= 8 and down / n_big <= 8,
                        }
                    )
                progress.update(1)
    return rows


def _floor_row(remote, clf, n: int, server_cpu: float) -> dict:
    from .he.scoring import ServerScorer

    info = remote.info
    scorer = ServerScorer(
        np.atleast_2d(clf.coef_),
        np.atleast_1d(clf.intercept_),
        info.bounds.center,
        info.bounds.half_width,
        info.tolerance,
    )
    floor = _floor_cell(
        scorer, info.n_features, info.n_outputs, n, _request_shape(remote._codec, n)
    ).median_s
    ratio = server_cpu / floor if floor else float("inf")
    return {
        "goal": f"server CPU vs floor, d={info.n_features}, n={n}",
        "heml": f"{server_cpu * 1e3:.2f} ms server CPU per request (×{ratio:.1f} the floor)",
        "baseline": f"floor {floor * 1e3:.3f} ms (SEAL products and sums on loaded ciphertexts)",
        "target": "≤ 1.5×",
        "pass": ratio <= 1.5,
    }


def _fmt_ms(cell: Cell) -> str:
    if cell.status != "ok" or cell.median_s is None:
        return cell.status
    return f"{cell.median_s * 1e3:.1f} ms"


# ---------------------------------------------------------------------- worker scaling
def worker_scaling(quick: bool, progress) -> dict:
    """Server throughput (pre-encrypted COLUMN blocks, several channels) for 1 and 2 workers."""
    import heml

    d, k = 32, 1
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        clf = _make_model(d, k)
        heml.export(clf, name="w", bounds=(-5.0, 5.0)).save(f"{folder}/w.json")
        X = _data(d, 4096)
        for workers in (1, 2):
            with heml.serve(folder, port=0, workers=workers) as server:
                target = f"127.0.0.1:{server.port}"
                with heml.Client(target) as client:
                    model = client.model("w")
                    rate = server_throughput(target, model, X, 16, 4.0 if quick else 10.0)
            out[workers] = rate
            progress.update(1)
    out["ratio"] = out[2] / out[1]
    return out


# ---------------------------------------------------------------------- main grid
def run_grid(dims, ks, ns, workers: int, quick: bool, cap: float, progress) -> list[Cell]:
    import heml

    from .he.scoring import ServerScorer

    cells: list[Cell] = []
    with tempfile.TemporaryDirectory() as folder:
        models = {}
        for d in dims:
            for k in ks:
                clf = _make_model(d, k)
                model = heml.export(clf, name=f"d{d}-k{k}", bounds=(-5.0, 5.0))
                model.save(f"{folder}/d{d}-k{k}.json")
                models[(d, k)] = (clf, model)
        with (
            heml.serve(folder, port=0, workers=workers) as server,
            heml.Client(f"127.0.0.1:{server.port}") as client,
        ):
            for d in dims:
                for k in ks:
                    clf, model = models[(d, k)]
                    scorer = ServerScorer(
                        model.coef,
                        model.intercept,
                        model.bounds.center,
                        model.bounds.half_width,
                        model.tolerance,
                    )
                    codec = client.model(f"d{d}-k{k}")._codec
                    for n in ns:
                        X = _data(d, n)
                        cells.append(_heml_cell(client, server, d, k, n, X, clf, quick))
                        cells.append(_floor_cell(scorer, d, k, n, _request_shape(codec, n)))
                        cells.append(_tenseal_cell(d, k, n, X, clf, cap))
                        cells.append(_sklearn_cell(d, k, n, X, clf, quick))
                        progress.update(1)
    return cells


def print_grid(cells: list[Cell], out=sys.stdout) -> None:
    head = (
        f"{'d':>5} {'k':>3} {'n':>6}  {'system':<24} {'median':>10} {'p95':>9} "
        f"{'pred/s':>11} {'up B/pred':>10} {'down B/pred':>11} {'srv CPU':>9} "
        f"{'RSS c/s MB':>11} {'max|err|':>9}"
    )
    print(head, file=out)
    print("-" * len(head), file=out)
    for c in cells:
        if c.status != "ok":
            print(f"{c.d:>5} {c.k:>3} {c.n:>6}  {c.system:<24} {c.status}", file=out)
            continue
        med = _fmt_time(c.median_s)
        p95 = _fmt_time(c.p95_s) if c.p95_s is not None else "-"
        rate = f"{c.per_second:,.0f}" if c.per_second else "-"
        up = f"{c.bytes_up / c.n:,.0f}" if c.bytes_up is not None else "-"
        down = f"{c.bytes_down / c.n:,.0f}" if c.bytes_down is not None else "-"
        cpu = _fmt_time(c.server_cpu_s) if c.server_cpu_s is not None else "-"
        rss = (
            f"{c.client_peak_rss_mb:.0f}/{c.server_peak_rss_mb:.0f}"
            if c.client_peak_rss_mb is not None
            else "-"
        )
        err = f"{c.max_abs_error:.1e}" if c.max_abs_error is not None else "-"
        print(
            f"{c.d:>5} {c.k:>3} {c.n:>6}  {c.system:<24} {med:>10} {p95:>9} {rate:>11} "
            f"{up:>10} {down:>11} {cpu:>9} {rss:>11} {err:>9}",
            file=out,
        )


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def plot(cells: list[Cell], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system, style in (("heml", "o-"), ("TenSEAL naive", "s--"), ("floor (SEAL ops)", "^:")):
        for k in sorted({c.k for c in cells}):
            pts = [
                (c.d, c.median_s)
                for c in cells
                if c.system == system and c.k == k and c.n == 1 and c.median_s
            ]
            if pts:
                xs, ys = zip(*sorted(pts), strict=True)
                ax1.plot(xs, np.array(ys) * 1e3, style, label=f"{system}, k={k}")
    ax1.set(xscale="log", yscale="log", xlabel="features d", ylabel="one prediction (ms)")
    ax1.legend(fontsize=7)
    ax1.grid(True, which="both", alpha=0.3)
    for c_d in sorted({c.d for c in cells}):
        pts = [
            (c.n, c.per_second)
            for c in cells
            if c.system == "heml" and c.d == c_d and c.k == 1 and c.per_second
        ]
        if pts:
            xs, ys = zip(*sorted(pts), strict=True)
            ax2.plot(xs, ys, "o-", label=f"heml d={c_d}, k=1")
    ax2.set(xscale="log", yscale="log", xlabel="batch size n", ylabel="predictions per second")
    ax2.legend(fontsize=7)
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle("heml encrypted scoring (loopback gRPC, end to end)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark encrypted scoring beside its baselines")
    _add_args(p)
    p.set_defaults(func=lambda args: run(args))


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a small grid, under two minutes")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--out", default="bench-results", help="folder for JSON and PNG")
    p.add_argument(
        "--cap",
        type=float,
        default=BASELINE_CAP_SECONDS,
        help="seconds a baseline may take per cell before it is reported as not run",
    )
    p.add_argument("--no-goals", action="store_true", help="skip the goal table")
    p.add_argument("--no-grid", action="store_true", help="skip the per-size grid")
    p.add_argument("--dims", help="comma-separated d values (default: the full or quick set)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    dims = tuple(int(x) for x in args.dims.split(",")) if args.dims else None
    dims = dims or (QUICK_D if args.quick else FULL_D)
    ks = QUICK_K if args.quick else FULL_K
    ns = QUICK_N if args.quick else FULL_N
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    total = (0 if args.no_grid else len(dims) * len(ks) * len(ns)) + (0 if args.no_goals else 6)
    cells: list[Cell] = []
    goal_rows: list[dict] = []
    scaling: dict = {}
    # a bar only for a person at a terminal (logs and pipes get the tables alone)
    bar = {"disable": not sys.stderr.isatty()}
    with tqdm(total=total, desc="bench", file=sys.stderr, unit="cell", **bar) as progress:
        if not args.no_grid:
            cells = run_grid(dims, ks, ns, args.workers, args.quick, args.cap, progress)
        if not args.no_goals:
            goal_rows = goals(args.workers, args.quick, progress)
            scaling = worker_scaling(args.quick, progress)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}"
    )
    print(f"\nheml bench ({'quick' if args.quick else 'full'}) on {machine}")
    print(f"server workers: {args.workers}; loopback gRPC; medians (p95) over repetitions\n")
    if cells:
        print_grid(cells)
    if goal_rows:
        print("\nGoals (each beside its baseline from this run):")
        if args.quick:
            print(
                "  (--quick: batches of 16,384 instead of 65,536 and fewer repetitions, so MISS "
                "on a throughput goal is expected here; `heml bench --no-grid` measures the goals)"
            )
        for r in goal_rows:
            mark = "PASS" if r["pass"] else "MISS"
            print(f"  [{mark}] {r['goal']}: {r['heml']} (target {r['target']}; {r['baseline']})")
    if scaling:
        print(
            f"\nServer throughput, pre-encrypted 4096-sample blocks over 16 channels (d=32): "
            f"1 worker {scaling[1]:,.0f}/s, 2 workers {scaling[2]:,.0f}/s "
            f"(×{scaling['ratio']:.2f}; target ≥ 1.6)"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {
        "machine": machine,
        "quick": args.quick,
        "workers": args.workers,
        "seconds": time.perf_counter() - started,
        "cells": [asdict(c) for c in cells],
        "goals": goal_rows,
        "worker_scaling": {str(k): v for k, v in scaling.items()},
    }
    json_path = out_dir / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1, default=str))
    png = out_dir / f"bench-{stamp}.png"
    wrote_png = bool(cells) and plot(cells, png)
    print(f"\nwrote {json_path}" + (f" and {png}" if wrote_png else ""))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/latency.py", description=__doc__.splitlines()[0])
    _add_args(p)
    return run(p.parse_args(argv))
