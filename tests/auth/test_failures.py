"""The per-IP AUTH failure budget, shared through SQLite between processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kittiwake.auth.failures import FailureBudget, over_budget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_over_budget() -> None:
    assert not over_budget(9, 10)
    assert over_budget(10, 10)
    assert not over_budget(1000, 0)  # 0: no budget


def test_ten_failures_in_ten_minutes_block_for_ten_minutes(tmp_path: Path) -> None:
    clock = Clock()
    budget = FailureBudget(tmp_path / "f.db", clock=clock)
    for _ in range(9):
        assert not budget.record_failure("192.0.2.1", limit=10, window=600)
        clock.now += 60  # nine failures over nine minutes
    assert not budget.blocked("192.0.2.1")
    assert budget.record_failure("192.0.2.1", limit=10, window=600)
    assert budget.blocked("192.0.2.1")
    assert not budget.blocked("192.0.2.2")  # per address
    clock.now += 599
    assert budget.blocked("192.0.2.1")
    clock.now += 2
    assert not budget.blocked("192.0.2.1")
    # the slate is clean afterwards: one failure does not block again
    assert not budget.record_failure("192.0.2.1", limit=10, window=600)
    budget.close()


def test_old_failures_fall_out_of_the_window(tmp_path: Path) -> None:
    clock = Clock()
    budget = FailureBudget(tmp_path / "f.db", clock=clock)
    for _ in range(20):
        assert not budget.record_failure("192.0.2.1", limit=10, window=600)
        clock.now += 70  # never ten within ten minutes
    assert not budget.blocked("192.0.2.1")
    budget.close()


def test_shared_between_processes(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    code = (
        "import sys; from pathlib import Path; from kittiwake.auth.failures import FailureBudget\n"
        "b = FailureBudget(Path(sys.argv[1]))\n"
        "for _ in range(5): b.record_failure('198.51.100.7', limit=10, window=600)\n"
    )
    for _ in range(2):  # two "workers", five failures each
        subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)
    budget = FailureBudget(db)
    assert budget.blocked("198.51.100.7")
    budget.close()
    assert oct(db.stat().st_mode & 0o777) == "0o600"
