"""What is trusted (README, "What is trusted"): data files are only read, never run. No module of the package
unpickles with ``torch.load(weights_only=False)``, ``pickle.load`` or NumPy's ``allow_pickle``, nor calls ``eval`` /
``exec`` on text, on any path a user can pass."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import mavrl_ppl

PACKAGE = Path(mavrl_ppl.__file__).parent
FORBIDDEN = {
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "pickle.load": re.compile(r"\b(c?pickle|dill|joblib|marshal|shelve)\.(load|loads|open)\b"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "eval / exec of text": re.compile(r"(?<![\w.])(eval|exec)\s*\("),
    "yaml.load": re.compile(r"yaml\.(unsafe_)?load\("),
}


def offending_lines() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if code.strip().startswith(('"', "'", "``")):
                continue  # a docstring line
            for what, pattern in FORBIDDEN.items():
                if pattern.search(code):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {what}: {line.strip()}")
    return found


def test_no_module_unpickles_or_evaluates_what_a_user_passes():
    assert offending_lines() == []


def test_the_check_sees_what_it_looks_for(tmp_path, monkeypatch):
    bad = tmp_path / "mavrl_ppl"
    bad.mkdir()
    (bad / "m.py").write_text("state = torch.load(path, weights_only=False)\nx = pickle.load(f)\ny = eval(text)\n"
                              "ok = torch.load(path, weights_only=True)\nmodel.eval()\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", bad)
    assert [line.split(": ")[1] for line in offending_lines()] == [
        "torch.load without weights_only=True", "weights_only=False", "pickle.load", "eval / exec of text"]
