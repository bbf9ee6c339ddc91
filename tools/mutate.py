"""`make mutate`: mutation testing of the modules that keep heml's promises (docs/testing.md).

Runs mutmut 3 with the scope and test selection in pyproject.toml ([tool.mutmut]) in steps:

1. the sanity function first (SANITY: a known guard mutant that every valid run kills); if its
   mutant is not killed the tests are not testing mutated code and the run stops there;
2. every selected mutant not yet checked, by name (mutmut re-runs any mutant named on its
   command line and keeps the results of the others);
3. after a crash of mutmut's fork server: the mutants it lost (in flight when it died) are set
   aside, the rest is resumed as in 2, then each lost mutant runs alone; one that crashes the
   fork server alone too is recorded as "crashed" (mutants/mutate-crashed.json).

Then prints the score per module and every mutant not killed, each classified against
tools/mutants-equivalent.toml as "equivalent: <reason>" or "MISSING TEST" (entries are keyed by
the mutant's function and its changed lines, not by mutant number; an entry that matches no
generated mutant is listed as stale). Exit code 0 only when every selected mutant has a result
and the sanity mutant was killed; 1 otherwise. The report says separately whether every
survivor is classified; `--check-equivalents` does only that classification (exit code 0 only
when the selected mutants all have a result and every one not killed is classified).

Equivalent mutants that a run saw survive are pinned to their function's syntax tree
(tools/mutants-equivalent.pins.json) and not run again while that tree, their change and their
entry are unchanged; they count as survivors in the score. `--all` runs them too;
`--pin-equivalents` rewrites the pins from the last results.

    python tools/mutate.py                 # fresh run, 2 mutants at a time
    python tools/mutate.py --jobs 1 --nice 15 --resume   # gentler; keep results, run the rest
    python tools/mutate.py --report        # only print the scores of the last run
    python tools/mutate.py --check-equivalents   # only classify the last run's survivors
    python tools/mutate.py --all           # the pinned equivalents too
    python tools/mutate.py --pin-equivalents     # pin the last run's equivalent survivors
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Iterator
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
    # the public plan of a fit with estimated bounds, refused before the spend (round 4)
    "heml.dp._private_bounds.x_plan_estimated_bounds*",
    "heml.dp._private_bounds.xǁPrivateBoundsǁ__post_init__*",
    "heml.dp._logistic.x_clipped_gradient_sum*",
    "heml.dp._logistic.x_dpgd_steps*",
    "heml.dp._logistic.x__dp_gradient_descent*",
    "heml.dp._logistic.x_amp_residual_sensitivity*",
    "heml.dp._linear.x__adassp*",
    # regression's DP gradient descent (issue 12, round 5): clipping, sigma, T and its cap, the
    # released average; the public checks made before the spend
    "heml.dp._linear.x__dp_gradient_descent*",
    "heml.dp._linear.x_clipped_residual_sum*",
    "heml.dp._linear.x_averaging_start*",
    "heml.dp._linear.x_max_steps*",
    "heml.dp._private_bounds.x_check_fit_plan*",
    "heml.dp._dpgd.*",
    # --- end of the HE/SDK/DP-accounting block ---
]
UNFOCUSED: list[str] = []

KILLED = {1, 3}  # mutmut: a test failed (3: pytest internal error, also a kill)
TIMEOUT = {36, -24, 24, 152, 255}
NO_TESTS = {5, 33}
SKIPPED = {34, 37}
# Mutants that crashed mutmut's fork server even when run alone: {name: how it is counted}.
CRASHED = "mutate-crashed.json"
MAX_STEPS = 12  # mutmut invocations after the sanity step before the tool gives up
SEP = "__mutmut_"
# The survivors judged equivalent, keyed by function and changed lines (docs/testing.md).
EQUIVALENTS = ROOT / "tools" / "mutants-equivalent.toml"
# The equivalents a full run saw survive, pinned to their function's syntax tree: such a mutant
# is not run again while that tree, its change and its entry are unchanged (`--all` runs
# them; `--pin-equivalents` rewrites the pins from the results under mutants/).
PINS = ROOT / "tools" / "mutants-equivalent.pins.json"


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
    skip: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """Selected mutants (focused and matching `globs`) without a result, in file order;
    `skip` (the pinned equivalents) are not run."""
    return [
        name
        for by_name in codes.values()
        for name, code in by_name.items()
        if code is None
        and name not in crashed
        and name not in skip
        and _focused(name)
        and _matches(name, globs)
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
def forget_unkilled(globs: list[str], mutants: Path | None = None) -> list[str]:
    """Set the result of every selected mutant that was not caught (survived, no tests,
    suspicious, crashed) back to "not run", so that ``--resume`` runs it again: after tests
    were added for survivors, only those are re-checked. Killed and timed-out mutants keep
    their results. Returns the names forgotten."""
    mutants = mutants or MUTANTS
    crashed = _crashed(mutants)
    forgotten = []
    for meta in sorted(mutants.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        for name, code in codes.items():
            if not (_focused(name) and _matches(name, globs)):
                continue
            if name not in crashed and (code is None or _status(code) in ("killed", "timeout")):
                continue
            codes[name] = None
            forgotten.append(name)
        meta.write_text(json.dumps(data))
    if crashed:
        left = {k: v for k, v in crashed.items() if k not in forgotten}
        (mutants / CRASHED).write_text(json.dumps(left, indent=1, sort_keys=True) + "\n")
    return forgotten


def stale_sources(root: Path | None = None, mutants: Path | None = None) -> list[str]:
    """The mutated files whose source under `root` is newer than mutmut's copy: their results
    under mutants/ are for code that has changed since."""
    root, mutants = root or ROOT, mutants or MUTANTS
    out = []
    for meta in sorted(mutants.rglob("*.py.meta")):
        path = str(meta.relative_to(mutants))[: -len(".meta")]
        source, copy = root / path, mutants / path
        if source.exists() and copy.exists() and source.stat().st_mtime > copy.stat().st_mtime:
            out.append(path)
    return out


def run(
    jobs: int,
    nice: int,
    keep: bool,
    only: list[str],
    run_all: bool = False,
    recheck: bool = False,
) -> bool:
    """Run mutmut in steps until every selected mutant has a result (the pinned equivalents
    excepted, unless `run_all`); True when it completed. `recheck`: keep the results but
    first forget those of the selected mutants not killed (`forget_unkilled`)."""
    keep = keep or recheck
    if keep and (changed := stale_sources()):
        # mutmut would regenerate these files' mutants only when invoked; with nothing left to
        # run the old results would be reported as the new code's
        print(f"the sources changed since the results under mutants/ ({', '.join(changed)}):")
        print("they are stale; run without --resume/--recheck")
        return False
    if recheck:  # only now: stale results are refused before anything is forgotten
        again = forget_unkilled(only or FOCUS)
        print(f"--recheck: {len(again)} mutant(s) not killed are run again")
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
        return _steps(jobs, nice, globs, clock, run_all)
    finally:
        wall, cpu = clock.total()
        print(f"mutmut: {len(clock.steps)} invocation(s), {wall:.1f} min, {cpu:.1f} CPU-min")


def _steps(jobs: int, nice: int, globs: list[str], clock: Clock, run_all: bool = False) -> bool:
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
    # the mutants are generated now: the pinned equivalents are left out (unless --all)
    skip: set[str] = set() if run_all else pinned(codes, crashed=_crashed())
    if skip:
        print(f"{len(skip)} pinned equivalent mutant(s) not run ({PINS.name}; --all runs them)")
    # 2. every selected mutant without a result; 3. after a crash, resume, then the lost alone
    suspects: list[str] = []
    confirm = True
    for step in range(1, MAX_STEPS + 1):
        crashed = _crashed()
        if not run_all and step > 1:
            # mutmut regenerates the mutants of an edited file at the start of a run (after a
            # --resume): the pins are checked again against what it wrote
            skip = pinned(codes, crashed=crashed)
        todo = [n for n in _pending(codes, globs, crashed, skip) if n not in suspects]
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
            left = len(_pending(codes, globs, _crashed(), skip))
            if left >= before:
                print(f"  mutmut (exit code {code}) made no progress (tail of .mutmut-run.log):")
                print("\n".join(output.splitlines()[-15:]))
                return False
            continue
        if not suspects:
            if confirm:
                # 4. a kill of a mutant listed as equivalent is run once more, one mutant at a
                # time: a kill that does not repeat was the run's, not the tests'
                confirm = False
                again = listed_kills(codes, globs, _crashed())
                if again:
                    _invoke(
                        f"confirm ({len(again)} kills of listed equivalents)", again, 1, nice, clock
                    )
                    codes = _meta_codes()
                    kept = sum(_status(_code_of(codes, n)) == "killed" for n in again)
                    print(f"  {kept} of {len(again)} killed again; the others survived")
                    continue
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


def listed_kills(
    codes: dict[str, dict[str, int | None]],
    globs: list[str],
    crashed: dict[str, str],
    mutants: Path | None = None,
    entries_path: Path | None = None,
) -> list[str]:
    """The selected mutants killed although an equivalents entry lists their function and
    change. Either the entry is wrong or the kill was not the tests' doing: in the run of
    983f734, 5 of 6 such kills did not repeat when the mutant ran again (a test's outcome
    that depended on what ran before it)."""
    killed = [
        name
        for by_name in codes.values()
        for name, code in by_name.items()
        if _focused(name)
        and _matches(name, globs)
        and name not in crashed
        and _status(code) == "killed"
    ]
    entries = load_equivalents(entries_path)
    verdicts = classify(killed, entries, mutant_diffs(killed, mutants))
    return [name for name in killed if verdicts[name] is not None]


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


# ------------------------------------------------------------------ equivalent mutants
_DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async[ \t]+)?def[ \t]+(?P<name>\w+)[ \t]*\(")


def _normalized(line: str) -> str:
    return " ".join(line.split())


# {SHA-256 of a mutated source: what _functions found in it}; see _functions
_PARSED: dict[str, dict[str, tuple[list[str], str | None]]] = {}


def _functions(source: str) -> dict[str, tuple[list[str], str | None]]:
    """{function name: (its lines, from the `def` line to the last line of its body; the
    SHA-256 of its syntax tree for an original, else None)} for every function whose name
    holds SEP (mutmut writes each mutant as a copy of the function named
    `<function>__mutmut_<n>`, beside the original `<function>__mutmut_orig`).

    The span is the parser's, so a comment or a string line at column 0 inside the body does
    not end it. The tree holds decorators, the nesting of every statement and every literal
    exactly; only comments and formatting are left out. A file that does not parse gives
    none: its mutants are then neither classified nor pinned. A mutated module is megabytes
    (`ast.parse` takes seconds), so each distinct source is parsed once per process."""
    key = hashlib.sha256(source.encode()).hexdigest()
    if key in _PARSED:
        return _PARSED[key]
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = None
    lines = source.splitlines()
    out = {}
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and SEP in node.name:
            orig = node.name.endswith(f"{SEP}orig")
            digest = hashlib.sha256(ast.dump(node).encode()).hexdigest() if orig else None
            out[node.name] = (lines[node.lineno - 1 : node.end_lineno], digest)
    if len(_PARSED) >= 64:  # a long run regenerates modules: keep the cache bounded
        _PARSED.clear()
    _PARSED[key] = out
    return out


def _module_functions(
    names: Iterable[str], mutants: Path
) -> Iterator[tuple[list[str], dict[str, tuple[list[str], str | None]]]]:
    """For each module of `names` (mutant or function names) whose mutated source is under
    `mutants`: (its names among `names`, `_functions` of that source)."""
    by_module: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_module[name.rsplit(".", 1)[0]].append(name)
    for module, members in by_module.items():
        path = mutants / (module.replace(".", "/") + ".py")
        if path.exists():
            yield members, _functions(path.read_text(encoding="utf-8"))


def _changed(orig: list[str], mutant: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The lines only the original has and the lines only the mutant has (normalized)."""
    a = [_normalized(x) for x in orig]
    b = [_normalized(x) for x in mutant]
    before: list[str] = []
    after: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            before += [x for x in a[i1:i2] if x]
            after += [x for x in b[j1:j2] if x]
    return tuple(before), tuple(after)


def mutant_diffs(
    names: list[str] | set[str], mutants: Path | None = None
) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """{mutant name: (lines before, lines after)} from the mutated sources under mutants/,
    what `mutmut show NAME` prints as - and + lines, whitespace-normalized. The `def` line
    counts with the mutant's number replaced, so a changed default argument shows too."""
    out = {}
    for members, functions in _module_functions(names, mutants or MUTANTS):
        for name in members:
            short = name.rsplit(".", 1)[-1]
            function = short.rsplit(SEP, 1)[0]
            orig, mutant = functions.get(f"{function}{SEP}orig"), functions.get(short)
            if orig is None or mutant is None:
                continue
            lines = [mutant[0][0].replace(short, f"{function}{SEP}orig", 1), *mutant[0][1:]]
            out[name] = _changed(orig[0], lines)
    return out


class Equivalent:
    """One entry of the equivalents file: every mutant of `function` whose changed lines are
    `before` → `after` (whitespace-normalized) is equivalent, for `reason`."""

    def __init__(self, function: str, before, after, reason: str, where: str) -> None:
        self.function = function
        self.before = self._lines(before, where)
        self.after = self._lines(after, where)
        self.reason = reason
        self.where = where

    @staticmethod
    def _lines(value, where: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = value.splitlines() if "\n" in value else [value]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError(f"{where}: before/after must be a string or a list of strings")
        return tuple(_normalized(x) for x in value if x.strip())

    def key(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        return self.function, self.before, self.after


def load_equivalents(path: Path | None = None) -> list[Equivalent]:
    """The entries of the equivalents file (none if it does not exist); a malformed entry
    (missing field, empty reason, the same key twice) stops the tool."""
    path = path or EQUIVALENTS
    if not path.exists():
        return []
    with open(path, "rb") as f:
        data = tomllib.load(f)
    entries: list[Equivalent] = []
    seen: set = set()
    for i, item in enumerate(data.get("equivalent", []), 1):
        where = f"{path.name} entry {i} ({item.get('function', '?')})"
        missing = [k for k in ("function", "before", "after", "reason") if k not in item]
        if missing:
            raise SystemExit(f"{where}: missing {', '.join(missing)}")
        extra = set(item) - {"function", "before", "after", "reason"}
        if extra:
            raise SystemExit(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
        if not str(item["reason"]).strip():
            raise SystemExit(f"{where}: empty reason")
        try:
            entry = Equivalent(
                item["function"], item["before"], item["after"], item["reason"], where
            )
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        if entry.key() in seen:
            raise SystemExit(f"{where}: the same function and change as an earlier entry")
        seen.add(entry.key())
        entries.append(entry)
    return entries


def classify(
    names: list[str],
    entries: list[Equivalent],
    diffs: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
) -> dict[str, Equivalent | None]:
    """{mutant name: the entry that declares it equivalent, or None (a missing test)}."""
    index = {e.key(): e for e in entries}
    out: dict[str, Equivalent | None] = {}
    for name in names:
        diff = diffs.get(name)
        out[name] = None if diff is None else index.get((_function_of(name), *diff))
    return out


def stale(
    entries: list[Equivalent], diffs: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
) -> list[Equivalent]:
    """The entries that match none of the generated mutants (`diffs`: all of them)."""
    keys = {(_function_of(name), *diff) for name, diff in diffs.items()}
    return [e for e in entries if e.key() not in keys]


# ------------------------------------------------------------------ pinned equivalents
def function_digests(functions: set[str], mutants: Path | None = None) -> dict[str, str]:
    """{function: SHA-256 of its original's syntax tree (`_functions`)}, read from the
    `<function>__mutmut_orig` copies under mutants/ (a function not found is left out)."""
    out = {}
    for members, parsed in _module_functions(functions, mutants or MUTANTS):
        for function in members:
            orig = parsed.get(f"{function.rsplit('.', 1)[-1]}{SEP}orig")
            if orig is not None:
                out[function] = orig[1]
    return out


Change = tuple[tuple[str, ...], tuple[str, ...]]


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"a key appears twice: {sorted(k for k in keys if keys.count(k) > 1)}")
    return dict(pairs)


def _lines_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise TypeError(f"a change's side must be a list of lines, not {value!r}")
    return tuple(value)


def load_pins(path: Path | None = None) -> dict[str, tuple[str, set[Change]]]:
    """{function: (digest of its syntax tree, {pinned change})}. Anything but the exact
    format (`{"pins": {function: {"sha256": 64 hex digits, "changes": [[[before lines],
    [after lines]], ...]}}}`, no key twice) stops the tool."""
    path = path or PINS
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
        if not isinstance(data, dict) or not isinstance(data.get("pins"), dict):
            raise TypeError("no 'pins' object")
        out = {}
        for function, pin in data["pins"].items():
            if not isinstance(pin, dict) or set(pin) != {"sha256", "changes"}:
                raise TypeError(f"{function}: keys must be sha256 and changes")
            digest, changes = pin["sha256"], pin["changes"]
            if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise TypeError(f"{function}: sha256 is not 64 hex digits")
            if not isinstance(changes, list) or not all(
                isinstance(c, list) and len(c) == 2 for c in changes
            ):
                raise TypeError(f"{function}: changes must be [before, after] pairs")
            out[function] = (digest, {(_lines_list(b), _lines_list(a)) for b, a in changes})
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"{path.name} is malformed ({exc}): restore it from git") from None
    return out


def pinned(
    codes: dict[str, dict[str, int | None]],
    mutants: Path | None = None,
    entries_path: Path | None = None,
    pins_path: Path | None = None,
    crashed: dict[str, str] | set[str] = (),
) -> set[str]:
    """The focused mutants without a result that are not run: each is listed as equivalent
    (its function and change match an entry), and its function's syntax tree and change are
    pinned (a run saw every mutant of that change survive at exactly this tree). Any edit of
    the function, or of the entry's function or lines, or a changed mutant unpins it, and it
    runs again. A mutant recorded as crashed is never pinned."""
    pins = load_pins(pins_path)
    names = [
        name
        for by_name in codes.values()
        for name, code in by_name.items()
        if code is None and name not in crashed and _focused(name) and _function_of(name) in pins
    ]
    if not names:
        return set()
    entries = {e.key() for e in load_equivalents(entries_path)}
    diffs = mutant_diffs(names, mutants)
    digests = function_digests({_function_of(name) for name in names}, mutants)
    out = set()
    for name in names:
        function, diff = _function_of(name), diffs.get(name)
        digest, changes = pins[function]
        if (
            diff is not None
            and digests.get(function) == digest
            and diff in changes
            and (function, *diff) in entries
        ):
            out.add(name)
    return out


def pin_equivalents(
    codes: dict[str, dict[str, int | None]],
    crashed: dict[str, str],
    mutants: Path | None = None,
    entries_path: Path | None = None,
    pins_path: Path | None = None,
) -> tuple[int, int]:
    """Rewrite the pins from the results under mutants/: every focused mutant that survived
    and is listed as equivalent is pinned to its function's syntax tree; a pin still valid for a
    mutant that was not run (it was pinned) is kept. A mutant killed, crashed, without tests
    or without an entry is not pinned. Returns (mutants pinned, functions)."""
    pins_path = pins_path or PINS
    entries = {e.key() for e in load_equivalents(entries_path)}
    open_, _ = _not_killed(codes, crashed)
    chosen = {name for name, status in open_.items() if status == "survived"}
    chosen |= pinned(codes, mutants, entries_path, pins_path, crashed)
    functions = {_function_of(name) for name in chosen}
    # every mutant of these functions: a change is pinned only when each mutant making it
    # (the same lines can change at two places) survived or was pinned
    members = [
        name
        for by_name in codes.values()
        for name in by_name
        if _focused(name) and _function_of(name) in functions
    ]
    diffs = mutant_diffs(members, mutants)
    digests = function_digests(functions, mutants)
    spoiled = {(_function_of(n), diffs.get(n)) for n in members if n not in chosen}
    new: dict[str, dict] = {}
    count = 0
    for name in sorted(chosen):
        function, diff = _function_of(name), diffs.get(name)
        if diff is None or function not in digests or (function, *diff) not in entries:
            continue
        if (function, diff) in spoiled:
            continue
        pin = new.setdefault(function, {"sha256": digests[function], "changes": []})
        if [list(diff[0]), list(diff[1])] not in pin["changes"]:
            pin["changes"].append([list(diff[0]), list(diff[1])])
        count += 1
    for pin in new.values():
        pin["changes"].sort()
    about = (
        "Written by `tools/mutate.py --pin-equivalents`: equivalent mutants (listed in "
        "mutants-equivalent.toml) that a run saw survive, pinned to the SHA-256 of their "
        "function's syntax tree. They are not run while tree, change and entry are unchanged; "
        "`--all` runs them (docs/testing.md)."
    )
    data = {"about": about, "pins": dict(sorted(new.items()))}
    tmp = pins_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, pins_path)
    return count, len(new)


def _not_killed(
    codes: dict[str, dict[str, int | None]],
    crashed: dict[str, str],
    skip: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, str], list[str]]:
    """({name: status} of the focused mutants with a result that were not killed, the
    pinned equivalents in `skip` among them, [names of the focused mutants killed or timed
    out])."""
    open_: dict[str, str] = {}
    caught: list[str] = []
    for by_name in codes.values():
        for name, code in by_name.items():
            if not _focused(name):
                continue
            if name in crashed:
                status = "killed" if crashed[name] == "killed" else "crashed"
            elif code is None and name in skip:
                status = "pinned, not run"
            else:
                status = _status(code)
            if status in ("killed", "timeout"):
                caught.append(name)
            elif status not in ("not checked", "skipped"):
                open_[name] = status
    return open_, caught


def check_equivalents(
    codes: dict[str, dict[str, int | None]],
    crashed: dict[str, str],
    mutants: Path | None = None,
    path: Path | None = None,
    skip: set[str] | frozenset[str] = frozenset(),
) -> tuple[int, int]:
    """Print every focused mutant not killed as "equivalent: <reason>" or "MISSING TEST" (with
    its change), the entries that match no generated mutant (stale) and those that match a
    killed mutant (the reason is wrong, or a test kills it now). Returns (equivalent, missing)."""
    path = path or EQUIVALENTS
    entries = load_equivalents(path)
    diffs = mutant_diffs({name for by_name in codes.values() for name in by_name}, mutants)
    open_, caught = _not_killed(codes, crashed, skip)
    verdicts = classify(list(open_), entries, diffs)
    print(f"\nmutants not killed, against {path.name} ({len(entries)} entries):")
    for name, status in open_.items():
        entry = verdicts[name]
        verdict = f"equivalent: {entry.reason}" if entry else "MISSING TEST"
        print(f"  {name} ({status}): {verdict}")
        if entry is None:
            before, after = diffs.get(name, (("(mutated source not found)",), ()))
            print("".join(f"      - {line}\n" for line in before), end="")
            print("".join(f"      + {line}\n" for line in after), end="")
    for entry in stale(entries, diffs):
        print(
            f"WARNING stale: {entry.where} matches no generated mutant "
            f"({' | '.join(entry.before)} -> {' | '.join(entry.after)})"
        )
    for name, entry in classify(caught, entries, diffs).items():
        if entry is not None:
            print(f"WARNING {name} is killed but {entry.where} lists it as equivalent")
    missing = sum(entry is None for entry in verdicts.values())
    print(f"equivalent: {len(verdicts) - missing}, MISSING TEST: {missing}")
    return len(verdicts) - missing, missing


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
    results: dict[str, dict[str, int | None]],
    crashed: dict[str, str],
    skip: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[tuple[str, dict[str, int]]], dict[str, int], list[str]]:
    """Per-module counts, totals and the not-killed mutants (the report's content).

    score = (killed + timed out + crashed counted as killed) / (mutants with a result + pinned
    equivalents): a pinned equivalent (in `skip`, not run) counts as a survivor, as it did in
    the run that pinned it, so the score is the one a run of every mutant gives. Mutants not
    yet run (an interrupted run) are counted apart, never as killed or survived."""
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
            status = "pinned" if code is None and name in skip else _status(code)
            c[status] += 1
            if status in ("survived", "no tests", "pinned") or status.startswith("suspicious"):
                survivors.append(f"{name}: {status}")
        c["pending"] = c["not checked"] + c["skipped"]
        c["run"] = len(codes) - c["pending"]
        if c["run"] == c["pinned"]:
            # nothing of this module ran (an interrupted run, --only elsewhere): its pinned
            # mutants wait with the rest, so the module shows no score rather than 0 %
            c["pending"] += c["pinned"]
            c["run"] = c["pinned"] = 0
        c["caught"] = c["killed"] + c["timeout"] + c["crash-kill"]
        rows.append((path, c))
        for key in (
            "run",
            "caught",
            "pending",
            "killed",
            "timeout",
            "survived",
            "crashed",
            "pinned",
        ):
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
    codes = _meta_codes()
    skip = pinned(codes, crashed=crashed)
    rows, total, _ = summarize(results, crashed, skip)
    head = f"{'module':26} {'run':>5} {'killed':>6} {'timeout':>7} {'crashed':>7} {'survived':>8}"
    print(f"\n{head} {'pinned':>6} {'no test':>7} {'score':>7} {'not run':>7}")
    for path, c in [*rows, ("all", total)]:
        print(
            f"{path:26} {c['run']:5} {c['killed']:6} {c['timeout']:7} {c['crashed']:7} "
            f"{c['survived']:8} {c['pinned']:6} {c['no tests']:7} {_score(c)} {c['pending']:7}"
        )
    if total["pinned"]:
        print(
            f"pinned: {total['pinned']} equivalent mutants not run ({PINS.name}), counted as "
            "survivors in the score; `--all` runs them"
        )
    # every mutant not killed, with its verdict (a missing test with its change)
    _, missing = check_equivalents(codes, crashed, skip=skip)
    left = _pending(codes, globs or FOCUS, crashed, skip)
    if left:
        print(f"\nNOT COMPLETE: {len(left)} selected mutant(s) have no result")
    _say_classified(missing, len(left))
    return _sanity(), not left


def _say_classified(missing: int, left: int) -> None:
    if missing:
        print(f"\nNOT EVERY SURVIVOR IS CLASSIFIED: {missing} MISSING TEST(S)")
    elif left:
        print("\nevery survivor so far is classified, but the run is not complete")
    else:
        print("\nevery survivor is classified (equivalent, with a reason)")


def check_only(globs: list[str] | None = None) -> int:
    """`--check-equivalents`: 0 when the selected mutants all have a result and every one
    not killed is listed as equivalent; 1 otherwise."""
    codes = _meta_codes()
    if not codes:
        print("no results under mutants/: run `make mutate` first")
        return 1
    crashed = _crashed()
    skip = pinned(codes, crashed=crashed)
    _, missing = check_equivalents(codes, crashed, skip=skip)
    left = len(_pending(codes, globs or FOCUS, crashed, skip))
    if left:
        print(f"NOT COMPLETE: {left} selected mutant(s) have no result")
    _say_classified(missing, left)
    return 0 if not missing and not left else 1


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


# Binaries that tests in the selection start (tests/cluster_support.py: a real redis-server for
# the interceptor's and the shared state's guards). Without one those tests skip, and the
# guards they cover look untested: a run on 2026-12-07 on a machine without redis-server left
# 37 MISSING TEST in the interceptor and servicer, all killed once it was installed.
SERVICES = ("redis-server",)


def missing_services() -> list[str]:
    """The SERVICES not found on PATH (nor in /usr/sbin, /sbin, where Debian puts some)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in SERVICES if shutil.which(name, path=path) is None]


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
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="keep the results under mutants/ but run every selected mutant not killed again "
        "(after tests were written for survivors); implies --resume",
    )
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument(
        "--only", action="append", default=[], help="run only mutants matching this glob (repeat)"
    )
    parser.add_argument(
        "--check-equivalents",
        action="store_true",
        help="only classify the last results' survivors against " + EQUIVALENTS.name,
    )
    parser.add_argument(
        "--all",
        dest="run_all",
        action="store_true",
        help="run the pinned equivalents too (" + PINS.name + ")",
    )
    parser.add_argument(
        "--pin-equivalents",
        action="store_true",
        help="only rewrite " + PINS.name + " from the last results: pin every survivor "
        "listed as equivalent to its function's syntax tree",
    )
    args = parser.parse_args(argv)
    if args.check_equivalents:
        return check_only(args.only or None)
    if args.pin_equivalents:
        codes = _meta_codes()
        if not codes:
            print("no results under mutants/: run `make mutate` first")
            return 1
        crashed = _crashed()
        if not _sanity() or _pending(codes, FOCUS, crashed, pinned(codes, crashed=crashed)):
            print(
                "nothing pinned: pins come only from a complete run whose sanity mutant was killed"
            )
            return 1
        count, functions = pin_equivalents(codes, crashed)
        print(f"{PINS.name}: {count} equivalent mutant(s) pinned in {functions} function(s)")
        return 0
    completed = True
    if not args.report and (missing := missing_services()):
        print(
            f"mutate: {', '.join(missing)} not installed: the guard tests that start it would "
            "skip and their mutants survive; install it first (as root: bash "
            ".ci/install-services.sh)"
        )
        return 2
    if not args.report:
        completed = run(
            max(1, args.jobs), args.nice, args.keep, args.only, args.run_all, args.recheck
        )
    sane, complete = report(args.only or None)
    _print_seconds()
    return 0 if completed and sane and complete else 1


if __name__ == "__main__":
    sys.exit(main())
