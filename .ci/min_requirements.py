"""Print the project's declared minimum dependency versions as `name==version` lines.

`make min-deps` installs exactly these: a lower bound nobody installs is a guess.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_LOWER = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def main() -> int:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    for requirement in dependencies:
        match = _LOWER.match(requirement)
        if match is None:
            print(f"min_requirements: no >= lower bound in {requirement!r}", file=sys.stderr)
            return 1
        name, extras, version = match.groups()
        print(f"{name}{extras or ''}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
