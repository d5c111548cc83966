"""Print the versions a run tests, and fail unless every locked package is installed at its
locked version (CI runs this after `make install`)."""

import importlib.metadata as metadata
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parent / "lock.txt"
SHOWN = ("torch", "triton", "transformers", "pydantic")


def locked_versions() -> dict[str, str]:
    """name -> version of every `name==version` line of the lock."""
    lines = LOCK.read_text(encoding="utf-8").splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and line[0] != "#")


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    print("  ".join(f"{name}=={installed(name)}" for name in SHOWN))
    drift = {name: (version, installed(name)) for name, version in locked_versions().items()
             if installed(name) != version}
    for name, (version, found) in sorted(drift.items()):
        print(f"not as locked: {name} (lock {version}, installed {found})", file=sys.stderr)
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
