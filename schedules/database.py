"""The tuning database: MetaSchedule JSON records kept per target in one folder.

Layout: ``DIR/<target name>-<hash of the full TVM target>/`` holds ``database_workload.json`` and
``database_tuning_record.json`` (MetaSchedule's JSON database, one record a line, appended as each candidate is
measured), ``target.json`` (what the key stands for) and ``logs/`` (MetaSchedule's logs). A record is only ever
looked up under the exact target it was measured on: an x86 record never reaches an ARM build, nor a record of
a 2-core build a 4-core one.

A run killed mid-write can leave a last line cut short; opening the database drops that line (the one
unfinished record) so everything measured before it still loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

from compiler.errors import IntformerError
from compiler.tvm_compat import meta_schedule as ms

FILES = ("database_workload.json", "database_tuning_record.json")
TOP_K_ALL = 1 << 30


def target_key(target, name: str) -> str:
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def _drop_partial_line(path: str) -> bool:
    """Truncate a file whose last line has no newline (a write cut short). True if something was dropped."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return False
        keep = data.rfind(b"\n") + 1
        f.seek(keep)
        f.truncate()
    return True


def _check_records(path: str) -> None:
    """Every line of a record file is a JSON list (MetaSchedule's parser fails without naming the file)."""
    if not os.path.exists(path):
        return
    if not os.path.isfile(path):
        raise IntformerError(f"{path}: is not a file; move it away and tune again")
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ok = isinstance(json.loads(line), list)
            except ValueError:
                ok = False
            if not ok:
                raise IntformerError(f"{path}: line {n} is not a tuning record ({line[:40]!r}); delete that line "
                                     "(or the file, losing its records) and run again")


class TuningDatabase:
    """The records of one target inside a database folder."""

    def __init__(self, root: str, target, target_name: str, create: bool = True):
        self.root = root
        self.key = target_key(target, target_name)
        self.path = os.path.join(root, self.key)
        if not os.path.isdir(self.path):
            if not create:
                have = ", ".join(self.keys_in(root)) or "none"
                raise IntformerError(f"--db {root}: no tuning records for target {target_name} "
                                     f"(key {self.key}; the database has: {have}); run `intformer tune` first")
            os.makedirs(self.path, exist_ok=True)
            with open(os.path.join(self.path, "target.json"), "w") as f:
                json.dump({"name": target_name, "target": str(target)}, f, indent=1)
        for name in FILES:
            if _drop_partial_line(os.path.join(self.path, name)):
                from compiler.progress import status

                status(f"{os.path.join(self.path, name)}: dropped an unfinished last record (interrupted run)")
            _check_records(os.path.join(self.path, name))
        try:
            self.ms_database = ms.database.JSONDatabase(
                path_workload=os.path.join(self.path, FILES[0]),
                path_tuning_record=os.path.join(self.path, FILES[1]), allow_missing=True)
        except Exception as e:  # noqa: BLE001 - TVM's parser names no file
            last = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise IntformerError(f"{self.path}: the tuning records do not load ({last[-1] if last else e}); "
                                 f"move {FILES[0]} and {FILES[1]} away and tune again") from None

    @staticmethod
    def keys_in(root: str) -> list[str]:
        if not os.path.isdir(root):
            return []
        return sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "target.json")))

    def records_for(self, workload) -> int:
        """Measured (successful) candidates held for a workload module."""
        db = self.ms_database
        if not db.has_workload(workload):
            return 0
        return len(db.get_top_k(db.commit_workload(workload), TOP_K_ALL))

    def best_schedule(self, workload, target):
        """The best record's schedule for a workload module, or None."""
        return self.ms_database.query_schedule(workload, target, workload_name="main")

    def best_trace(self, workload, target):
        """The best record's trace (its sampling decisions) for a workload module, or None."""
        rec = self.ms_database.query_tuning_record(workload, target, workload_name="main")
        return None if rec is None else rec.trace

    def __len__(self) -> int:
        return len(self.ms_database)

    @contextlib.contextmanager
    def work_dir(self):
        logs = os.path.join(self.path, "logs")
        os.makedirs(logs, exist_ok=True)
        yield logs
