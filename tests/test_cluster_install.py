"""The install hook and the skip/fail rule of the cluster tests (no service is started)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .cluster_support import ROOT, require_binary

SCRIPT = ROOT / ".ci" / "install-services.sh"


def test_a_missing_binary_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_binary("heml-no-such-binary", "heml-no-such-package")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_binary("heml-no-such-binary", "heml-no-such-package")


def test_nginx_is_found_in_sbin_when_path_lacks_it(monkeypatch):
    """A non-root PATH often lacks /usr/sbin, where Debian puts nginx."""
    if not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not in /usr/sbin here")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert require_binary("nginx", "nginx") == "/usr/sbin/nginx"


def _run(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    # a PATH without apt-get and without redis-server (it lives in /usr/bin): the script
    # cannot install and must say so in one line
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("id",):
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "TMPDIR": str(tmp_path)}
    if ci is not None:
        env["CI"] = ci
    bash = shutil.which("bash")
    return subprocess.run(
        [bash, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_install_hook_prints_one_line_when_it_cannot_install(tmp_path):
    if shutil.which("bash") is None or shutil.which("id") is None:
        pytest.skip("needs bash and id")
    local = _run(tmp_path, None)
    assert local.returncode == 0, local.stderr  # never fails `make test`
    lines = local.stdout.splitlines()
    assert len(lines) == 1, local.stdout
    assert lines[0].startswith("cluster tests skipped:") and "redis-server" in lines[0]
    ci = _run(tmp_path, "true")
    assert ci.returncode == 0
    assert ci.stdout.startswith("cluster tests will fail (CI=true):"), ci.stdout
