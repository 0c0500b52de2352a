"""The flow validator: what is wrong with a flow that parsed, as a list of problems with file and node.

The graph has an edge for every way a node can be left: each ``next``, each menu option and
the menu's ``default`` (taken once the retries run out, which always happens after
``max_retries + 1`` bad keys or timeouts), a collect's ``next`` and ``on_failure``, a lookup's
``found`` and ``not_found``, each condition branch and its ``else``.  Route, callback,
voicemail, transfer and hangup nodes are the endings.  The caller hanging up is not an edge:
it is always possible, so counting it would make every loop fine.

Problem kinds (errors unless marked):

- ``unknown_node``: ``start`` or an exit names a node that does not exist.
- ``unreachable_node`` (warning): no path from ``start`` reaches it.
- ``loop_without_exit``: a cycle, reachable from ``start``, from which no ending is reachable
  by any path: once in it the call can only end by the caller hanging up (or the step limit).
- ``loop_without_input``: a cycle of nodes none of which waits for the caller (play, set,
  condition, lookup): it replays in a blink until the step limit hangs up, even if a branch
  leads out, because nothing in it changes between turns.
- ``missing_prompt``: a node names a prompt the flow does not define.
- ``missing_audio`` (warning): with ``prompt_dir``, a prompt's file for some language is not there.
- ``missing_translation`` (warning): a prompt has no text (or, for per-language files, no file)
  for one of the flow's languages.
- ``unknown_language``: a node sets ``language`` to one the flow does not declare.
- ``unknown_schedule``: a condition tests a schedule the flow does not define.
- ``unknown_entry_point``: with ``entry_points``, a route or callback names another one.
- ``unknown_skill``: with ``skills``, requirements name a skill the routing config lacks.
- ``unknown_tier``: with ``tiers``, a set or route node names a tier the routing config lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from ivr_flows.model import (
    INPUT_TYPES,
    TERMINAL_TYPES,
    CallbackNode,
    ConditionNode,
    Flow,
    MenuNode,
    Node,
    RouteNode,
    SetNode,
)
from ivr_flows.values import TEMPLATE

__all__ = ["Problem", "ProblemKind", "Severity", "check_flow"]

ProblemKind = Literal[
    "unknown_node", "unreachable_node", "loop_without_exit", "loop_without_input", "missing_prompt",
    "missing_audio", "missing_translation", "unknown_language", "unknown_schedule", "unknown_entry_point",
    "unknown_skill", "unknown_tier",
]
Severity = Literal["error", "warning"]
_WARNINGS: Final = frozenset({"unreachable_node", "missing_audio", "missing_translation"})
_Report = Callable[[str | None, ProblemKind, str], None]


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    node: str | None
    kind: ProblemKind
    message: str

    @property
    def severity(self) -> Severity:
        return "warning" if self.kind in _WARNINGS else "error"

    def __str__(self) -> str:
        where = f"{self.file}: node {self.node}" if self.node else self.file
        return f"{where}: {self.severity}: {self.message} [{self.kind}]"


def check_flow(
    flow: Flow,
    *,
    entry_points: Collection[str] | None = None,
    prompt_dir: Path | None = None,
    skills: Collection[str] | None = None,
    tiers: Collection[str] | None = None,
) -> list[Problem]:
    """Every problem found, in the order of the file's nodes; an empty list means the flow is sound."""
    file = flow.source or flow.id
    problems: list[Problem] = []

    def report(node: str | None, kind: ProblemKind, message: str) -> None:
        problems.append(Problem(file, node, kind, message))

    if flow.start not in flow.nodes:
        report(None, "unknown_node", f"start names node {flow.start!r}, which the flow does not define")
    for node_id, node in flow.nodes.items():
        for label, target in node.exits():
            if target not in flow.nodes:
                report(node_id, "unknown_node", f"{label} names node {target!r}, which the flow does not define")
        for prompt_id in node.prompt_ids():
            if prompt_id not in flow.prompts:
                report(node_id, "missing_prompt", f"prompt {prompt_id!r} is not defined under prompts")
        _check_node(flow, node_id, node, report, entry_points=entry_points, skills=skills, tiers=tiers)

    reachable = _reachable(flow)
    for node_id in flow.nodes:
        if node_id not in reachable and flow.start in flow.nodes:
            report(node_id, "unreachable_node", "no path from start reaches this node")
    _check_loops(flow, reachable, report)
    _check_prompts(flow, file, prompt_dir, problems)
    order = {node_id: i for i, node_id in enumerate(flow.nodes)}
    return sorted(problems, key=lambda p: order.get(p.node or "", -1))


def _check_node(flow: Flow, node_id: str, node: Node, report: _Report, *, entry_points: Collection[str] | None,
                skills: Collection[str] | None, tiers: Collection[str] | None) -> None:
    settings: list[dict[str, object]] = []
    if isinstance(node, SetNode):
        settings.append(dict(node.vars))
    if isinstance(node, MenuNode):
        settings += [dict(option.set) for option in node.options.values()]
    for values in settings:
        language = values.get("language")
        if isinstance(language, str) and not TEMPLATE.search(language) and language not in flow.languages:
            report(node_id, "unknown_language", f"sets language {language!r}; the flow's languages are "
                   f"{', '.join(flow.languages)}")
    if isinstance(node, ConditionNode):
        for branch in node.branches:
            for name in branch.if_.schedules():
                if name not in flow.schedules:
                    report(node_id, "unknown_schedule", f"tests schedule {name!r}, which the flow does not define")
    if isinstance(node, RouteNode | CallbackNode) and entry_points is not None and node.entry_point is not None \
            and node.entry_point not in entry_points:
        report(node_id, "unknown_entry_point", f"entry point {node.entry_point!r} is not in the routing config "
               f"({', '.join(sorted(entry_points)) or 'none defined'})")
    if isinstance(node, RouteNode | SetNode) and skills is not None and node.requirements is not None:
        for skill in node.requirements.skills:
            if skill not in skills:
                report(node_id, "unknown_skill", f"requires skill {skill!r}, which the routing config does not "
                       f"define ({', '.join(sorted(skills)) or 'none defined'})")
    if isinstance(node, RouteNode | SetNode) and tiers is not None and node.tier is not None \
            and node.tier not in tiers:
        report(node_id, "unknown_tier", f"tier {node.tier!r} is not in the routing config "
               f"({', '.join(sorted(tiers)) or 'none defined'})")


def _targets(flow: Flow, node_id: str) -> Iterator[str]:
    node = flow.nodes.get(node_id)
    if node is not None:
        for _label, target in node.exits():
            if target in flow.nodes:
                yield target


def _reachable(flow: Flow) -> set[str]:
    if flow.start not in flow.nodes:
        return set()
    seen = {flow.start}
    todo = [flow.start]
    while todo:
        for target in _targets(flow, todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _can_end(flow: Flow) -> set[str]:
    """Nodes from which some path reaches an ending (a backward search from the endings)."""
    into: dict[str, list[str]] = {node_id: [] for node_id in flow.nodes}
    for node_id in flow.nodes:
        for target in _targets(flow, node_id):
            into[target].append(node_id)
    done = {node_id for node_id, node in flow.nodes.items() if node.type in TERMINAL_TYPES}
    todo = list(done)
    while todo:
        for source in into[todo.pop()]:
            if source not in done:
                done.add(source)
                todo.append(source)
    return done


def _cycles(flow: Flow, among: set[str]) -> list[list[str]]:
    """Strongly connected components of the graph restricted to ``among`` that hold a cycle (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    order = {n: i for i, n in enumerate(n for n in flow.nodes if n in among)}

    def visit(root: str) -> None:  # iterative, so a long chain of nodes cannot hit the recursion limit
        work = [(root, iter([t for t in _targets(flow, root) if t in among]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node_id, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter([t for t in _targets(flow, child) if t in among])))
                elif child in on_stack:
                    low[node_id] = min(low[node_id], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node_id])
            if low[node_id] == index[node_id]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node_id:
                        break
                if len(component) > 1 or node_id in _targets(flow, node_id):
                    out.append(sorted(component, key=order.__getitem__))

    for node_id in order:
        if node_id not in index:
            visit(node_id)
    return out


def _check_loops(flow: Flow, reachable: set[str], report: _Report) -> None:
    can_end = _can_end(flow)
    for cycle in _cycles(flow, reachable - can_end):
        report(cycle[0], "loop_without_exit", f"{_loop(cycle)}: no path out of this loop reaches a route, "
               "callback, voicemail, transfer or hangup")
    automatic = {n for n in reachable if flow.nodes[n].type not in INPUT_TYPES}
    for cycle in _cycles(flow, automatic):
        report(cycle[0], "loop_without_input", f"{_loop(cycle)}: this loop waits for no key, so it repeats "
               "until the step limit hangs up")


def _loop(cycle: list[str]) -> str:
    return "loop " + " -> ".join([*cycle, cycle[0]]) if len(cycle) > 1 else f"{cycle[0]} leads to itself"


def _check_prompts(flow: Flow, file: str, prompt_dir: Path | None, problems: list[Problem]) -> None:
    used = {p for node in flow.nodes.values() for p in node.prompt_ids()}
    owner = {p: node_id for node_id, node in reversed(flow.nodes.items()) for p in node.prompt_ids()}
    for prompt_id, prompt in flow.prompts.items():
        node = owner.get(prompt_id)
        for language in flow.languages:
            if language not in prompt.text:
                problems.append(Problem(file, node, "missing_translation",
                                        f"prompt {prompt_id!r} has no {language} text"))
            if isinstance(prompt.file, dict) and language not in prompt.file:
                problems.append(Problem(file, node, "missing_translation",
                                        f"prompt {prompt_id!r} has no {language} file (the "
                                        f"{flow.language} one is played)"))
        if prompt_dir is None or prompt_id not in used:
            continue
        for name in sorted({prompt.file_for(lang, flow.language) for lang in flow.languages}):
            if not _sound_exists(prompt_dir, name):
                problems.append(Problem(file, node, "missing_audio",
                                        f"prompt {prompt_id!r}: no sound file {name}.* under {prompt_dir}"))


def _sound_exists(prompt_dir: Path, name: str) -> bool:
    """Asterisk names sounds without the extension and picks a format: any ``name.<ext>`` will do."""
    base = Path(name) if Path(name).is_absolute() else prompt_dir / name
    return base.parent.is_dir() and any(p.stem == base.name and p.suffix for p in base.parent.iterdir())
