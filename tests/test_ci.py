"""CI's set-up (.ci/run, .ci/browser): on a machine without root rights or without the package, the
browser install never waits for a password and says in one line why the browser test is skipped;
both Debian's and Ubuntu's package names are tried."""
import os
import shutil
import stat
import subprocess

from helpers import ROOT


def stub(folder, name, body):
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_without_root_the_browser_install_neither_waits_nor_fails_and_says_why(tmp_path):
    """`id` says we are not root; `sudo` without -n would wait for a password (here: sleep), with -n it
    refuses; no chromium on PATH. The step must end at once, with exit 0 and the message."""
    stub(tmp_path, "id", 'echo 1000')
    stub(tmp_path, "sudo", f'if [ "$1" = "-n" ]; then echo "sudo: a password is required" >&2; exit 1; fi\n'
                           f'exec {shutil.which("sleep")} 60')
    env = {**os.environ, "PATH": str(tmp_path)}  # the stubs alone: no chromium, no apt-get
    result = subprocess.run([shutil.which("bash"), str(ROOT / ".ci" / "browser")], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and "browser test of the trace page will be skipped" in result.stdout


def test_ci_tries_debian_and_ubuntu_package_names_and_runs_the_readme_test_command():
    browser = (ROOT / ".ci" / "browser").read_text()
    assert "sudo -n" in browser and "chromium-driver" in browser and "chromium-chromedriver" in browser
    assert "chromium-browser" in browser
    run = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/browser" in run and "python -m pytest -q" in run
