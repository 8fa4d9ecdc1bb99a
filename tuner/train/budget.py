"""Under a budget, the newest facts first: what part of the history a run can learn.

A budget (`train.budget_tokens`, or `train.budget_minutes` turned into tokens at the
median speed of the lineage's last runs on the same base and backend) that cannot hold every
pass over every example would otherwise stop a run partway, every fact half-learned. So
the run is planned to fit: the facts (all examples made from one commit, pull request or
file) are taken newest first, by the date their source last changed, until their share of
the budget is spent; the other examples (general replay, refusals) are cut in the same
proportion. What the adapter covers (how many facts, from which date to which) goes into
its manifest. The facts are whole, so the newest ones that fit leave some of the budget
unspent (on a CPU, where a fact is a large share of a first run's budget, often half of
it): that room goes to more passes over what was kept, at most `MAX_PASSES` times the
planned ones. A short run ends in its first few dozen steps, where the domain's loss falls
fastest and the model has drifted furthest from the base; more passes on the same facts
learn them better and let the replay pull it back (benchmarks/RESULTS.md, "`make run` on
builtin:smol again"). The budget still stops training between steps, as a hard limit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from repotune.manifests import Coverage

MAX_PASSES = 2.0  # the most the room a budget leaves may multiply the planned passes by


@dataclass
class Plan:
    rows: list[dict[str, Any]]
    covers: Coverage | None  # None: every fact fits
    more: float = 1.0  # the passes' factor that spends the room the kept facts left (1.0: as planned)
    times: float = 1.0  # the passes over the kept rows it was planned for, before `more`


def fact(row: dict[str, Any]) -> str | None:
    """What a row teaches about: a commit, a pull request or a file; None for general examples."""
    sources = row.get("sources") or {}
    for key in ("commit", "pr"):
        if sources.get(key) is not None:
            return f"{key}:{sources[key]}"
    if sources.get("path") is not None:  # path@blob: the file, whatever its version
        return f"path:{str(sources['path']).rpartition('@')[0] or sources['path']}"
    return None


def passes(examples: int, epochs: float, max_steps: int, batch: int) -> float:
    """How many times the run goes over its examples."""
    return max_steps * batch / max(examples, 1) if max_steps else epochs


def plan(rows: list[dict[str, Any]], count: Callable[[list[dict[str, Any]]], list[int]], budget: int,
         times: float) -> Plan:
    """The newest facts (and their share of the other rows) whose `times` passes fit `budget` tokens."""
    tokens = count(rows)
    if not budget or sum(tokens) * times <= budget:
        return Plan(rows, None)
    share = budget / (sum(tokens) * times)
    groups: dict[str, list[int]] = defaultdict(list)
    others: list[int] = []
    for i, row in enumerate(rows):
        key = fact(row)
        (groups[key] if key else others).append(i)
    dates = {key: max(str((rows[i].get("sources") or {}).get("date") or "") for i in idx)
             for key, idx in groups.items()}
    newest = sorted(groups, key=lambda k: (dates[k], k), reverse=True)
    room = share * sum(tokens[i] for idx in groups.values() for i in idx)
    kept: list[str] = []
    for key in newest:
        size = sum(tokens[i] for i in groups[key])
        if kept and size > room:
            break
        kept.append(key)
        room -= size
    room = share * sum(tokens[i] for i in others)
    chosen = [i for key in kept for i in groups[key]]
    for i in others:
        if tokens[i] <= room:
            chosen.append(i)
            room -= tokens[i]
    known = [dates[k] for k in kept if dates[k]]
    spent = sum(tokens[i] for i in chosen) * times
    more = min(budget / spent, MAX_PASSES) if spent else 1.0
    return Plan([rows[i] for i in sorted(chosen)],
                Coverage(facts=len(kept), of=len(groups), since=min(known, default=None),
                         until=max(known, default=None)),
                round(more, 3) if more >= 1.05 else 1.0, times)
