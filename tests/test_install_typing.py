"""A user's ``mypy --strict`` sees miles_sdk's types after ``pip install .`` and ``pip install -e .``.

Each case installs the package as a user would, into a fresh virtual environment outside this
repository, and type-checks a user's file from a folder outside it with no path settings (no
MYPYPATH, no mypy config). The environment reaches torch and the other dependencies through a
.pth line to this project's own site-packages, so nothing is downloaded or reinstalled; a .pth line
adds a plain path, so this project's own editable install of miles_sdk (if any) is not seen.

The user's file holds one deliberate error that mypy can find only by reading miles_sdk's types
(a float Config field assigned to an int): "found the package, and typed" is asserted by that
error being reported, and nothing else.

Slow-ish (a cold mypy run over torch and transformers); the mypy cache is kept in pytest's cache
folder between runs, and shared by the cases.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

USER_FILE = """\
from miles_sdk import Config, Sample, Trainer


async def my_rm(args: Config, sample: Sample) -> float:
    return 1.0 if sample.response.strip() == sample.label else 0.0


def build() -> Trainer:
    return Trainer(Config(n_samples_per_prompt=4), reward_model=my_rm)


learning_rate: int = Config().lr  # the one deliberate error: lr is a float
"""

EXPECTED_ERROR = (
    'user_code.py:12: error: Incompatible types in assignment (expression has type "float", '
    'variable has type "int")  [assignment]'
)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    return f"$ {' '.join(cmd)}\n(exit {done.returncode})\n{output}"


def _pip(python: Path, *args: str, cwd: Path) -> None:
    log = _run([str(python), "-m", "pip", *args, "-q", "--no-deps", "--no-build-isolation"], cwd=cwd)
    assert "(exit 0)" in log, log


def _user_env() -> dict[str, str]:
    """The caller's environment minus what would point mypy or Python at this repository."""
    env = {k: v for k, v in os.environ.items() if k not in {"MYPYPATH", "PYTHONPATH", "MYPY_CONFIG_FILE_DIR"}}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as a user gets it: pyproject, README and miles_sdk, and nothing else of the repo."""
    root = tmp_path_factory.mktemp("miles_sdk_project")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(
        REPO / "miles_sdk", root / "miles_sdk", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return root


@pytest.fixture(scope="module")
def mypy_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    if cache is None:
        return tmp_path_factory.mktemp("miles_sdk_install_typing_mypy")
    return Path(cache.mkdir("miles_sdk_install_typing_mypy"))


def _fresh_venv(where: Path) -> Path:
    """A venv whose dependencies come from this project's site-packages (torch is not reinstalled)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    (Path(site) / "_miles_sdk_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _check_user_file(python: Path, workdir: Path, cache: Path) -> str:
    workdir.mkdir()
    (workdir / "user_code.py").write_text(USER_FILE)
    return _run(
        [str(python), "-m", "mypy", "--strict", "--cache-dir", str(cache), "user_code.py"],
        cwd=workdir,
        env=_user_env(),
    )


def _assert_types_seen(log: str) -> None:
    assert "Cannot find implementation or library stub" not in log, log
    assert "missing library stubs or py.typed" not in log, log
    assert EXPECTED_ERROR in log, log
    assert "Found 1 error in 1 file" in log, log


def test_mypy_sees_the_types_after_a_wheel_install(
    project_copy: Path, mypy_cache: Path, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    log = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(project_copy),
        ],
        cwd=tmp_path,
    )
    assert "(exit 0)" in log, log
    (wheel,) = dist.glob("miles_sdk-*.whl")
    python = _fresh_venv(tmp_path / "venv")
    _pip(python, "install", "--no-index", str(wheel), cwd=tmp_path)
    _assert_types_seen(_check_user_file(python, tmp_path / "user", mypy_cache))


def test_mypy_sees_the_types_after_an_editable_install(
    project_copy: Path, mypy_cache: Path, tmp_path: Path
) -> None:
    # The README's line, `pip install -e .`, with no editable_mode setting: the project's own
    # pyproject must make it an install that mypy can follow.
    python = _fresh_venv(tmp_path / "venv")
    _pip(python, "install", "-e", str(project_copy), cwd=tmp_path)
    _assert_types_seen(_check_user_file(python, tmp_path / "user", mypy_cache))


def test_miles_sdk_type_checks_as_a_users_source_without_the_projects_stubs(
    project_copy: Path, mypy_cache: Path, tmp_path: Path
) -> None:
    """With the source on MYPYPATH, mypy --strict checks miles_sdk as user code: every untyped
    dependency must be reached without stubs that only this repository's mypy.ini points at."""
    python = _fresh_venv(tmp_path / "venv")
    workdir = tmp_path / "user"
    workdir.mkdir()
    (workdir / "user_code.py").write_text(USER_FILE)
    env = _user_env() | {"MYPYPATH": str(project_copy)}
    log = _run(
        [str(python), "-m", "mypy", "--strict", "--cache-dir", str(mypy_cache), "user_code.py"],
        cwd=workdir,
        env=env,
    )
    assert "Cannot find implementation or library stub" not in log, log
    errors_in_package = [line for line in log.splitlines() if "miles_sdk" in line and "error:" in line]
    assert not errors_in_package, log
    _assert_types_seen(log)
