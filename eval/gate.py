"""The regression gate's rules: whether a candidate adapter may be promoted, by its scores.

A candidate is promoted only when it keeps what the base knew and knows the repository
better (`[eval.gate]`):

- **general**: candidate ≥ base − `general_margin`, the greedy and the multiple-choice
  score each (multiple choice alone when refusals are trained into the adapter, since a
  refusal hides a greedy answer);
- **domain**: candidate ≥ the current promoted version − `domain_margin`; for a lineage's
  first version, candidate ≥ base + `domain_floor`.

A margin under the noise of the measurement would reject good adapters by chance: the
base is scored twice in the same run, and a margin is never taken smaller than the
difference seen between those two scorings (the check says when the noise set it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scores:
    general: float | None  # greedy, normalized match (None: not scored)
    general_mc: float | None  # multiple choice by option log-likelihood
    domain: float  # held-out domain questions by their key facts


@dataclass(frozen=True)
class Rules:
    general_margin: float = 0.02
    domain_margin: float = 0.02
    domain_floor: float = 0.1
    mc_only: bool = False  # refusals are trained in: the greedy general score is not judged


@dataclass(frozen=True)
class Check:
    name: str  # general, general_mc, domain
    value: float
    threshold: float
    passed: bool
    rule: str  # the rule in words, with the figures it was judged by


@dataclass
class Verdict:
    promote: bool
    checks: list[Check] = field(default_factory=list)
    noise: float = 0.0

    @property
    def reasons(self) -> list[str]:
        """What failed, one line each (none when promoted)."""
        return [c.rule for c in self.checks if not c.passed]

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "noise": self.noise, "checks": [asdict(c) for c in self.checks],
                "reasons": self.reasons}


def decide(rules: Rules, base: Scores, candidate: Scores, current: Scores | None, noise: float = 0.0) -> Verdict:
    """The checks a candidate must pass against the base (and the current version), and their verdict."""
    checks: list[Check] = []
    general_margin, domain_margin = max(rules.general_margin, noise), max(rules.domain_margin, noise)
    set_by = " (the noise between two scorings of the base)" if noise > rules.general_margin else ""
    for key, label in (("general", "general, greedy"), ("general_mc", "general, multiple choice")):
        if key == "general" and rules.mc_only:
            continue
        before, after = getattr(base, key), getattr(candidate, key)
        if before is None:
            continue
        if after is None:
            raise ValueError(f"the candidate has no {label} score to compare with the base's")
        threshold = round(before - general_margin, 4)
        checks.append(Check(key, after, threshold, after >= threshold,
                            f"{label}: {after:.3f} against the base's {before:.3f} − {general_margin:.3f}{set_by} "
                            f"= {threshold:.3f}"))
    if current is None:
        threshold = round(base.domain + rules.domain_floor, 4)
        rule = f"domain: {candidate.domain:.3f} against the base's {base.domain:.3f} + {rules.domain_floor:.3f}"
    else:
        threshold = round(current.domain - domain_margin, 4)
        rule = (f"domain: {candidate.domain:.3f} against the current version's {current.domain:.3f} "
                f"− {domain_margin:.3f}")
    checks.append(Check("domain", candidate.domain, threshold, candidate.domain >= threshold,
                        f"{rule} = {threshold:.3f}"))
    return Verdict(all(c.passed for c in checks), checks, noise)
