"""`make setup`'s choice of interpreter (the Makefile's PYTHON): python3 on PATH unless that is a
plain pyenv build and the system's optimised /usr/bin/python3 can make a venv."""
from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def system_python_can_venv() -> bool:
    probe = "import sys, ensurepip; ensurepip.version(); sys.exit(sys.version_info < (3, 11))"
    return Path("/usr/bin/python3").exists() and subprocess.run(["/usr/bin/python3", "-c", probe],
                                                                capture_output=True).returncode == 0


def venv_interpreter(python_dir: Path, **env: str) -> str:
    """The interpreter `make setup` would build .venv from, with `python_dir` first on PATH."""
    # under `make test` the parent make's variables are in the environment: not for this one
    inherited = {"PYTHON", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"}
    env = {**{k: v for k, v in os.environ.items() if k not in inherited}, **env,
           "PATH": f"{python_dir}:{os.environ['PATH']}"}
    out = subprocess.run(["make", "--no-print-directory", "-n", "setup", "VENV=/nonexistent/venv"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].removesuffix(" -m venv /nonexistent/venv")


def python3_in(folder: Path) -> Path:
    """A folder whose python3 is this interpreter's build (a venv of it: the base's CONFIG_ARGS,
    sys.prefix `folder`)."""
    venv.create(folder, with_pip=False)
    return folder / "bin"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_setup_prefers_the_system_python_over_a_plain_pyenv_build(tmp_path):
    import sysconfig
    plain_build = "--enable-optimizations" not in (sysconfig.get_config_var("CONFIG_ARGS") or "")
    if not (plain_build and system_python_can_venv()):
        pytest.skip("needs this interpreter built without --enable-optimizations and a system python3 >= 3.11 with venv")
    assert venv_interpreter(python3_in(tmp_path / ".pyenv" / "versions" / "x")) == "/usr/bin/python3"
    # the same build outside a pyenv tree is somebody's choice, and so is PYTHON
    assert venv_interpreter(python3_in(tmp_path / "elsewhere")) == "python3"
    assert venv_interpreter(python3_in(tmp_path / ".pyenv" / "versions" / "y"), PYTHON="python3.11") == "python3.11"
