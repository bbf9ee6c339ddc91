"""The model registry in-process: versions, the folder scan and live reload (README, "heml
serve": a corrupt file is refused and the previous version keeps serving).

tests/test_resilience.py checks reloads through a running server; these call the registry
directly so that `make mutate` sees them (docs/testing.md).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from heml.errors import ModelError
from heml.server.registry import ModelNotServed, Registry, load_model_file, scan

from .guard_support import linear_model


def _save(folder, name, version=1, d=3, seed=1, file=None):
    model = linear_model(d, name, seed)
    model.version = version
    path = folder / (file or f"{name}-v{version}.json")
    model.save(path)
    return path


def _bump(path):
    """Make a rewrite visible even on a filesystem with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_versions_and_lookups(tmp_path):
    _save(tmp_path, "a", 1)
    _save(tmp_path, "a", 3)
    _save(tmp_path, "b", 2)
    registry, errors = Registry.from_folder(tmp_path)
    assert errors == {} and len(registry) == 3
    assert registry.get("a").model.version == 3  # 0 = latest
    assert registry.get("a", 1).model.version == 1
    assert [(m.model.name, m.model.version) for m in registry.latest()] == [("a", 3), ("b", 2)]
    with pytest.raises(ModelNotServed, match=r"model 'a' has no version 2 \(versions: 1, 3\)"):
        registry.get("a", 2)
    with pytest.raises(ModelNotServed, match=r"no model named 'c' \(served: a, b\)"):
        registry.get("c")
    with pytest.raises(ModelNotServed, match=r"\(served: none\)"):
        Registry([]).get("a")


def test_scan_reports_broken_duplicate_and_skips_hidden_files(tmp_path):
    _save(tmp_path, "a", 1, file="a.json")
    _save(tmp_path, "a", 1, file="b.json")  # same name and version
    (tmp_path / "c.json").write_text("{not json")
    (tmp_path / ".ledger.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("x")
    models, errors = scan(tmp_path)
    assert [m.path.name for m in models] == ["a.json"]
    assert sorted(errors) == ["b.json", "c.json"]
    assert errors["b.json"] == "model 'a' version 1 is already served from a.json"
    assert "not valid JSON" in errors["c.json"]
    with pytest.raises(ModelError, match="does not exist or is not a folder"):
        scan(tmp_path / "missing")
    with pytest.raises(ModelError, match=f"^model folder '{tmp_path / 'missing'}' does not"):
        scan(tmp_path / "missing")
    with pytest.raises(ModelError, match="cannot read model file"):
        load_model_file(tmp_path)  # a folder, not a file


def test_refresh_adds_replaces_keeps_and_removes(tmp_path):
    a = _save(tmp_path, "a", 1, file="a.json")
    registry, _ = Registry.from_folder(tmp_path)
    assert registry.refresh() == {}  # nothing changed
    before = registry.get("a")

    b = _save(tmp_path, "b", 1, file="b.json")
    assert registry.refresh() == {}
    assert registry.get("b").path == b and registry.get("a") is before  # untouched

    # a corrupt rewrite is refused and the previous version keeps serving
    a.write_text("{broken")
    _bump(a)
    errors = registry.refresh()
    assert list(errors) == ["a.json"] and "not valid JSON" in errors["a.json"]
    assert registry.get("a") is before
    assert registry.refresh() == {}  # the same bad file is not reported again

    # a valid rewrite replaces it
    _save(tmp_path, "a", 1, seed=5, file="a.json")
    _bump(a)
    assert registry.refresh() == {}
    assert registry.get("a") is not before and registry.get("a").path == a

    # a second file claiming the same name and version is refused
    _save(tmp_path, "a", 1, file="z.json")
    assert registry.refresh()["z.json"] == "model 'a' version 1 is already served from a.json"

    os.remove(b)
    os.remove(tmp_path / "z.json")
    assert registry.refresh() == {}
    with pytest.raises(ModelNotServed):
        registry.get("b")
    assert len(registry) == 1


def test_refresh_without_a_folder_and_the_watch_thread(tmp_path):
    assert Registry([]).refresh() == {}
    _save(tmp_path, "a", 1, file="a.json")
    registry, _ = Registry.from_folder(tmp_path)
    stop = threading.Event()
    thread = registry.watch(stop, interval=0.05)
    assert thread.daemon and thread.name == "heml-model-watch"
    _save(tmp_path, "b", 1, file="b.json")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            registry.get("b")
            break
        except ModelNotServed:
            time.sleep(0.05)
    assert registry.get("b").model.name == "b"
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_file_rejected_at_start_is_retried_once_it_changes(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text("{")
    _save(tmp_path, "b", 1, file="b.json")
    registry, errors = Registry.from_folder(tmp_path)
    assert list(errors) == ["a.json"]
    assert registry.refresh() == {}  # unchanged: not retried, not reported again
    _save(tmp_path, "a", 1, file="a.json")
    _bump(bad)
    assert registry.refresh() == {}
    assert registry.get("a").model.name == "a"


def test_a_hidden_file_added_while_serving_stays_unserved(tmp_path):
    """Hidden files (ledgers, editors' temporaries) are never served, on a reload as at start:
    a valid model saved as `.x.json` while serving is not picked up, nor reported."""
    _save(tmp_path, "a", 1, file="a.json")
    registry, _ = Registry.from_folder(tmp_path)
    _save(tmp_path, "hidden", 1, file=".hidden.json")
    (tmp_path / ".broken.json").write_text("{")
    assert registry.refresh() == {}
    with pytest.raises(ModelNotServed):
        registry.get("hidden")
    assert len(registry) == 1


def test_a_file_rejected_on_reload_is_retried_once_it_changes_and_a_removal_is_seen(tmp_path):
    """A reload that only removes files still rebuilds the index; a reload that rejects a new
    file keeps serving the others unchanged."""
    a = _save(tmp_path, "a", 1, file="a.json")
    _save(tmp_path, "b", 1, file="b.json")
    registry, _ = Registry.from_folder(tmp_path)
    os.remove(a)
    assert registry.refresh() == {}
    with pytest.raises(ModelNotServed):
        registry.get("a")
    assert [m.model.name for m in registry.latest()] == ["b"]
    bad = tmp_path / "c.json"
    bad.write_text("{")
    assert list(registry.refresh()) == ["c.json"]
    assert registry.refresh() == {}  # the same bad file: not retried
    _save(tmp_path, "c", 1, file="c.json")
    _bump(bad)
    assert registry.refresh() == {} and registry.get("c").model.name == "c"


def test_one_bad_or_vanished_file_does_not_hold_up_the_others_on_reload(tmp_path):
    """A reload goes through every file: one that fails to load, or that vanished before it
    could be read (a dangling link here), is reported or skipped, and the files after it in
    the same reload are still picked up."""
    _save(tmp_path, "z", 1, file="z.json")
    registry, _ = Registry.from_folder(tmp_path)
    (tmp_path / "a.json").write_text("{")
    (tmp_path / "b.json").symlink_to(tmp_path / "gone.json")
    _save(tmp_path, "c", 1, file="c.json")
    errors = registry.refresh()
    assert list(errors) == ["a.json"]
    assert registry.get("c").model.name == "c" and len(registry) == 2


def test_a_dangling_model_file_at_start_is_reported_not_fatal(tmp_path):
    """A file that cannot even be stat'ed (a dangling link) is reported and skipped at start,
    like a broken one; the others are served."""
    _save(tmp_path, "a", 1, file="a.json")
    (tmp_path / "b.json").symlink_to(tmp_path / "gone.json")
    registry, errors = Registry.from_folder(tmp_path)
    assert list(errors) == ["b.json"] and registry.get("a").model.name == "a"
