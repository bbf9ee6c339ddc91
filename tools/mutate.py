"""`make mutate`: mutation testing of the modules that keep heml's promises (docs/testing.md).

Runs mutmut 3 with the scope and test selection in pyproject.toml ([tool.mutmut]), then prints
the score per module and every surviving mutant, and checks that the run really tested mutated
code (a known guard mutant must be killed). Exit code 0 when the run completed, 1 when the
sanity check failed or mutmut did not finish.

    python tools/mutate.py                 # fresh run, 2 mutants at a time
    python tools/mutate.py --jobs 1 --nice 15 --keep   # gentler; reuse mutants/ results
    python tools/mutate.py --report        # only print the scores of the last run
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"

# A mutant every run must kill: the c0 range check of an uploaded ciphertext, flipped from
# `>=` to `>` (tests/test_guards_server.py). If it survives, the tests did not run the mutated
# code (e.g. the installed heml was imported instead of the copy under mutants/).
SANITY = ("heml/he/wire.py", "x_unpack_ciphertexts", "bad = c0 > np.uint64(q)")

# Mutants run and scored: the functions that enforce a promise. Modules in the scope
# ([tool.mutmut] only_mutate) but not matched here are generated and not run; the report
# counts only what matches (docs/testing.md says what is left out of each module and why).
FOCUS = [
    "heml.he.wire.*",
    "heml.he.params.*",
    "heml.server.registry.*",
    "heml.server.servicer.x_*",
    "heml.server.servicer.xǁBlockǁ*",
    "heml.server.servicer.xǁInferenceServicerǁPredict*",
    "heml.server.servicer.xǁInferenceServicerǁListModels*",
    "heml.server.servicer.xǁInferenceServicerǁGetModel*",
    "heml.server.servicer.xǁInferenceServicerǁRegisterKey*",
    "heml.server.servicer.xǁInferenceServicerǁ_take_quota*",
    # server: API keys (file, bearer metadata, lookup, reload), the shared quota table, and the
    # interceptor's per-call limits. Left out: KeyStore._warn_if_readable and Guard._status
    # (a log warning; the status word of the log line and the metrics).
    "heml.server.auth.x_*",
    "heml.server.auth.xǁApiKeyǁ*",
    "heml.server.auth.xǁKeyStoreǁ__init__*",
    "heml.server.auth.xǁKeyStoreǁ_file_stamp*",
    "heml.server.auth.xǁKeyStoreǁ_maybe_reload*",
    "heml.server.auth.xǁKeyStoreǁauthenticate*",
    "heml.server.quota.*",
    "heml.server.interceptor.x_*",
    "heml.server.interceptor.xǁCallContextǁ*",
    "heml.server.interceptor.xǁGuardǁ__init__*",
    "heml.server.interceptor.xǁGuardǁenter*",
    "heml.server.interceptor.xǁGuardǁexit*",
    "heml.server.interceptor.xǁGuardǁ_retry_after*",
    "heml.server.interceptor.xǁGuardǁadmit*",
    "heml.server.interceptor.xǁSecurityInterceptorǁ*",
    # DP: noise source, calibration, budget checks, ledger budgets, private bounds' EM.
    "heml.dp._noise.*",
    "heml.dp._calibration.*",
    "heml.dp._accountant.xǁBudgetAccountantǁcheck*",
    "heml.dp._accountant.xǁBudgetAccountantǁspend*",
    "heml.dp._accountant.xǁBudgetAccountantǁ_check_locked*",
    "heml.dp._accountant.x__canonical_ledger_path*",
    "heml.dp._accountant.x__exceeds*",
    "heml.dp._accountant.x__check_epsilon*",
    "heml.dp._accountant.x__check_delta*",
    "heml.dp._ledger.x_budgets*",
    "heml.dp._ledger.x__pick*",
    "heml.dp._ledger.x_accountant_for*",
    "heml.dp._ledger.x_reserve*",
    "heml.dp._private_bounds.x_em_probabilities*",
    "heml.dp._private_bounds.x_box_utility*",
    "heml.dp._private_bounds.x__draw*",
    "heml.dp._private_bounds.x__uniform*",
    # model privacy: p0 degeneracy, key ids, the quota cap.
    "heml.he.private.x_check_public_key_p0*",
    "heml.he.private.x_valid_key_id*",
    "heml.he.private.x_key_id_of*",
    "heml.he.private.x_check_private_quota*",
    "heml.he.private.x_max_private_quota*",
    "heml.he.private.x_weight_equations_needed*",
    "heml.he.private.xǁPublicKeyStoreǁtake*",
    # SDK reply validation: range check and flooding.
    "heml.he.decrypt.x_check_range*",
    "heml.he.decrypt.x_uniform_noise*",
    "heml.he.decrypt.x_flood*",
    "heml.he.plan.x_flood_bound*",
    "heml.he.plan.x_key_noise_bound*",
    "heml.he.plan.x__switch_error*",
    # --- HE, SDK reply validation and DP accounting (issue 18, second round) ---
    "heml.he.prng.*",
    "heml.he.encrypt.*",
    "heml.he.decrypt.*",
    "heml.he.codec.xǁClientCodecǁdecrypt*",
    "heml.he.codec.xǁClientCodecǁreply_count*",
    "heml.he.codec.x__row_decrypt*",
    "heml.he.codec.x__column_decrypt*",
    "heml.he.codec.x_recombine*",
    "heml.he.private.x_make_private_plan*",
    "heml.he.private.x_key_p1*",
    "heml.he.private.x_unpack_rns_ciphertexts*",
    "heml.he.private.x__gaussian_residues*",
    "heml.he.private.xǁPublicKeyStoreǁ*",
    "heml.he.private.xǁPrivateEvaluatorǁ*",
    "heml.he.keys.xǁKeySetǁfor_peer*",
    "heml.he.keys.xǁKeySetǁretire*",
    "heml.client.xǁRemoteModelǁ_check_not_retired*",
    "heml.client.xǁRemoteModelǁ_key_retired*",
    "heml.client.xǁRemoteModelǁ_decrypt*",
    "heml.dp._base.xǁDPEstimatorMixinǁ_reserve*",
    "heml.dp._base.xǁDPEstimatorMixinǁ_begin_fit*",
    "heml.dp._accountant.*",
    "heml.dp._ledger.*",
    "heml.dp._validation.*",
    # DP estimators' calibration (issue 18, third round): the zCDP budget split and its
    # re-check, DP-GD's clipping and sigma, AdaSSP's three noise scales, AMP's residual.
    "heml.dp._private_bounds.x_split_budget*",
    "heml.dp._private_bounds.x_zcdp_delta*",
    "heml.dp._private_bounds.x_zcdp_rho*",
    "heml.dp._private_bounds.x_gaussian_rho*",
    "heml.dp._private_bounds.x_per_release_epsilon*",
    "heml.dp._private_bounds.x_check_zcdp_total*",
    "heml.dp._logistic.x_clipped_gradient_sum*",
    "heml.dp._logistic.x_dpgd_steps*",
    "heml.dp._logistic.x__dp_gradient_descent*",
    "heml.dp._logistic.x_amp_residual_sensitivity*",
    "heml.dp._linear.x__adassp*",
    # --- end of the HE/SDK/DP-accounting block ---
]
UNFOCUSED: list[str] = []

KILLED = {1, 3}  # mutmut: a test failed (3: pytest internal error, also a kill)
TIMEOUT = {36, -24, 24, 152, 255}
NO_TESTS = {5, 33}
SKIPPED = {34, 37}
SHOW = 200  # survivors listed at the end of the report


def _mutmut(*args: str, nice: int = 0) -> list[str]:
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.exists():
        raise SystemExit("mutmut is not installed here; run: pip install -e '.[dev]'")
    cmd = [str(exe), *args]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    return cmd


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Subprocesses the tests start (`python -m heml ...`) must import the mutated copy too;
    # mutmut only fixes sys.path inside its own processes.
    env["PYTHONPATH"] = str(MUTANTS)
    env.pop("MUTANT_UNDER_TEST", None)
    return env


def run(jobs: int, nice: int, keep: bool, only: list[str]) -> int:
    if not keep and MUTANTS.exists():
        shutil.rmtree(MUTANTS)
    # The folder must exist before Python starts: a PYTHONPATH entry that is missing at start-up
    # is cached as "nothing here" and the unmutated heml would be imported instead.
    MUTANTS.mkdir(exist_ok=True)
    started = time.monotonic()
    cmd = _mutmut("run", "--max-children", str(jobs), *(only or FOCUS), nice=nice)
    with open(ROOT / ".mutmut-run.log", "w") as log:
        code = subprocess.call(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    minutes = (time.monotonic() - started) / 60
    # CPU time of mutmut and every test process it forked: unlike the wall time it does not
    # depend on what else the machine runs, so it projects the time of a run on idle cores
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime + usage.ru_stime) / 60
    print(
        f"mutmut run: exit code {code} after {minutes:.1f} min, {cpu:.1f} CPU-min "
        f"(log: .mutmut-run.log)"
    )
    return code


def _results() -> dict[str, dict[str, int | None]]:
    """{source file: {mutant name: exit code}} from mutmut's .meta files."""
    out = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = {k: v for k, v in data["exit_code_by_key"].items() if _focused(k)}
        if codes:
            out[str(meta.relative_to(MUTANTS))[: -len(".meta")]] = codes
    return out


def _focused(name: str) -> bool:
    return any(fnmatch.fnmatch(name, g) for g in FOCUS) and not any(
        fnmatch.fnmatch(name, g) for g in UNFOCUSED
    )


def _status(code: int | None) -> str:
    if code in KILLED:
        return "killed"
    if code in TIMEOUT:
        return "timeout"
    if code in NO_TESTS:
        return "no tests"
    if code in SKIPPED:
        return "skipped"
    if code == 0:
        return "survived"
    return "not checked" if code is None else f"suspicious ({code})"


def report() -> bool:
    """Print the score per module and the survivors; return whether the sanity check passed.

    score = (killed + timed out) / mutants run; mutants not yet run (an interrupted run) are
    counted apart, never as killed or survived."""
    results = _results()
    if not results:
        print("no results under mutants/: run `make mutate` first")
        return False
    head = f"{'module':26} {'run':>5} {'killed':>6} {'timeout':>7} {'survived':>8} {'no test':>7}"
    print(f"\n{head} {'score':>7} {'not run':>7}")
    total = defaultdict(int)
    survivors: list[str] = []
    for path, codes in results.items():
        c = defaultdict(int)
        for name, code in codes.items():
            status = _status(code)
            c[status] += 1
            if status in ("survived", "no tests") or status.startswith("suspicious"):
                survivors.append(f"{name}: {status}")
        pending = c["not checked"] + c["skipped"]
        run_ = len(codes) - pending
        caught = c["killed"] + c["timeout"]
        score = 100.0 * caught / run_ if run_ else 0.0
        print(
            f"{path:26} {run_:5} {c['killed']:6} {c['timeout']:7} {c['survived']:8} "
            f"{c['no tests']:7} {score:6.1f}% {pending:7}"
        )
        for key, value in (("run", run_), ("caught", caught), ("pending", pending)):
            total[key] += value
    score = 100.0 * total["caught"] / total["run"] if total["run"] else 0.0
    print(f"{'all':26} {total['run']:5} {'':33} {score:6.1f}% {total['pending']:7}")
    if survivors:
        print(f"\n{len(survivors)} mutant(s) not killed (`mutmut show NAME` prints the change):")
        for line in survivors[:SHOW]:
            print("  " + line)
        if len(survivors) > SHOW:
            print(f"  ... and {len(survivors) - SHOW} more (`mutmut results`)")
    return _sanity(results)


def _sanity(results) -> bool:
    path, function, line = SANITY
    codes = results.get(path)
    if codes is None:
        print(f"\nsanity check skipped: {path} is not in the mutation scope")
        return True
    source = (MUTANTS / path).read_text()
    for name, code in codes.items():
        short = name.rsplit(".", 1)[-1]
        if not short.startswith(function + "__mutmut_"):
            continue
        start = source.find(f"def {short}(")
        body = source[start : source.find("\ndef ", start + 1)]
        if line in body:
            ok = _status(code) == "killed"
            verdict = "killed, as it must be" if ok else f"{_status(code)}: THE RUN IS NOT VALID"
            print(f"\nsanity check: {name} ({line!r}) {verdict}")
            return ok
    print(f"\nsanity check: no mutant of {path} contains {line!r}: THE RUN IS NOT VALID")
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants at once")
    parser.add_argument("--nice", type=int, default=0, help="run mutmut under nice -n N")
    parser.add_argument("--keep", action="store_true", help="reuse results under mutants/")
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument(
        "--only", action="append", default=[], help="run only mutants matching this glob (repeat)"
    )
    args = parser.parse_args(argv)
    code = 0 if args.report else run(max(1, args.jobs), args.nice, args.keep, args.only)
    ok = report()
    return 0 if code == 0 and ok else 1


if __name__ == "__main__":
    sys.exit(main())
