"""The demo: a small repository and a task that exercises all four roles."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

DEMO_FILES = {
    "README.md": "# greetings\n\nA tiny library that greets people.\n\nSee docs/usage.md for the API.\n",
    "docs/usage.md": "# Usage\n\n```python\nfrom greetings import greet\ngreet('Ada')\n```\n\n"
                     "The greeting has no punctuation yet.\n",
    "greetings/__init__.py": "from .core import greet\n",
    "greetings/core.py": "def greet(name):\n    # TODO: add punctuation to the greeting\n    return \"Hello \" + name\n",
    "tests/test_core.py": "from greetings import greet\n\n\ndef test_greet():\n    assert greet('Ada').startswith('Hello')\n",
    "pyproject.toml": "[project]\nname = \"greetings\"\nversion = \"0.1.0\"\ndependencies = [\"rich>=13\"]\n"
                      "\n[project.optional-dependencies]\ndev = [\"pytest>=8\"]\n",
}

DEMO_TASK = """Add punctuation to the greeting: greet('Ada') should return 'Hello, Ada!'. Review the risk and update the docs.

```ultrawork-edit
[{"path": "greetings/core.py", "replace": ["\\"Hello \\" + name", "f\\"Hello, {name}!\\""]},
 {"path": "docs/usage.md", "replace": ["The greeting has no punctuation yet.", "greet('Ada') returns 'Hello, Ada!'."]}]
```
"""


def make_demo_repo(root: Path) -> Path:
    """A fresh git repository with the demo project, committed on ``main``."""
    repo = root / datetime.now(timezone.utc).strftime("greetings-%Y%m%d-%H%M%S-%f")
    for name, text in DEMO_FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    env_args = ["-c", "user.name=ultrawork demo", "-c", "user.email=demo@ultrawork.invalid"]
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "greetings 0.1.0"]):
        subprocess.run(["git", *env_args, *argv], cwd=repo, check=True, capture_output=True)
    return repo
