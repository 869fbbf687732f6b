"""Run under torchrun by tests/test_distributed.py: `decaylab train -c CONFIG -o OUT/STEM -q` for each CONFIG, one
after another in the same ranks (one start of the processes for many runs), as the command line would.

Every rank records, through an audit hook, each file it opens, renames, creates or removes under OUT, and writes the
list to TOUCHES-RANK.json (outside OUT) at the end: rank 0 alone may touch a run folder.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from decaylab.cli import main

EVENTS = {"open", "os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir", "os.unlink", "shutil.rmtree",
          "os.truncate", "os.chmod"}


def run(out: Path, touches: Path, configs: list[str]) -> None:
    """Train each config into OUT/<its stem> with the `decaylab train` command line."""
    rank = int(os.environ["RANK"])
    seen: list[str] = []
    root = str(out.resolve())

    def audit(event: str, args: tuple) -> None:
        if event in EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if os.path.realpath(path).startswith(root):
                seen.append(f"{event} {path}")

    sys.addaudithook(audit)
    for config in configs:
        sys.argv = ["decaylab", "train", "-c", config, "-o", str(out / Path(config).stem), "-q"]
        try:
            main()
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    root = "\0"  # the hook stays installed: stop recording before writing the report
    touches.with_name(f"{touches.stem}-{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
