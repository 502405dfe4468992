"""Trials follow the time: the task scheduler's rule, and a real run that exhausts small tasks.

The rule first gives every task a round, then picks the task furthest below its share of the
trials (share = calls x best ms over the model's). A real run on a small blocked network goes on
long after its small tasks (packs, pools, the classifier) run out of distinct candidates: their
search returns empty batches, which once crashed MetaSchedule's join (the scheduler thought a
batch was still in flight).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from helpers import cli_here, output, run_cli
from test_blocked_layout import SmallNet

from tvmc_attend.compiler.tuning.scheduler import latency_share_pick


@dataclass
class State:
    weight: float
    best: float | None
    done: int


def test_every_task_gets_a_first_round() -> None:
    states = [State(1, 5.0, 16), State(1, None, 0), State(1, None, 0)]
    assert latency_share_pick(states, [0, 1, 2], first_round=16) == 1
    # a task whose first batch is in flight waits; the next one without a result goes
    assert latency_share_pick(states, [0, 1, 2], first_round=16, in_flight=[1], batch=16) == 2


def test_trials_follow_the_weighted_latency() -> None:
    # task 0 holds 90 % of the time (3 calls x 3 ms vs 1 x 1 ms): it gets ~90 % of the trials
    states = [State(3, 3.0, 0), State(1, 1.0, 0)]
    picks = []
    for _ in range(100):
        pick = latency_share_pick(states, [0, 1], first_round=16)
        states[pick].done += 1
        picks.append(pick)
    assert 85 <= picks.count(0) <= 95
    # a batch in flight counts as done: the other task is chosen meanwhile
    states = [State(1, 1.0, 16), State(1, 1.0, 16)]
    assert latency_share_pick(states, [0, 1], first_round=16, in_flight=[0], batch=16) == 1


def test_a_task_without_any_result_gets_the_least_share() -> None:
    states = [State(1, 2.0, 40), State(1, None, 40), State(1, 4.0, 40)]
    picks = [latency_share_pick(states, [0, 1, 2], first_round=16)]
    assert picks == [2]


@pytest.mark.bench  # 240 trials, ~2.5 min: a measurement of where trials go (make bench)
def test_a_long_run_on_a_small_net_follows_the_time(tmp_path) -> None:
    module = SmallNet().eval()
    path = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(module, (torch.zeros(1, 3, 32, 32),)), str(path))
    logs, report = tmp_path / "logs", tmp_path / "tune.json"
    result = run_cli("tune", "--model", path, "--target", "host", "--trials", 240,
                     "--trials-per-round", 8, "--log-dir", logs, "--json", report,
                     timeout=1500)
    assert result.returncode == 0, output(result)
    data = json.loads(report.read_text())
    tasks = [t for t in data["tasks"] if t["best_ms"] is not None]
    assert len(tasks) == len(data["tasks"]), "every task has a measured schedule"
    by_share = sorted(tasks, key=lambda t: -t["share"])
    # the task holding the most time got more trials than the one holding the least
    assert by_share[0]["trials"] > by_share[-1]["trials"], by_share
    assert abs(sum(t["share"] for t in tasks) - 1) < 1e-6
    assert data["new_trials"] < 240 + 8  # the last round may pass the budget
    bundle = tmp_path / "bundle"
    result = cli_here("compile", "--model", path, "--target", "host", "--log-dir", logs,
                     "-o", bundle)
    assert result.returncode == 0, output(result)
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["tuned"] and meta["verified"]["max_rel_err"] < 1e-5
