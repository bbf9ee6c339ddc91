"""tools/mutate.py's own logic (`make mutate`): reading mutmut's results, choosing what to run
next after an interrupted or crashed run, the crash record, the score and the sanity check.

No mutmut run: the unit under test is the tool's parser and selection, fed with mutants/ folders
written here in mutmut 3's format (a `<file>.py.meta` JSON beside the mutated `<file>.py`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "mutate_tool", Path(__file__).resolve().parent.parent / "tools" / "mutate.py"
)
mutate = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mutate)

WIRE = "heml.he.wire.x_unpack_ciphertexts__mutmut_"
NOISE = "heml.dp._noise.xǁNoiseSourceǁrelease__mutmut_"


def write_meta(root: Path, path: str, codes: dict, source: str = "") -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    meta = {"exit_code_by_key": codes, "durations_by_key": {}, "hash_by_function_name": {}}
    Path(str(target) + ".meta").write_text(json.dumps(meta))


def wire_source(numbers: range, sanity: int) -> str:
    """A mutated wire.py as mutmut writes it: one `def` per mutant of the function."""
    parts = []
    for n in numbers:
        line = mutate.SANITY[2] if n == sanity else f"bad = c0 >= np.uint64(q) + {n}"
        parts.append(
            f"def x_unpack_ciphertexts__mutmut_{n}(data, q):\n    {line}\n    return bad\n"
        )
    return "\n".join(parts)


@pytest.fixture
def mutants(tmp_path):
    """wire.py (sanity mutant = #3, killed), _noise.py half run, an unfocused mutant."""
    write_meta(
        tmp_path,
        "heml/he/wire.py",
        {f"{WIRE}{n}": 1 for n in range(1, 5)},
        wire_source(range(1, 5), sanity=3),
    )
    write_meta(
        tmp_path,
        "heml/dp/_noise.py",
        {f"{NOISE}1": 1, f"{NOISE}2": None, f"{NOISE}3": 0, f"{NOISE}4": None},
    )
    write_meta(tmp_path, "heml/dp/_base.py", {"heml.dp._base.x_unlisted__mutmut_1": None})
    return tmp_path


def test_meta_codes_reads_every_meta_file(mutants):
    codes = mutate._meta_codes(mutants)
    assert set(codes) == {"heml/he/wire.py", "heml/dp/_noise.py", "heml/dp/_base.py"}
    assert codes["heml/dp/_noise.py"][f"{NOISE}2"] is None
    assert codes["heml/dp/_noise.py"][f"{NOISE}3"] == 0


def test_results_keep_only_focused_mutants(mutants):
    results = mutate._results(mutants)
    assert "heml/dp/_base.py" not in results  # x_unlisted matches no FOCUS glob
    assert len(results["heml/dp/_noise.py"]) == 4


def test_pending_is_the_focused_selected_mutants_without_a_result(mutants):
    codes = mutate._meta_codes(mutants)
    assert mutate._pending(codes, mutate.FOCUS) == [f"{NOISE}2", f"{NOISE}4"]
    # --only narrows it; a recorded crasher is not run again
    assert mutate._pending(codes, ["heml.he.*"]) == []
    assert mutate._pending(codes, mutate.FOCUS, {f"{NOISE}2": "crashed"}) == [f"{NOISE}4"]


def test_arguments_name_each_mutant_when_part_of_a_function_is_done(mutants):
    codes = mutate._meta_codes(mutants)
    todo = mutate._pending(codes, mutate.FOCUS)
    assert mutate._arguments(todo, codes) == todo


def test_arguments_use_one_glob_and_one_name_for_a_whole_function(mutants):
    codes = mutate._meta_codes(mutants)
    names = [f"{WIRE}{n}" for n in range(1, 5)]
    args = mutate._arguments(names, codes)
    assert args == [f"{WIRE}*", f"{WIRE}1"]
    # the arguments select exactly these mutants under mutmut's rule (name or fnmatch glob)
    every = [n for by_name in codes.values() for n in by_name]
    chosen = [n for n in every if n in args or mutate._matches(n, args)]
    assert chosen == names


def test_a_glob_does_not_reach_a_function_whose_name_extends_another():
    codes = {"m.py": {"m.x_f__mutmut_1": None, "m.x_f__mutmut_2": None, "m.x_f2__mutmut_1": 1}}
    args = mutate._arguments(["m.x_f__mutmut_1", "m.x_f__mutmut_2"], codes)
    assert not mutate._matches("m.x_f2__mutmut_1", args)


CRASH_LOG = """\
Running mutation testing
Traceback (most recent call last):
  File "/x/mutmut/workers/isolation.py", line 718, in wait_for_result
mutmut.workers.isolation.ForkServerCrashError: Fork server crashed unexpectedly (exit code: -1)
Lost 2 in-flight mutant(s):
  - heml.dp._noise.xǁNoiseSourceǁrelease__mutmut_2
  - heml.he.wire.x_unpack_ciphertexts__mutmut_7

This usually indicates a bug in pytest or conftest.py.
"""


def test_lost_mutants_are_read_from_the_crash_message():
    assert mutate._lost(CRASH_LOG) == [f"{NOISE}2", f"{WIRE}7"]


def test_a_run_without_a_crash_has_no_lost_mutants():
    assert mutate._lost("Running mutation testing\n12.3 mutations/second\n") is None


def test_a_crash_message_without_names_is_still_a_crash():
    assert mutate._lost("ForkServerCrashError: Fork server crashed\nLost 0 in-flight") == []


def test_sanity_mutant_is_found_by_its_changed_line(mutants):
    assert mutate._sanity_name(mutate._meta_codes(mutants), mutants) == f"{WIRE}3"


def test_no_sanity_mutant_without_the_line(tmp_path):
    write_meta(
        tmp_path,
        "heml/he/wire.py",
        {f"{WIRE}{n}": 1 for n in range(1, 3)},
        wire_source(range(1, 3), sanity=99),
    )
    assert mutate._sanity_name(mutate._meta_codes(tmp_path), tmp_path) is None


def test_crash_record_round_trip(tmp_path):
    mutate._record_crash(f"{NOISE}2", "crashed", tmp_path)
    mutate._record_crash(f"{NOISE}4", "killed", tmp_path)
    assert mutate._crashed(tmp_path) == {f"{NOISE}2": "crashed", f"{NOISE}4": "killed"}


def test_summary_counts_statuses_and_scores_only_mutants_with_a_result(mutants):
    results = mutate._results(mutants)
    rows, total, survivors = mutate.summarize(results, {f"{NOISE}2": "crashed"})
    noise = dict(rows)["heml/dp/_noise.py"]
    assert (noise["run"], noise["killed"], noise["survived"]) == (3, 1, 1)
    assert (noise["crashed"], noise["caught"], noise["pending"]) == (1, 1, 1)
    # a crash not counted as a kill is listed with the survivors and lowers the score
    assert f"{NOISE}2: crashed the fork server (not counted as killed)" in survivors
    assert f"{NOISE}3: survived" in survivors
    assert (total["run"], total["caught"], total["pending"]) == (7, 5, 1)


def test_a_crash_judged_a_kill_counts_as_caught(mutants):
    rows, _, survivors = mutate.summarize(mutate._results(mutants), {f"{NOISE}2": "killed"})
    assert dict(rows)["heml/dp/_noise.py"]["caught"] == 2
    assert not any("crashed" in s for s in survivors)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (1, "killed"),
        (3, "killed"),
        (-24, "timeout"),
        (36, "timeout"),
        (0, "survived"),
        (33, "no tests"),
        (None, "not checked"),
        (-11, "suspicious (-11)"),
    ],
)
def test_status_of_mutmut_exit_codes(code, status):
    assert mutate._status(code) == status


def test_report_and_exit_code_follow_completion_and_sanity(mutants, monkeypatch, capsys):
    monkeypatch.setattr(mutate, "MUTANTS", mutants)
    assert mutate.report() == (True, False)  # two _noise mutants not run
    assert "NOT COMPLETE: 2" in capsys.readouterr().out
    assert mutate.main(["--report"]) == 1
    write_meta(mutants, "heml/dp/_noise.py", {f"{NOISE}{n}": 1 for n in range(1, 5)})
    assert mutate.main(["--report"]) == 0
    # a surviving sanity mutant makes the run invalid whatever else happened
    write_meta(
        mutants,
        "heml/he/wire.py",
        {f"{WIRE}{n}": 0 if n == 3 else 1 for n in range(1, 5)},
        wire_source(range(1, 5), sanity=3),
    )
    assert mutate.main(["--report"]) == 1
    assert "THE RUN IS NOT VALID" in capsys.readouterr().out


def test_mutant_seconds_are_summed_per_module_from_the_debug_log(tmp_path):
    log = tmp_path / "mutmut-debug.log"
    log.write_text(
        "2026-12-07 02:11:03.524 [1] mutmut.forkserver DEBUG: Received mutant: "
        f"{NOISE}2 (28 tests, cpu_limit=225s, wall_timeout=112.5s)\n"
        f"02:11:05 [1] mutmut.forkserver DEBUG: Completed {NOISE}2: exit=1 (1.778s)\n"
        f"02:11:06 [1] mutmut.forkserver DEBUG: Completed {NOISE}3: exit=1 (2.000s)\n"
        f"02:12:00 [1] mutmut.forkserver DEBUG: Completed {NOISE}3: exit=0 (3.000s)\n"
        f"02:12:01 [1] mutmut.forkserver DEBUG: Completed {WIRE}1: exit=1 (0.500s)\n"
    )
    timing = mutate._mutant_seconds(log)
    assert timing["heml.dp._noise"] == (2, pytest.approx(4.778))  # the rerun of #3 replaces it
    assert timing["heml.he.wire"] == (1, pytest.approx(0.5))


# ------------------------------------------------------------------ equivalent mutants
GUARD = "heml.server.interceptor.xǁGuardǁenter__mutmut_"

# interceptor.py as mutmut writes it: the original method and its mutants side by side in the
# class, a module-level function with a signature over two lines.
GUARD_SOURCE = """\
class Guard:
    def xǁGuardǁenter__mutmut_orig(self, context):
        context.add_callback(lambda: self.exit("terminated"))  # a comment
        return safe_token(context.peer(), 80)

    def xǁGuardǁenter__mutmut_1(self, context):
        context.add_callback(lambda: self.exit(None))  # a comment
        return safe_token(context.peer(), 80)

    def xǁGuardǁenter__mutmut_2(self, context):
        context.add_callback(lambda: self.exit("terminated"))  # a comment
        return safe_token(context.peer(), 81)

    def xǁGuardǁenter__mutmut_3(self, context):
        context.add_callback(lambda: self.exit("XXterminatedXX"))  # a comment
        return safe_token(context.peer(), 80)


def x_watch__mutmut_orig(
    folder, interval=2.0
) -> None:
    return folder


def x_watch__mutmut_1(
    folder, interval=3.0
) -> None:
    return folder
"""
WATCH = "heml.server.interceptor.x_watch__mutmut_"

EQUIVALENTS_FILE = """\
[[equivalent]]
function = "heml.server.interceptor.xǁGuardǁenter"
before = 'context.add_callback(lambda: self.exit("terminated"))  # a comment'
after = 'context.add_callback(lambda:   self.exit(None))  # a comment'
reason = "the outcome string is read only when the call is already inactive"

[[equivalent]]
function = "heml.server.interceptor.x_watch"
before = ["folder, interval=2.0"]
after = ["folder, interval=3.0"]
reason = "every caller passes the interval"

[[equivalent]]
function = "heml.server.interceptor.xǁGuardǁenter"
before = "return safe_token(context.peer(), 80)"
after = "return safe_token(context.peer(), 64)"
reason = "a peer is at most 50 characters"
"""


@pytest.fixture
def guard(tmp_path):
    """interceptor.py's mutants: enter 1 survived (listed), 2 survived (not listed), 3 killed;
    watch 1 survived (listed). The third entry matches no generated mutant."""
    codes = {f"{GUARD}1": 0, f"{GUARD}2": 0, f"{GUARD}3": 1, f"{WATCH}1": 0}
    write_meta(tmp_path, "heml/server/interceptor.py", codes, GUARD_SOURCE)
    (tmp_path / "equivalents.toml").write_text(EQUIVALENTS_FILE)
    return tmp_path


def test_mutant_diffs_are_the_changed_lines_of_each_mutant(guard):
    names = [f"{GUARD}{n}" for n in (1, 2, 3)] + [f"{WATCH}1"]
    diffs = mutate.mutant_diffs(names, guard)
    assert diffs[f"{GUARD}1"] == (
        ('context.add_callback(lambda: self.exit("terminated")) # a comment',),
        ("context.add_callback(lambda: self.exit(None)) # a comment",),
    )
    assert diffs[f"{GUARD}2"] == (
        ("return safe_token(context.peer(), 80)",),
        ("return safe_token(context.peer(), 81)",),
    )
    # a changed default shows although the def line names the mutant, not the original
    assert diffs[f"{WATCH}1"] == (("folder, interval=2.0",), ("folder, interval=3.0",))
    # a mutant whose source is not under mutants/ has no diff (classified as a missing test)
    assert f"{GUARD}9" not in mutate.mutant_diffs([f"{GUARD}9"], guard)


def test_survivors_are_classified_by_function_and_change_not_by_number(guard):
    entries = mutate.load_equivalents(guard / "equivalents.toml")
    names = [f"{GUARD}1", f"{GUARD}2", f"{WATCH}1"]
    verdicts = mutate.classify(names, entries, mutate.mutant_diffs(names, guard))
    assert verdicts[f"{GUARD}1"].reason.startswith("the outcome string")
    assert verdicts[f"{GUARD}2"] is None  # 81 is not the listed 64
    assert verdicts[f"{WATCH}1"].reason == "every caller passes the interval"
    # the same change in another function is not covered
    renamed = {f"{WATCH}7": mutate.mutant_diffs([f"{GUARD}1"], guard)[f"{GUARD}1"]}
    assert mutate.classify([f"{WATCH}7"], entries, renamed)[f"{WATCH}7"] is None


def test_one_entry_covers_every_mutant_with_the_same_change_in_its_function(guard):
    entries = mutate.load_equivalents(guard / "equivalents.toml")
    diff = mutate.mutant_diffs([f"{GUARD}1"], guard)[f"{GUARD}1"]
    diffs = {f"{GUARD}1": diff, f"{GUARD}40": diff}
    verdicts = mutate.classify(list(diffs), entries, diffs)
    assert verdicts[f"{GUARD}1"] is verdicts[f"{GUARD}40"] is not None


def test_stale_entries_are_those_matching_no_generated_mutant(guard):
    entries = mutate.load_equivalents(guard / "equivalents.toml")
    every = [f"{GUARD}{n}" for n in (1, 2, 3)] + [f"{WATCH}1"]
    assert [e.after for e in mutate.stale(entries, mutate.mutant_diffs(every, guard))] == [
        ("return safe_token(context.peer(), 64)",)
    ]


def test_check_equivalents_prints_each_verdict_and_the_warnings(guard, capsys):
    codes = mutate._meta_codes(guard)
    # the listed mutant #1 killed instead: its entry's reason must be looked at again
    killed = {path: {**c, f"{GUARD}1": 1} for path, c in codes.items()}
    assert mutate.check_equivalents(killed, {}, guard, guard / "equivalents.toml") == (1, 1)
    out = capsys.readouterr().out
    assert f"{GUARD}2 (survived): MISSING TEST" in out
    assert "- return safe_token(context.peer(), 80)" in out
    assert "+ return safe_token(context.peer(), 81)" in out
    assert f"{WATCH}1 (survived): equivalent: every caller passes the interval" in out
    assert "WARNING stale: equivalents.toml entry 3" in out
    assert f"WARNING {GUARD}1 is killed but equivalents.toml entry 1" in out
    assert "equivalent: 1, MISSING TEST: 1" in out
    # a crash not judged a kill is classified like a survivor
    assert mutate.check_equivalents(
        codes, {f"{GUARD}3": "crashed"}, guard, guard / "equivalents.toml"
    ) == (2, 2)


def test_check_equivalents_mode_exit_code(guard, monkeypatch, capsys):
    monkeypatch.setattr(mutate, "MUTANTS", guard)
    monkeypatch.setattr(mutate, "EQUIVALENTS", guard / "equivalents.toml")
    assert mutate.main(["--check-equivalents"]) == 1  # enter 2 is not listed
    assert "NOT EVERY SURVIVOR IS CLASSIFIED: 1 MISSING TEST" in capsys.readouterr().out
    with open(guard / "equivalents.toml", "a") as f:
        f.write(
            '\n[[equivalent]]\nfunction = "heml.server.interceptor.xǁGuardǁenter"\n'
            'before = "return safe_token(context.peer(), 80)"\n'
            'after = "return safe_token(context.peer(), 81)"\nreason = "limit 81 for 80"\n'
        )
    assert mutate.main(["--check-equivalents"]) == 0
    assert "every survivor is classified" in capsys.readouterr().out
    # a mutant without a result makes the classification incomplete
    write_meta(
        guard,
        "heml/server/interceptor.py",
        {f"{GUARD}1": 0, f"{GUARD}2": 0, f"{GUARD}3": None, f"{WATCH}1": 0},
        GUARD_SOURCE,
    )
    assert mutate.main(["--check-equivalents"]) == 1
    assert "NOT COMPLETE: 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ('function = "f"\nbefore = "a"\nafter = "b"\n', "missing reason"),
        ('function = "f"\nbefore = "a"\nafter = "b"\nreason = " "\n', "empty reason"),
        ('function = "f"\nbefore = "a"\nafter = 3\nreason = "r"\n', "string or a list"),
        ('function = "f"\nbefore = "a"\nafter = "b"\nreason = "r"\nnumber = 4\n', "unknown"),
    ],
)
def test_malformed_entries_stop_the_tool(tmp_path, entry, error):
    path = tmp_path / "e.toml"
    path.write_text("[[equivalent]]\n" + entry)
    with pytest.raises(SystemExit, match=error):
        mutate.load_equivalents(path)


def test_the_same_change_listed_twice_stops_the_tool(tmp_path):
    entry = '[[equivalent]]\nfunction = "f"\nbefore = "a  b"\nafter = "c"\nreason = "r"\n'
    path = tmp_path / "e.toml"
    path.write_text(entry + entry.replace("a  b", "a b"))
    with pytest.raises(SystemExit, match="the same function and change"):
        mutate.load_equivalents(path)


def test_the_committed_equivalents_file_loads():
    entries = mutate.load_equivalents()
    assert entries and all(e.reason.strip() and (e.before or e.after) for e in entries)


def test_recheck_forgets_only_the_selected_mutants_that_were_not_caught(mutants):
    """--recheck: survivors (and recorded crashers) run again, kills and timeouts are kept."""
    mutate._record_crash(f"{NOISE}4", "crashed", mutants)
    write_meta(
        mutants,
        "heml/he/params.py",
        {"heml.he.params.x_check__mutmut_1": 0, "heml.he.params.x_check__mutmut_2": 36},
    )
    forgotten = mutate.forget_unkilled(mutate.FOCUS, mutants)
    assert sorted(forgotten) == sorted(
        [f"{NOISE}3", f"{NOISE}4", "heml.he.params.x_check__mutmut_1"]
    )
    codes = mutate._meta_codes(mutants)
    assert codes["heml/dp/_noise.py"] == {
        f"{NOISE}1": 1,  # killed: kept
        f"{NOISE}2": None,
        f"{NOISE}3": None,  # survived: run again
        f"{NOISE}4": None,  # crashed: run again, no longer set aside
    }
    assert codes["heml/he/params.py"]["heml.he.params.x_check__mutmut_2"] == 36  # timeout kept
    assert codes["heml/dp/_base.py"] == {"heml.dp._base.x_unlisted__mutmut_1": None}
    assert mutate._crashed(mutants) == {}
    assert mutate._pending(codes, mutate.FOCUS, mutate._crashed(mutants)) == [
        f"{NOISE}2",
        f"{NOISE}3",
        f"{NOISE}4",
        "heml.he.params.x_check__mutmut_1",
    ]
    # --only narrows it: nothing outside the globs is touched
    write_meta(mutants, "heml/he/wire.py", {f"{WIRE}1": 0}, wire_source(range(1, 2), sanity=3))
    assert mutate.forget_unkilled(["heml.dp.*"], mutants) == []
    assert mutate._meta_codes(mutants)["heml/he/wire.py"] == {f"{WIRE}1": 0}


# ------------------------------------------------------------------ pinned equivalents
def _fresh(codes: dict) -> dict:
    """The same mutants without results, as a new run generates them."""
    return {path: dict.fromkeys(by_name) for path, by_name in codes.items()}


def _pin(guard, codes: dict | None = None) -> tuple[int, int]:
    return mutate.pin_equivalents(
        codes or mutate._meta_codes(guard),
        {},
        guard,
        guard / "equivalents.toml",
        guard / "pins.json",
    )


def _pinned(guard, codes: dict) -> set[str]:
    return mutate.pinned(codes, guard, guard / "equivalents.toml", guard / "pins.json")


def test_only_survivors_listed_as_equivalent_are_pinned_and_then_not_run(guard):
    # enter 1 and watch 1 survived and are listed; enter 2 has no entry; enter 3 was killed
    assert _pin(guard) == (2, 2)
    fresh = _fresh(mutate._meta_codes(guard))
    skip = _pinned(guard, fresh)
    assert skip == {f"{GUARD}1", f"{WATCH}1"}
    assert mutate._pending(fresh, mutate.FOCUS, {}, skip) == [f"{GUARD}2", f"{GUARD}3"]
    # a mutant with a result is never "pinned": its result counts
    assert _pinned(guard, mutate._meta_codes(guard)) == set()


def test_an_edited_function_or_a_removed_entry_unpins(guard):
    _pin(guard)
    fresh = _fresh(mutate._meta_codes(guard))
    source = guard / "heml/server/interceptor.py"
    # an edit as mutmut writes it: the original and every mutant copy get the new line, so
    # each mutant's change is the same and only the digest tells
    edited = GUARD_SOURCE.replace(
        "(self, context):\n", "(self, context):\n        context.check()\n"
    )
    change = mutate.mutant_diffs([f"{GUARD}1"], guard)
    source.write_text(edited)
    assert mutate.mutant_diffs([f"{GUARD}1"], guard) == change
    assert _pinned(guard, fresh) == {f"{WATCH}1"}  # enter's text changed: its mutant runs
    source.write_text(GUARD_SOURCE)
    assert _pinned(guard, fresh) == {f"{GUARD}1", f"{WATCH}1"}
    toml = guard / "equivalents.toml"
    parts = EQUIVALENTS_FILE.split("[[equivalent]]")[1:]
    toml.write_text("".join("[[equivalent]]" + part for part in parts[1:]))
    assert _pinned(guard, fresh) == {f"{WATCH}1"}  # enter 1's entry is gone: it runs


def test_repinning_keeps_pins_not_run_and_drops_a_pinned_mutant_that_was_killed(guard):
    _pin(guard)
    codes = mutate._meta_codes(guard)
    path = "heml/server/interceptor.py"
    # watch 1 pinned (not run) this time, enter 1 run with --all and killed
    later = {path: {**codes[path], f"{WATCH}1": None, f"{GUARD}1": 1}}
    assert _pin(guard, later) == (1, 1)
    assert _pinned(guard, _fresh(later)) == {f"{WATCH}1"}


def test_pinned_mutants_count_as_survivors_and_complete_the_run(guard, monkeypatch, capsys):
    _pin(guard)
    fresh = _fresh(mutate._meta_codes(guard))
    fresh["heml/server/interceptor.py"][f"{GUARD}2"] = 1
    fresh["heml/server/interceptor.py"][f"{GUARD}3"] = 1
    skip = _pinned(guard, fresh)
    _, total, survivors = mutate.summarize(fresh, {}, skip)
    assert (total["run"], total["caught"], total["pinned"], total["pending"]) == (4, 2, 2, 0)
    assert mutate._score(total).strip() == "50.0%"  # as a run of all four would score
    assert f"{WATCH}1: pinned" in survivors
    write_meta(
        guard, "heml/server/interceptor.py", fresh["heml/server/interceptor.py"], GUARD_SOURCE
    )
    monkeypatch.setattr(mutate, "MUTANTS", guard)
    monkeypatch.setattr(mutate, "EQUIVALENTS", guard / "equivalents.toml")
    monkeypatch.setattr(mutate, "PINS", guard / "pins.json")
    assert mutate.main(["--check-equivalents"]) == 0
    out = capsys.readouterr().out
    assert f"{WATCH}1 (pinned, not run): equivalent: every caller passes" in out
    assert "every survivor is classified" in out
    # without the pins the same results are not complete
    (guard / "pins.json").unlink()
    assert mutate.main(["--check-equivalents"]) == 1
    assert "NOT COMPLETE: 2" in capsys.readouterr().out


def test_a_malformed_pins_file_stops_the_tool(tmp_path):
    path = tmp_path / "pins.json"
    path.write_text('{"pins": {"f": {"sha256": 3, "changes": []}}}')
    with pytest.raises(SystemExit, match="malformed"):
        mutate.load_pins(path)
    path.write_text('{"pins": {"f": {"changes": [["a", "b"]]}}}')
    with pytest.raises(SystemExit, match="malformed"):
        mutate.load_pins(path)


def test_every_committed_pin_has_its_equivalent_entry():
    pins = mutate.load_pins()
    keys = {e.key() for e in mutate.load_equivalents()}
    for function, (digest, changes) in pins.items():
        assert len(digest) == 64
        for before, after in changes:
            assert (function, before, after) in keys, (function, before, after)


# ------------------------------------------------------------------ pins under attack
# (an adversarial review of the pins: each test failed against their first version)
MOD = "heml/he/params.py"  # FOCUS has heml.he.params.*
P = "heml.he.params."


def entry(function, before, after, reason="r"):
    return (
        f"[[equivalent]]\nfunction = {json.dumps(P + function)}\nbefore = {json.dumps(before)}\n"
        f"after = {json.dumps(after)}\nreason = {json.dumps(reason)}\n\n"
    )


def pin_run(root):
    return mutate.pin_equivalents(
        mutate._meta_codes(root), mutate._crashed(root), root, root / "eq.toml", root / "pins.json"
    )


def pinned_in(root, codes):
    return mutate.pinned(codes, root, root / "eq.toml", root / "pins.json")


def fresh_codes(root):
    return {p: dict.fromkeys(c) for p, c in mutate._meta_codes(root).items()}


def behaviour(source, orig, mutant, *args):
    ns = {}
    exec(source, ns)
    return ns[orig](*args), ns[mutant](*args)


# ---------------------------------------------------------------- 1. indentation is not hashed
SIGN_V1 = """\
def x_sign__mutmut_orig(x, strict):
    if x == 0:
        if strict:
            pass
        raise ValueError(x)
    return x > 0

def x_sign__mutmut_1(x, strict):
    if x == 0:
        if strict:
            pass
        raise ValueError(x)
    return x >= 0
"""
# the guard's `raise` moved under `if strict:` -- only the indentation of one line changes
SIGN_V2 = SIGN_V1.replace(
    "            pass\n        raise ValueError(x)",
    "            pass\n            raise ValueError(x)",
)


def test_an_indentation_edit_unpins(tmp_path):
    write_meta(tmp_path, MOD, {f"{P}x_sign__mutmut_1": 0}, SIGN_V1)
    (tmp_path / "eq.toml").write_text(
        entry("x_sign", "return x > 0", "return x >= 0", "x != 0 here")
    )
    assert pin_run(tmp_path) == (1, 1)
    # the source is edited: x == 0 with strict=False now reaches `return x > 0`
    write_meta(tmp_path, MOD, {f"{P}x_sign__mutmut_1": None}, SIGN_V2)
    assert behaviour(SIGN_V2, "x_sign__mutmut_orig", "x_sign__mutmut_1", 0, False) == (False, True)
    assert pinned_in(tmp_path, fresh_codes(tmp_path)) == set(), "a non-equivalent mutant is pinned"


# ---------------------------------------------------------------- 2. body cut at a column-0 line
# mutmut 3.8.1 keeps a column-0 comment (or a multi-line string's column-0 lines) inside the
# copies it writes; the first version's line scan ended the body there, so the digest missed
# the rest.
CUT_V1 = """\
def x_f__mutmut_orig(x):
    y = abs(x) + 1
{mark}
    return y > 0

def x_f__mutmut_1(x):
    y = abs(x) + 2
{mark}
    return y > 0
"""
MARKS = ["# a comment at column 0", '    note = """\ncolumn-0 text of a message\n"""']


@pytest.mark.parametrize("mark", MARKS, ids=["comment", "string"])
def test_an_edit_below_a_column_0_line_unpins(tmp_path, mark):
    v1 = CUT_V1.format(mark=mark)
    write_meta(tmp_path, MOD, {f"{P}x_f__mutmut_1": 0}, v1)
    (tmp_path / "eq.toml").write_text(entry("x_f", "y = abs(x) + 1", "y = abs(x) + 2", "y >= 1"))
    assert pin_run(tmp_path) == (1, 1)
    v2 = v1.replace("return y > 0", "return y > 1")  # below the cut
    write_meta(tmp_path, MOD, {f"{P}x_f__mutmut_1": None}, v2)
    assert behaviour(v2, "x_f__mutmut_orig", "x_f__mutmut_1", 0) == (False, True)
    assert pinned_in(tmp_path, fresh_codes(tmp_path)) == set(), "a non-equivalent mutant is pinned"


def test_mutants_below_the_cut_have_distinct_diffs(tmp_path):
    src = (
        CUT_V1.format(mark=MARKS[0])
        + "\n"
        + CUT_V1.format(mark=MARKS[0])
        .split("\n\n")[1]
        .replace("__mutmut_1", "__mutmut_2")
        .replace("abs(x) + 2", "abs(x) + 1")
        .replace("return y > 0", "return y > 5")
        + "\n\n"
        + CUT_V1.format(mark=MARKS[0])
        .split("\n\n")[1]
        .replace("__mutmut_1", "__mutmut_3")
        .replace("abs(x) + 2", "abs(x) + 1")
        .replace("return y > 0", "return y >= 0")
    )
    names = [f"{P}x_f__mutmut_2", f"{P}x_f__mutmut_3"]
    diffs = mutate.mutant_diffs(names, _write(tmp_path, src))
    assert diffs[names[0]] != diffs[names[1]], "two different mutants, one (empty) diff"


def _write(root, src):
    write_meta(root, MOD, {}, src)
    return root


# ---------------------------------------------------------------- 3. the same change on two lines
PICK = """\
def x_pick__mutmut_orig(xs, lo, hi):
    if lo is None:
        lo = 0
    out = [x for x in xs if x >= lo]
    if hi is None:
        lo = 0
    return [x for x in out if hi is None or x <= hi]

def x_pick__mutmut_1(xs, lo, hi):
    if lo is None:
        lo = 1
    out = [x for x in xs if x >= lo]
    if hi is None:
        lo = 0
    return [x for x in out if hi is None or x <= hi]

def x_pick__mutmut_2(xs, lo, hi):
    if lo is None:
        lo = 0
    out = [x for x in xs if x >= lo]
    if hi is None:
        lo = 1
    return [x for x in out if hi is None or x <= hi]
"""


def test_a_killed_mutant_sharing_a_survivors_change_is_not_pinned(tmp_path):
    # run 1: #1 (the live `lo = 0`) killed, #2 (the dead store) survived and is listed
    write_meta(tmp_path, MOD, {f"{P}x_pick__mutmut_1": 1, f"{P}x_pick__mutmut_2": 0}, PICK)
    (tmp_path / "eq.toml").write_text(entry("x_pick", "lo = 0", "lo = 1", "a dead store"))
    assert behaviour(PICK, "x_pick__mutmut_orig", "x_pick__mutmut_1", [0], None, 1) == ([0], [])
    # the change is the same at both places, so it is not pinned: #1 must run again
    assert pin_run(tmp_path) == (0, 0)
    nxt = fresh_codes(tmp_path)
    assert pinned_in(tmp_path, nxt) == set()
    # positive control: with #1 surviving too, the change is pinned for both
    write_meta(tmp_path, MOD, {f"{P}x_pick__mutmut_1": 0, f"{P}x_pick__mutmut_2": 0}, PICK)
    assert pin_run(tmp_path) == (2, 1)
    assert pinned_in(tmp_path, nxt) == {f"{P}x_pick__mutmut_1", f"{P}x_pick__mutmut_2"}


# ---------------------------------------------------------------- 4. whitespace inside strings
def test_whitespace_inside_a_string_literal_is_hashed(tmp_path):
    a = 'def x_j__mutmut_orig(parts):\n    return "  ".join(parts)\n'
    b = 'def x_j__mutmut_orig(parts):\n    return " ".join(parts)\n'
    write_meta(tmp_path, MOD, {}, a)
    da = mutate.function_digests({P + "x_j"}, tmp_path)
    write_meta(tmp_path, MOD, {}, b)
    db = mutate.function_digests({P + "x_j"}, tmp_path)
    assert da != db, "a different separator, the same digest"


# ---------------------------------------------------------------- 6. --pin-equivalents, bad run
def test_pin_equivalents_refuses_an_invalid_or_incomplete_run(tmp_path, monkeypatch, capsys):
    wire = "heml.he.wire.x_unpack_ciphertexts__mutmut_"
    src = "def x_unpack_ciphertexts__mutmut_1(data, q):\n    " + mutate.SANITY[2] + "\n"
    write_meta(
        tmp_path, "heml/he/wire.py", {f"{wire}1": 0, f"{wire}2": None}, src
    )  # sanity SURVIVED
    write_meta(tmp_path, MOD, {f"{P}x_sign__mutmut_1": 0}, SIGN_V1)
    (tmp_path / "eq.toml").write_text(entry("x_sign", "return x > 0", "return x >= 0"))
    monkeypatch.setattr(mutate, "MUTANTS", tmp_path)
    monkeypatch.setattr(mutate, "EQUIVALENTS", tmp_path / "eq.toml")
    monkeypatch.setattr(mutate, "PINS", tmp_path / "pins.json")
    assert mutate.main(["--pin-equivalents"]) == 1  # sanity survived, a mutant not run
    assert "nothing pinned" in capsys.readouterr().out
    assert not (tmp_path / "pins.json").exists()
    write_meta(tmp_path, "heml/he/wire.py", {f"{wire}1": 1, f"{wire}2": None}, src)
    assert mutate.main(["--pin-equivalents"]) == 1  # sanity killed, still incomplete
    assert not (tmp_path / "pins.json").exists()
    write_meta(tmp_path, "heml/he/wire.py", {f"{wire}1": 1, f"{wire}2": 1}, src)
    assert mutate.main(["--pin-equivalents"]) == 0  # complete and valid: pinned
    assert "1 equivalent mutant(s) pinned" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "pins.json").read_text())["pins"]) == {P + "x_sign"}


# ---------------------------------------------------------------- 7. a crashed mutant keeps its pin
def test_a_mutant_that_crashed_under_all_loses_its_pin(tmp_path):
    write_meta(tmp_path, MOD, {f"{P}x_sign__mutmut_1": 0}, SIGN_V1)
    (tmp_path / "eq.toml").write_text(entry("x_sign", "return x > 0", "return x >= 0"))
    pin_run(tmp_path)
    # `--all`: it ran again and crashed the fork server alone (no result, in mutate-crashed.json)
    write_meta(tmp_path, MOD, {f"{P}x_sign__mutmut_1": None}, SIGN_V1)
    mutate._record_crash(f"{P}x_sign__mutmut_1", "crashed", tmp_path)
    assert pin_run(tmp_path) == (0, 0), "docstring: a mutant ... crashed ... is not pinned"


# ---------------------------------------------------------------- 8. malformed pins accepted
@pytest.mark.parametrize(
    "changes",
    [
        ["ab"],  # a string, not a [before, after] pair
        [["return x > 0", "return x >= 0"]],  # strings where lists of lines belong
        {"ab": 1},  # an object, not a list
    ],
)
def test_malformed_changes_are_refused(tmp_path, changes):
    path = tmp_path / "pins.json"
    path.write_text(json.dumps({"pins": {"f": {"sha256": "0" * 64, "changes": changes}}}))
    with pytest.raises(SystemExit, match="malformed"):
        mutate.load_pins(path)


def test_a_digest_that_is_not_a_sha256_is_refused(tmp_path):
    path = tmp_path / "pins.json"
    path.write_text(json.dumps({"pins": {"f": {"sha256": "", "changes": []}}}))
    with pytest.raises(SystemExit, match="malformed"):
        mutate.load_pins(path)


# --------------------------------------------------- guards that no earlier test held
def test_guard_digest_a_realistic_edit_unpins(tmp_path):
    """mutmut rewrites the original AND every mutant copy: the change stays the same, only the
    digest can see the edit (test_an_edited_function_or_a_removed_entry_unpins edits only the
    _orig copy, so its mutant's diff changes and the entry check unpins it instead)."""
    write_meta(tmp_path, MOD, {f"{P}x_sign__mutmut_1": 0}, SIGN_V1)
    (tmp_path / "eq.toml").write_text(entry("x_sign", "return x > 0", "return x >= 0"))
    pin_run(tmp_path)
    edited = SIGN_V1.replace("    if x == 0:\n", "    if x == 0 and strict:\n")  # both copies
    write_meta(tmp_path, MOD, {f"{P}x_sign__mutmut_1": None}, edited)
    assert mutate.mutant_diffs([f"{P}x_sign__mutmut_1"], tmp_path)[f"{P}x_sign__mutmut_1"] == (
        ("return x > 0",),
        ("return x >= 0",),
    )
    assert pinned_in(tmp_path, fresh_codes(tmp_path)) == set()


def test_guard_changes_a_listed_change_never_seen_surviving_is_run(tmp_path):
    """An entry added after the pinning run (or one listing a mutant that was killed) covers a
    change that no run saw survive: it is not pinned although the function has a pin."""
    two = SIGN_V1 + SIGN_V1.split("\n\n")[1].replace("__mutmut_1", "__mutmut_2").replace(
        "return x >= 0", "return x > 1"
    )
    write_meta(tmp_path, MOD, {f"{P}x_sign__mutmut_1": 0, f"{P}x_sign__mutmut_2": 1}, two)
    (tmp_path / "eq.toml").write_text(entry("x_sign", "return x > 0", "return x >= 0"))
    pin_run(tmp_path)
    with open(tmp_path / "eq.toml", "a") as f:
        f.write(entry("x_sign", "return x > 0", "return x > 1", "added later"))
    assert pinned_in(tmp_path, fresh_codes(tmp_path)) == {f"{P}x_sign__mutmut_1"}


# ---------------------------------------------------------------- 9. partial run: pinned-only score
def test_a_module_none_of_whose_mutants_ran_has_no_score(tmp_path):
    write_meta(tmp_path, MOD, {f"{P}x_sign__mutmut_1": 0}, SIGN_V1)
    (tmp_path / "eq.toml").write_text(entry("x_sign", "return x > 0", "return x >= 0"))
    pin_run(tmp_path)
    # `--only 'heml.he.wire.*'` on a fresh mutants/ (or an interrupted run): params.py's 40
    # other mutants have no result; its pinned one is counted as run
    codes = {
        MOD: {f"{P}x_sign__mutmut_1": None, **{f"{P}x_other__mutmut_{n}": None for n in range(40)}}
    }
    skip = pinned_in(tmp_path, codes)
    rows, _, _ = mutate.summarize(codes, {}, skip)
    c = dict(rows)[MOD]
    assert mutate._score(c).strip() == "-", "0.0% for a module of which nothing ran"


def test_arguments_never_glob_a_function_with_a_pinned_mutant(tmp_path):
    codes = {MOD: {f"{P}x_sign__mutmut_{n}": None for n in (1, 2, 3)}}
    todo = mutate._pending(codes, mutate.FOCUS, {}, {f"{P}x_sign__mutmut_2"})
    args = mutate._arguments(todo, codes)
    assert args == [f"{P}x_sign__mutmut_1", f"{P}x_sign__mutmut_3"]
    assert not any(mutate._matches(f"{P}x_sign__mutmut_2", [a]) for a in args)


def test_kills_of_listed_equivalents_are_the_ones_run_again(guard):
    """Step 4 of a run: a killed mutant that an entry lists runs once more (5 of 6 such kills
    in the run of 983f734 did not repeat)."""
    codes = mutate._meta_codes(guard)
    path = "heml/server/interceptor.py"
    codes = {path: {**codes[path], f"{GUARD}1": 1, f"{WATCH}1": 1}}  # both listed, killed
    args = (mutate.FOCUS, {}, guard, guard / "equivalents.toml")
    assert set(mutate.listed_kills(codes, *args)) == {f"{GUARD}1", f"{WATCH}1"}
    # enter 3 (killed, not listed) is not; a recorded crash is not; --only narrows it
    assert mutate.listed_kills(codes, mutate.FOCUS, {f"{WATCH}1": "killed"}, *args[2:]) == [
        f"{GUARD}1"
    ]
    assert mutate.listed_kills(codes, ["*x_watch*"], {}, *args[2:]) == [f"{WATCH}1"]


def test_results_of_an_edited_source_are_stale(tmp_path):
    """--resume/--recheck refuse results whose source changed since mutmut copied it: mutmut
    regenerates only when invoked, so with nothing left to run the old results would pass
    for the new code's."""
    import os

    root, mutants = tmp_path / "repo", tmp_path / "repo" / "mutants"
    write_meta(mutants, "heml/he/wire.py", {f"{WIRE}1": 1}, "def f(): pass\n")
    (root / "heml/he").mkdir(parents=True)
    source = root / "heml/he/wire.py"
    source.write_text("def f(): pass\n")
    copy = mutants / "heml/he/wire.py"
    os.utime(source, (1_000_000, 1_000_000))
    os.utime(copy, (2_000_000, 2_000_000))
    assert mutate.stale_sources(root, mutants) == []
    os.utime(source, (3_000_000, 3_000_000))  # edited after the copy
    assert mutate.stale_sources(root, mutants) == ["heml/he/wire.py"]


def test_recheck_on_stale_results_refuses_before_forgetting_anything(tmp_path, monkeypatch):
    import os

    root, mutants = tmp_path / "repo", tmp_path / "repo" / "mutants"
    write_meta(mutants, "heml/he/wire.py", {f"{WIRE}1": 0}, "def f(): pass\n")
    (root / "heml/he").mkdir(parents=True)
    (root / "heml/he/wire.py").write_text("def f(): pass\n")
    os.utime(mutants / "heml/he/wire.py", (1_000_000, 1_000_000))  # the source is newer
    monkeypatch.setattr(mutate, "ROOT", root)
    monkeypatch.setattr(mutate, "MUTANTS", mutants)
    assert mutate.run(2, 0, False, [], recheck=True) is False
    assert mutate._meta_codes(mutants)["heml/he/wire.py"] == {f"{WIRE}1": 0}  # not forgotten


def test_a_run_without_the_services_its_tests_start_is_refused(monkeypatch, capsys):
    # without redis-server the shared-state guard tests skip and their mutants would survive
    monkeypatch.setattr(mutate.shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(mutate, "run", lambda *a, **k: pytest.fail("must not start mutmut"))
    assert mutate.missing_services() == ["redis-server"]
    assert mutate.main(["--only", "heml.server.*"]) == 2
    assert "redis-server not installed" in capsys.readouterr().out
    # found: the run goes ahead (stubbed here)
    monkeypatch.setattr(mutate.shutil, "which", lambda name, path=None: "/usr/bin/" + name)
    monkeypatch.setattr(mutate, "run", lambda *a, **k: False)
    monkeypatch.setattr(mutate, "report", lambda only: (True, True))
    monkeypatch.setattr(mutate, "_print_seconds", lambda: None)
    assert mutate.missing_services() == []
    assert mutate.main(["--only", "heml.server.*"]) == 1  # the stub's run did not complete
