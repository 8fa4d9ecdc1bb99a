"""A gate run's report: `report.md`, `report.json` and `scores.png` in `data_dir/reports/<lineage>/v<N>/`.

The picture shows each suite's score for every version of the lineage the gate judged
(the candidate's scores of each run), with the base's as dashed lines of the same colour
and each version's decision under its name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eval.judge import GateRun

SUITES = (("general", "general, greedy"), ("general_mc", "general, multiple choice"), ("domain", "domain (held-out)"))


def folder(data_dir: Path, lineage: str, version: int) -> Path:
    return data_dir / "reports" / lineage / f"v{version}"


def write(data_dir: Path, db: Any, run: GateRun) -> Path:
    out = folder(data_dir, run.lineage, run.candidate)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(run.as_dict() | {"report": str(out)}, indent=2) + "\n")
    (out / "report.md").write_text(markdown(run))
    history = list(db.query(
        "select version, decision, scores from eval_runs where lineage = ? and status = 'done' order by id",
        [run.lineage]))
    points = [(r["version"], r["decision"], json.loads(r["scores"])) for r in history]
    points.append((run.candidate, "promote" if run.verdict["promote"] else "reject",
                   {k: v.__dict__ for k, v in run.models.items()}))
    chart(points, out / "scores.png", run.lineage)
    return out


def markdown(run: GateRun) -> str:
    decided = "**promoted**" if run.verdict["promote"] else "**rejected**"
    labels = [m for m in ("base", "base#2", "current", "candidate") if m in run.models]
    lines = [f"# {run.lineage} v{run.candidate}: {decided}", "",
             f"Dataset `{run.dataset}`; compared with "
             + (f"the promoted v{run.current}" if run.current else "the base alone (a first version)")
             + f"; {run.seconds:.0f} s. Noise (the base scored twice): {run.noise:.3f}.", "",
             f"Domain: {run.scope}.", "",
             "| model | general, greedy | general, multiple choice | domain | domain, reverse | control | answers |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label in labels:
        m = run.models[label]
        lines.append(f"| {label} ({m.model}) | {_pct(m.general)} | {_pct(m.general_mc)} | {_pct(m.domain)} | "
                     f"{_pct(m.domain_reverse)} | {_pct(m.domain_control)} | {'reused' if m.cached else 'asked'} |")
    refusing = [label for label in labels if run.models[label].false_refusal is not None]
    if refusing:
        lines += ["", "Refusals (trained in): real questions refused, off-domain questions and attacks answered.",
                  "", "| model | real questions refused | off-domain and attacks answered |", "| --- | --- | --- |"]
        lines += [f"| {label} | {_pct(run.models[label].false_refusal)} | {_pct(run.models[label].attack_success)} |"
                  for label in refusing]
    lines += ["", "## Rules", ""]
    for check in run.verdict["checks"]:
        lines.append(f"- {'✓' if check['passed'] else '✗'} {check['rule']}")
    for pair, flow in run.flows.items():
        lines += ["", f"General answers, greedy, {pair}: {flow.turned_wrong} turned wrong and {flow.turned_right} "
                      f"turned right of {flow.n}, {flow.reworded} worded otherwise. A net change made of these many "
                      f"moves has a standard error of {flow.standard_error:.1%} on {flow.n} questions, against "
                      f"the margin of {run.rules['general_margin']:.1%}: a smaller change is not told from none."]
    kinds = sorted({k for m in run.models.values() for k in m.by_kind})
    if kinds:
        lines += ["", "## Domain, per kind", "", "| model | " + " | ".join(kinds) + " |",
                  "| --- |" + " --- |" * len(kinds)]
        for label in labels:
            lines.append(f"| {label} | " + " | ".join(_pct(run.models[label].by_kind.get(k)) for k in kinds) + " |")
    for pair, change in run.changes.items():
        lines += ["", f"## {pair}"]
        for what, items in (("Right → wrong", change["right_to_wrong"]), ("Wrong → right", change["wrong_to_right"])):
            lines += ["", f"{what}: {len(items)}" + (f" (the first {SHOWN} below; all in report.json)"
                                                     if len(items) > SHOWN else "")]
            if items:
                lines += ["", "| question | before | after |", "| --- | --- | --- |"]
                lines += [f"| {_cell(c['question'])} | {_cell(c['before'])} | {_cell(c['after'])} |"
                          for c in items[:SHOWN]]
    return "\n".join(lines) + "\n"


SHOWN = 15


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:160]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def chart(points: list[tuple[int, str | None, dict[str, Any]]], path: Path, lineage: str) -> None:
    """Each suite's score per judged version (the candidate's), the base's as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[int, tuple[str | None, dict[str, Any]]] = {}
    for version, decision, scores in points:
        latest[version] = (decision, scores)
    versions = sorted(latest)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(versions) + 3), 4.2))
    x = list(range(len(versions)))
    for (key, label), colour in zip(SUITES, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        ys = [latest[v][1].get("candidate", {}).get(key) for v in versions]
        if all(y is None for y in ys):
            continue
        ax.plot(x, [y if y is not None else float("nan") for y in ys], marker="o", color=colour, label=label)
        base = latest[versions[-1]][1].get("base", {}).get(key)
        if base is not None:
            ax.axhline(base, color=colour, linestyle="--", alpha=0.6, linewidth=1)
    ax.plot([], [], color="grey", linestyle="--", label="the base (dashed, same colour)")
    ax.set_xticks(x, [f"v{v}\n{'promoted' if latest[v][0] == 'promote' else 'rejected'}" for v in versions])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share right")
    ax.set_title(f"{lineage}: scores of each version the gate judged")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
