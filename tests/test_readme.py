"""The README's commands run as written, in the order written, right after the set-up command (issue: a new user hit
collisions and missing files). The set-up chain's fit and every ``python -m`` line of the ``bash`` blocks run in a
fresh directory (with the repository's ``examples/`` beside them, as in a clone); each must exit 0."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(text: str) -> list[str]:
    """Every ``python -m`` command of the README's ``bash`` blocks, in order; a set-up chain contributes its last
    link (``... && python -m mavrl_ppl.fit``); comments are dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("&&")[-1].split("  #")[0].strip()
            if command.startswith("python -m "):
                commands.append(command)
    return commands


def test_the_readme_lists_the_commands_a_new_user_runs():
    commands = readme_commands((ROOT / "README.md").read_text())
    assert commands[0] == "python -m mavrl_ppl.fit"  # the set-up command's fit comes first
    assert any("--inference nuts" in c for c in commands) and any("analysis.compare" in c for c in commands)
    outs = [c.split("--out ")[1].split()[0] for c in commands if "--out " in c]
    assert len(outs) == len(set(outs)), "two README examples write the same run directory"


@pytest.mark.slow
def test_every_readme_command_runs_in_order(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for command in readme_commands((ROOT / "README.md").read_text()):
        argv = shlex.split(command)
        done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                              timeout=3600, check=False)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
