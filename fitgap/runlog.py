"""Run folders and JSON-lines logs."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from .checkpoint import check_resumable_everywhere
from .files import atomic_write_text


def start_run(cfg: Dict[str, Any], is_main: bool, checkpoint: str, same: Sequence[str], summary: str,
              defaults: Optional[Dict[str, Any]] = None) -> str:
    """The run folder runs/<name>: refuse a checkpoint there that another model or task wrote (before
    anything is written; rank 0 decides, every rank raises), then on the main rank print the resolved
    config and `summary` and save config.yaml. Returns the folder."""
    from . import config as C

    run_dir = os.path.join(cfg["out_dir"], cfg["name"])
    check_resumable_everywhere(os.path.join(run_dir, checkpoint), cfg, same, defaults)
    if is_main:
        os.makedirs(run_dir, exist_ok=True)
        print(C.dump(cfg), flush=True)
        print(summary, flush=True)
        C.save(cfg, os.path.join(run_dir, "config.yaml"))
    return run_dir


class JsonlLog:
    """Append-only JSON-lines log; `truncate_after(step)` drops lines a resumed run will redo."""

    def __init__(self, path: str):
        self.path = path

    def write(self, record: Dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> List[Dict]:
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a kill
                        pass
        return out

    def truncate_after(self, step: int) -> None:
        keep = [r for r in self.read() if r.get("step", -1) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
