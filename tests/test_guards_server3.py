"""What happens when a model version stops being served (issue 18; heml/server/registry.py,
docs/deploy.md "Shared state"): every retire hook of that version runs once (the Redis state
frees the version's model-privacy key registry through one), the versions still served keep
theirs, and a failing hook is logged, not raised, and does not stop the others.

A real registry over real model files; the hooks record what ran (the Redis hook itself is
checked end to end in tests/test_guards_shared_state.py).
"""

from __future__ import annotations

import logging
import os

from heml.server.registry import Registry

from .guard_support import linear_model


def _save(folder, name, version, seed=1):
    model = linear_model(3, name, seed)
    model.version = version
    path = folder / f"{name}-v{version}.json"
    model.save(path)
    return path


def test_a_version_no_longer_served_runs_its_retire_hooks_once_and_only_its_own(tmp_path):
    gone = _save(tmp_path, "a", 1)
    _save(tmp_path, "b", 1)
    registry, errors = Registry.from_folder(tmp_path)
    assert errors == {}
    ran: list[str] = []
    a1, b1 = registry.get("a"), registry.get("b")
    a1.retire_hooks["x"] = lambda: ran.append("a1")
    b1.retire_hooks["x"] = lambda: ran.append("b1")
    assert registry.refresh() == {} and ran == []  # nothing changed: nothing retired
    _save(tmp_path, "b", 2, seed=2)  # b v2 added: b v1 is still served
    assert registry.refresh() == {} and ran == []
    gone.unlink()
    assert registry.refresh() == {}
    assert ran == ["a1"] and a1.retire_hooks == {}
    assert [(m.model.name, m.model.version) for m in registry.latest()] == [("b", 2)]
    registry.refresh()
    assert ran == ["a1"]  # once
    os.unlink(tmp_path / "b-v1.json")
    registry.refresh()
    assert ran == ["a1", "b1"]
    assert registry.get("b").model.version == 2


def test_a_failing_retire_hook_is_logged_and_the_others_still_run(tmp_path, caplog):
    _save(tmp_path, "a", 4)
    registry, _errors = Registry.from_folder(tmp_path)
    served = registry.get("a")
    ran: list[str] = []

    def broken():
        raise RuntimeError("state gone")

    served.retire_hooks.update({"first": lambda: ran.append("first"), "broken": broken})
    served.retire_hooks["last"] = lambda: ran.append("last")
    caplog.set_level(logging.ERROR, logger="heml.server")
    served.retire()  # does not raise
    assert sorted(ran) == ["first", "last"] and served.retire_hooks == {}
    (record,) = [r for r in caplog.records if r.name == "heml.server"]
    assert record.getMessage() == "retiring a v4"
    assert record.exc_info is not None and str(record.exc_info[1]) == "state gone"
    served.retire()  # each hook at most once
    assert sorted(ran) == ["first", "last"]
