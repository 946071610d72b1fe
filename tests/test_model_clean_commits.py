"""Writers that run a Python repository's tests commit their change, never bytecode or caches.

Real sandboxes, git and Prefect; the model is the stand-in OpenAI server on loopback. Each
writer edits its own module, runs the tests as a user would (the sandbox's environment keeps
bytecode and caches out of /workspace), then runs them again the way a tool that ignores that
environment would (bytecode written next to the sources): the commits leave both out, and the
run integrates.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

import test_model_team as team
from flowkit import git, make_target_repo, run_sisyphus
from openai_standin import final_answer, tool_call

pytestmark = [pytest.mark.docker, pytest.mark.prefect]

MODULES = {"frontend": "add", "frontend-2": "mul", "frontend-3": "sub"}
OPS = {"add": "a + b", "mul": "a * b", "sub": "a - b"}
TESTS = ("import unittest\n\nfrom calc import add, mul, sub\n\n\nclass CalcTest(unittest.TestCase):\n"
         "    def test_ops(self):\n        self.assertEqual(add.run(2, 3), 5)\n"
         "        self.assertEqual(mul.run(2, 3), 6)\n        self.assertEqual(sub.run(2, 3), -1)\n")
RUN_TESTS = ["python3", "-m", "unittest", "discover", "-s", "tests", "-t", "."]
LOOK_FOR_CACHES = ["sh", "-c", "echo PYTHONDONTWRITEBYTECODE=$PYTHONDONTWRITEBYTECODE; "
                   "find . -name '*.pyc' -o -name __pycache__ -o -name .pytest_cache | sort; echo end-of-list"]
# A tool that ignores the environment: bytecode next to the sources, and a pytest cache folder.
IGNORE_ENV = ["python3", "-c", "import os, sys, unittest; sys.dont_write_bytecode = False; sys.pycache_prefix = None; "
              "sys.path.insert(0, '.'); os.makedirs('.pytest_cache/v', exist_ok=True); "
              "open('.pytest_cache/v/lastfailed', 'w').write('{}'); "
              "unittest.main(module=None, argv=['t', 'discover', '-s', 'tests', '-t', '.'])"]


def python_repo(path: Path) -> Path:
    files = {"README.md": "# calc\n", "calc/__init__.py": "", "tests/__init__.py": "", "tests/test_calc.py": TESTS}
    files.update({f"calc/{m}.py": f"def run(a, b):\n    return {op}\n" for m, op in OPS.items()})
    return make_target_repo(path, files)


def writer_script(module: str) -> list:
    return [tool_call("write_file", path=f"calc/{module}.py",
                      content=f'def run(a, b):\n    """{module} two numbers."""\n    return {OPS[module]}\n'),
            tool_call("run_command", argv=RUN_TESTS),
            tool_call("run_command", argv=LOOK_FOR_CACHES),
            tool_call("run_command", argv=IGNORE_ENV),
            final_answer(f"documented {module}", [f"calc/{module}.py"])]


@pytest.mark.parametrize("writers", [2, 3])
def test_writers_that_run_the_tests_integrate_with_no_bytecode_on_any_branch(prefect_api, uw_home, tmp_path,
                                                                             docker_client, writers):
    repo = python_repo(tmp_path / "calc")
    run_id = f"clean-{uuid.uuid4().hex[:6]}"
    names = list(MODULES)[:writers]
    with team.TeamStandIn({name: writer_script(MODULES[name]) for name in names}) as server:
        settings = team.save_settings(server)
        try:
            result = run_sisyphus({"task": "Add a docstring to each calc module", "repo": str(repo),
                                   "run_id": run_id, "agents": names, "agent_profiles": {"frontend": "model"},
                                   "model_settings": settings}, team.approve_all)
        finally:
            team.delete_settings(settings)
    assert result.outcome == "integrated", (result.message, [o.errors for o in result.agents])
    assert [o.status for o in result.agents] == ["succeeded"] * writers
    for name in names:
        results = team.tool_results(server.by_agent[name][-1])
        assert "OK" in results[1] and "exit code: 0" in results[1]          # the tests ran and passed
        listed = results[2].split("--- stdout ---")[1].split("end-of-list")[0]
        assert "PYTHONDONTWRITEBYTECODE=1" in listed
        assert ".pyc" not in listed and "__pycache__" not in listed and ".pytest_cache" not in listed
        assert "OK" in results[3]                                           # the env-ignoring run passed too
        plan = Path(next(o.plan_path for o in result.agents if o.role == name)).read_text()
        assert "not committed (build and cache outputs, built-in list)" in plan
        assert "calc/__pycache__/" in plan and ".pytest_cache/" in plan
    branches = [f"ultrawork/{run_id}/{name}" for name in names] + [f"ultrawork/{run_id}/integration"]
    for branch in branches:
        tree = git(repo, "ls-tree", "-r", "--name-only", branch).splitlines()
        assert not [p for p in tree if p.endswith(".pyc") or "__pycache__" in p or ".pytest_cache" in p], tree
    integration = f"ultrawork/{run_id}/integration"
    for name in names:
        assert f'"""{MODULES[name]} two numbers."""' in git(repo, "show", f"{integration}:calc/{MODULES[name]}.py")
    # the integrated tree passes its tests on the host too
    check = tmp_path / "check"
    subprocess.run(["git", "clone", "-q", "-b", integration, str(repo), str(check)], check=True)
    tests = subprocess.run(["python3", "-B", "-m", "unittest", "discover", "-s", "tests", "-t", "."], cwd=check,
                           capture_output=True, text=True)
    assert tests.returncode == 0, tests.stderr
