"""`make mutate`: mutation testing of the modules that keep heml's promises (docs/testing.md).

Runs mutmut 3 with the scope and test selection in pyproject.toml ([tool.mutmut]) in steps:

1. the sanity function first (SANITY: a known guard mutant that every valid run kills); if its
   mutant is not killed the tests are not testing mutated code and the run stops there;
2. every selected mutant not yet checked, by name (mutmut re-runs any mutant named on its
   command line and keeps the results of the others);
3. after a crash of mutmut's fork server: the mutants it lost (in flight when it died) are set
   aside, the rest is resumed as in 2, then each lost mutant runs alone; one that crashes the
   fork server alone too is recorded as "crashed" (mutants/mutate-crashed.json).

Then prints the score per module and every surviving mutant. Exit code 0 only when every
selected mutant has a result and the sanity mutant was killed; 1 otherwise.

    python tools/mutate.py                 # fresh run, 2 mutants at a time
    python tools/mutate.py --jobs 1 --nice 15 --resume   # gentler; keep results, run the rest
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
    # the feature boxes' graded width utility (sensitivity 1, summed exactly) and the row clip
    # of estimated bounds (issue 12, third round)
    "heml.dp._private_bounds.x_width_utility*",
    "heml.dp._private_bounds.x_private_box*",
    "heml.dp._private_bounds.x_estimated_row_norm*",
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
# Mutants that crashed mutmut's fork server even when run alone: {name: how it is counted}.
CRASHED = "mutate-crashed.json"
MAX_STEPS = 12  # mutmut invocations after the sanity step before the tool gives up
SEP = "__mutmut_"


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


class Clock:
    """Wall and CPU minutes of the mutmut invocations (CPU: mutmut and every test process it
    waited for; unlike the wall time it hardly depends on what else the machine runs, so it
    projects the time of a run on idle cores)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.steps: list[tuple[str, float, float, int]] = []

    @staticmethod
    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (usage.ru_utime + usage.ru_stime) / 60

    def total(self) -> tuple[float, float]:
        return (time.monotonic() - self.started) / 60, self.cpu()


def _invoke(step: str, args: list[str], jobs: int, nice: int, clock: Clock) -> tuple[int, str]:
    """One `mutmut run`; returns its exit code and its output (also in .mutmut-run.log)."""
    cmd = _mutmut("run", "--max-children", str(jobs), *args, nice=nice)
    wall0, cpu0 = time.monotonic(), clock.cpu()
    log_path = ROOT / ".mutmut-run.log"
    with open(log_path, "a") as log:
        log.write(f"\n===== {step}: mutmut run with {len(args)} name(s)/glob(s)\n")
        log.flush()
        offset = log.tell()
        code = subprocess.call(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    with open(log_path, errors="replace") as log:
        log.seek(offset)
        output = log.read()
    wall, cpu = (time.monotonic() - wall0) / 60, clock.cpu() - cpu0
    clock.steps.append((step, wall, cpu, code))
    print(f"{step}: mutmut exit code {code}, {wall:.1f} min, {cpu:.1f} CPU-min", flush=True)
    return code, output


# ------------------------------------------------------------------ results and selection
def _meta_codes(mutants: Path | None = None) -> dict[str, dict[str, int | None]]:
    """{source file: {mutant name: exit code or None}} from mutmut's .meta files (all mutants)."""
    mutants = mutants or MUTANTS
    out = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        out[str(meta.relative_to(mutants))[: -len(".meta")]] = dict(data["exit_code_by_key"])
    return out


def _matches(name: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, g) for g in globs)


def _focused(name: str) -> bool:
    return _matches(name, FOCUS) and not _matches(name, UNFOCUSED)


def _results(mutants: Path | None = None) -> dict[str, dict[str, int | None]]:
    """{source file: {mutant name: exit code}} of the focused mutants."""
    mutants = mutants or MUTANTS
    out = {}
    for path, codes in _meta_codes(mutants).items():
        focused = {k: v for k, v in codes.items() if _focused(k)}
        if focused:
            out[path] = focused
    return out


def _crashed(mutants: Path | None = None) -> dict[str, str]:
    mutants = mutants or MUTANTS
    path = mutants / CRASHED
    return json.loads(path.read_text()) if path.exists() else {}


def _record_crash(name: str, verdict: str, mutants: Path | None = None) -> None:
    mutants = mutants or MUTANTS
    crashed = _crashed(mutants)
    crashed[name] = verdict
    (mutants / CRASHED).write_text(json.dumps(crashed, indent=1, sort_keys=True) + "\n")


def _pending(
    codes: dict[str, dict[str, int | None]],
    globs: list[str],
    crashed: dict[str, str] | set[str] = (),
) -> list[str]:
    """Selected mutants (focused and matching `globs`) without a result, in file order."""
    return [
        name
        for by_name in codes.values()
        for name, code in by_name.items()
        if code is None and name not in crashed and _focused(name) and _matches(name, globs)
    ]


def _function_of(name: str) -> str:
    return name.rsplit(SEP, 1)[0]


def _arguments(names: list[str], codes: dict[str, dict[str, int | None]]) -> list[str]:
    """mutmut arguments that select exactly `names`.

    A function all of whose mutants are in `names` becomes one glob (`F__mutmut_*`) plus its
    first mutant by name: the glob keeps the command line and mutmut's matching (every mutant
    against every argument) short, and the exact name makes mutmut include the function's tests
    in its clean run (it matches globs against function names, not mutant names, for that)."""
    wanted = set(names)
    by_function: dict[str, list[str]] = defaultdict(list)
    for by_name in codes.values():
        for name in by_name:
            by_function[_function_of(name)].append(name)
    args: list[str] = []
    done: set[str] = set()
    for name in names:
        function = _function_of(name)
        if function in done:
            continue
        done.add(function)
        members = by_function.get(function, [name])
        chosen = [m for m in members if m in wanted]
        if len(chosen) == len(members) and not any(c in function for c in "*?["):
            args += [f"{function}{SEP}*", chosen[0]]
        else:
            args += chosen
    return args


def _lost(output: str) -> list[str] | None:
    """The mutants a fork-server crash lost (in flight when it died), or None: no crash."""
    if "ForkServerCrashError" not in output and "Fork server crashed" not in output:
        return None
    lost: list[str] = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("Lost ") and "in-flight mutant" in line:
            for follow in lines[i + 1 :]:
                item = follow.strip()
                if not item.startswith("- "):
                    break
                lost.append(item[2:].strip())
            break
    return lost


def _sanity_name(
    codes: dict[str, dict[str, int | None]], mutants: Path | None = None
) -> str | None:
    """The name of the sanity mutant (SANITY's changed line in SANITY's function), or None."""
    mutants = mutants or MUTANTS
    path, function, line = SANITY
    if path not in codes or not (mutants / path).exists():
        return None
    source = (mutants / path).read_text()
    for name in codes[path]:
        short = name.rsplit(".", 1)[-1]
        if not short.startswith(function + SEP):
            continue
        start = source.find(f"def {short}(")
        if start < 0:
            continue
        body = source[start : source.find("\ndef ", start + 1)]
        if line in body:
            return name
    return None


def _sanity_glob() -> str:
    path, function, _ = SANITY
    return path[: -len(".py")].replace("/", ".") + f".{function}{SEP}*"


# ------------------------------------------------------------------ the run
def run(jobs: int, nice: int, keep: bool, only: list[str]) -> bool:
    """Run mutmut in steps until every selected mutant has a result; True when it completed."""
    if not keep and MUTANTS.exists():
        shutil.rmtree(MUTANTS)
    # The folder must exist before Python starts: a PYTHONPATH entry that is missing at start-up
    # is cached as "nothing here" and the unmutated heml would be imported instead.
    MUTANTS.mkdir(exist_ok=True)
    if not keep:
        (ROOT / ".mutmut-run.log").write_text("")
    globs = only or FOCUS
    clock = Clock()
    try:
        return _steps(jobs, nice, globs, clock)
    finally:
        wall, cpu = clock.total()
        print(f"mutmut: {len(clock.steps)} invocation(s), {wall:.1f} min, {cpu:.1f} CPU-min")


def _steps(jobs: int, nice: int, globs: list[str], clock: Clock) -> bool:
    # 1. the sanity mutant first: a run that does not test mutated code stops here
    codes = _meta_codes()
    sanity = _sanity_name(codes)
    if sanity is None or codes[SANITY[0]][sanity] is None:
        if sanity is None:
            # generates all mutants and collects the tests' coverage; the exact name (of the
            # function's first mutant) limits mutmut's clean run to the function's tests
            args = [_sanity_glob(), _sanity_glob()[:-1] + "1"]
        else:
            args = _arguments(_pending(codes, [_sanity_glob()]), codes) or [sanity]
        code, output = _invoke("sanity step", args, jobs, nice, clock)
        codes = _meta_codes()
        sanity = _sanity_name(codes)
        if sanity is None or _status(codes[SANITY[0]][sanity]) != "killed":
            print("the sanity mutant was not killed: the run stops (tail of .mutmut-run.log):")
            print("\n".join(output.splitlines()[-15:]))
            return False
    # 2. every selected mutant without a result; 3. after a crash, resume, then the lost alone
    suspects: list[str] = []
    for step in range(1, MAX_STEPS + 1):
        crashed = _crashed()
        todo = [n for n in _pending(codes, globs, crashed) if n not in suspects]
        if todo:
            before = len(todo)
            code, output = _invoke(
                f"step {step} ({before} mutants)", _arguments(todo, codes), jobs, nice, clock
            )
            codes = _meta_codes()
            lost = _lost(output)
            if lost is not None:
                lost = [n for n in lost if _code_of(codes, n) is None] or _guess_lost(
                    codes, todo, output
                )
                print(f"  fork server crashed; in flight: {', '.join(lost) or 'unknown'}")
                suspects += [n for n in lost if n not in suspects]
                continue
            left = len(_pending(codes, globs, _crashed()))
            if left >= before:
                print(f"  mutmut (exit code {code}) made no progress (tail of .mutmut-run.log):")
                print("\n".join(output.splitlines()[-15:]))
                return False
            continue
        if not suspects:
            return True
        name = suspects.pop(0)
        if _code_of(codes, name) is not None or name in crashed:
            continue
        code, output = _invoke(f"alone: {name}", [name], 1, nice, clock)
        codes = _meta_codes()
        if _code_of(codes, name) is None:
            if _lost(output) is None:
                print("  no result and no crash (tail of .mutmut-run.log):")
                print("\n".join(output.splitlines()[-15:]))
                return False
            verdict = _crash_verdict(name)
            _record_crash(name, verdict)
            print(f"  {name} crashes the fork server alone too: counted as {verdict}")
    print(f"gave up after {MAX_STEPS} steps")
    return False


def _code_of(codes: dict[str, dict[str, int | None]], name: str) -> int | None:
    for by_name in codes.values():
        if name in by_name:
            return by_name[name]
    return None


def _guess_lost(codes, todo: list[str], output: str) -> list[str]:
    """A crash message without the list of lost mutants: the mutants of the step that still
    have no result and that the log mentions (mutmut's debug log names each submitted one)."""
    return [n for n in todo if _code_of(codes, n) is None and n in output][:4]


def _crash_verdict(name: str) -> str:
    """How a mutant that crashes the fork server on its own too counts (docs/testing.md).

    The fork server is mutmut's process, not the code under test: each mutant's tests run in
    a process forked from it, and that process's failure (a test failing, a crash, a timeout)
    is reported as the mutant's result without touching the fork server. The fork server dies
    only from outside: the one crash seen (the first full run) was the kernel's OOM killer,
    after test processes had left idle joblib workers behind (tests/conftest.py now stops
    them). A crash is therefore a fault of the run, not a test detecting the mutant: it is
    shown as "crashed" and scored as not killed, to be looked at."""
    return "crashed"


# ------------------------------------------------------------------ report
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


def summarize(
    results: dict[str, dict[str, int | None]], crashed: dict[str, str]
) -> tuple[list[tuple[str, dict[str, int]]], dict[str, int], list[str]]:
    """Per-module counts, totals and the not-killed mutants (the report's content).

    score = (killed + timed out + crashed counted as killed) / mutants with a result; mutants
    not yet run (an interrupted run) are counted apart, never as killed or survived."""
    rows = []
    total: dict[str, int] = defaultdict(int)
    survivors: list[str] = []
    for path, codes in results.items():
        c: dict[str, int] = defaultdict(int)
        for name, code in codes.items():
            if name in crashed:
                status = "crashed"
                c["crashed"] += 1
                if crashed[name] == "killed":
                    c["crash-kill"] += 1
                else:
                    survivors.append(f"{name}: crashed the fork server (not counted as killed)")
                continue
            status = _status(code)
            c[status] += 1
            if status in ("survived", "no tests") or status.startswith("suspicious"):
                survivors.append(f"{name}: {status}")
        c["pending"] = c["not checked"] + c["skipped"]
        c["run"] = len(codes) - c["pending"]
        c["caught"] = c["killed"] + c["timeout"] + c["crash-kill"]
        rows.append((path, c))
        for key in ("run", "caught", "pending", "killed", "timeout", "survived", "crashed"):
            total[key] += c[key]
        total["no tests"] += c["no tests"]
    return rows, total, survivors


def _score(c) -> str:
    return f"{100.0 * c['caught'] / c['run']:6.1f}%" if c["run"] else "     -"


def report(globs: list[str] | None = None) -> tuple[bool, bool]:
    """Print the score per module and the survivors.

    Returns (sanity mutant killed, every selected mutant has a result); `globs` selects the
    mutants the run was asked for (FOCUS when None)."""
    results = _results()
    if not results:
        print("no results under mutants/: run `make mutate` first")
        return False, False
    crashed = _crashed()
    rows, total, survivors = summarize(results, crashed)
    head = f"{'module':26} {'run':>5} {'killed':>6} {'timeout':>7} {'crashed':>7} {'survived':>8}"
    print(f"\n{head} {'no test':>7} {'score':>7} {'not run':>7}")
    for path, c in rows:
        print(
            f"{path:26} {c['run']:5} {c['killed']:6} {c['timeout']:7} {c['crashed']:7} "
            f"{c['survived']:8} {c['no tests']:7} {_score(c)} {c['pending']:7}"
        )
    t = total
    print(
        f"{'all':26} {t['run']:5} {t['killed']:6} {t['timeout']:7} {t['crashed']:7} "
        f"{t['survived']:8} {t['no tests']:7} {_score(t)} {t['pending']:7}"
    )
    if survivors:
        print(f"\n{len(survivors)} mutant(s) not killed (`mutmut show NAME` prints the change):")
        for line in survivors[:SHOW]:
            print("  " + line)
        if len(survivors) > SHOW:
            print(f"  ... and {len(survivors) - SHOW} more (`mutmut results`)")
    left = _pending(_meta_codes(), globs or FOCUS, crashed)
    if left:
        print(f"\nNOT COMPLETE: {len(left)} selected mutant(s) have no result")
    return _sanity(), not left


def _sanity() -> bool:
    codes = _meta_codes()
    name = _sanity_name(codes)
    if name is None:
        print(f"\nsanity check: no mutant of {SANITY[0]} contains {SANITY[2]!r}: NOT VALID")
        return False
    status = _status(codes[SANITY[0]][name])
    ok = status == "killed"
    verdict = "killed, as it must be" if ok else f"{status}: THE RUN IS NOT VALID"
    print(f"\nsanity check: {name} ({SANITY[2]!r}) {verdict}")
    return ok


def _mutant_seconds(log: Path | None = None) -> dict[str, tuple[int, float]]:
    """{module: (mutants, seconds)}: each mutant's test process time from start to end, summed,
    from mutmut's debug log (`log_to_file` in [tool.mutmut]); the last entry of a mutant wins."""
    log = log or MUTANTS / "mutmut-debug.log"
    if not log.exists():
        return {}
    seen: dict[str, float] = {}
    with open(log, errors="replace") as lines:
        for line in lines:
            if " Completed " not in line or "s)" not in line:
                continue
            try:
                name = line.split(" Completed ", 1)[1].split(": exit=", 1)[0]
                seconds = float(line.rsplit("(", 1)[1].split("s)", 1)[0])
            except (IndexError, ValueError):
                continue
            seen[name] = seconds
    out: dict[str, tuple[int, float]] = {}
    for name, seconds in seen.items():
        module = name.rsplit(".", 1)[0]
        count, total = out.get(module, (0, 0.0))
        out[module] = (count + 1, total + seconds)
    return out


def _print_seconds() -> None:
    timing = _mutant_seconds()
    if not timing:
        return
    print("\nseconds per module (each mutant's test process, start to end; mutmut-debug.log):")
    for module, (count, total) in sorted(timing.items(), key=lambda kv: -kv[1][1]):
        print(f"  {module:34} {count:5} mutants {total:8.0f} s  {total / count:5.1f} s each")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants at once")
    parser.add_argument("--nice", type=int, default=0, help="run mutmut under nice -n N")
    parser.add_argument(
        "--resume",
        "--keep",
        dest="keep",
        action="store_true",
        help="keep the results under mutants/ and run only the mutants without one",
    )
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument(
        "--only", action="append", default=[], help="run only mutants matching this glob (repeat)"
    )
    args = parser.parse_args(argv)
    completed = True
    if not args.report:
        completed = run(max(1, args.jobs), args.nice, args.keep, args.only)
    sane, complete = report(args.only or None)
    _print_seconds()
    return 0 if completed and sane and complete else 1


if __name__ == "__main__":
    sys.exit(main())
