"""The wait inventory's guard (WAITS.md): no shield without a deadline on the same scope, and no
thread a cancelled caller cannot leave, anywhere in the package. Parsed with `ast`, so a comment
or a string that mentions `shield=True` is not a hit and a reformatted call still is."""

from __future__ import annotations

import ast
from pathlib import Path

import trio_gateway

PACKAGE = Path(trio_gateway.__file__).parent
# Scopes whose first argument is their deadline (or timeout).
DEADLINE_SCOPES = {"move_on_after", "move_on_at", "fail_after", "fail_at"}
UNBOUNDED = {"inf", "math.inf"}


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _truthy(node: ast.expr) -> bool:
    return not (isinstance(node, ast.Constant) and not node.value)


def _infinite(node: ast.expr) -> bool:
    text = ast.unparse(node)
    return text in UNBOUNDED or text.replace(" ", "") in {"float('inf')", 'float("inf")'}


def unbounded_waits(source: str, filename: str = "<src>") -> list[str]:
    """Each shielded scope without a finite deadline on it, each `.shield = ...` assignment
    (a scope's shield turned on after the fact), each thread a cancellation cannot abandon."""
    problems: list[str] = []
    tree = ast.parse(source, filename)
    # `scope = CancelScope(shield=True)` ... `scope.deadline = ...`: a deadline given to the
    # same scope later (the moment its shielded part begins) counts as its bound.
    later = {
        ast.unparse(t.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Attribute) and t.attr in ("deadline", "relative_deadline")
    }
    named = {id(n.value): ast.unparse(n.targets[0]) for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets}
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = _name(node.func)
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            if "shield" in kw and _truthy(kw["shield"]):
                if name == "CancelScope":
                    deadline = kw.get("deadline") or kw.get("relative_deadline")
                    if deadline is None and named.get(id(node)) in later:
                        continue
                    if deadline is None or _infinite(deadline):
                        problems.append(f"{where}: CancelScope(shield=True) without a deadline")
                elif name in DEADLINE_SCOPES:
                    bound = node.args[0] if node.args else next(iter(kw.values()))
                    if _infinite(bound):
                        problems.append(f"{where}: {name}(inf, shield=True) is no bound")
                else:
                    problems.append(f"{where}: {name}(shield=...) is not a scope with a deadline")
            # An explicit `abandon_on_cancel=False` is a decision WAITS.md must explain; only
            # the silent default (a thread the caller cannot leave) is refused.
            if name == "run_sync" and "abandon_on_cancel" not in kw and "cancellable" not in kw:
                problems.append(f"{where}: to_thread.run_sync without abandon_on_cancel=")
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "shield" and _truthy(node.value):
                    problems.append(f"{where}: .shield set outside a scope's constructor")
    return problems


def test_no_shield_without_a_deadline_in_the_package() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "cluster" / "db.py" in paths  # subpackages too: the cluster's shielded cancel
    problems = [p for path in paths for p in unbounded_waits(path.read_text(), str(path))]
    assert problems == []


def test_the_guard_finds_what_it_must() -> None:
    bad = """
import math, trio
async def f(scope):
    with trio.CancelScope(shield=True):
        pass
    with trio.CancelScope(deadline=math.inf, shield=True):
        pass
    with trio.move_on_after(math.inf, shield=True):
        pass
    scope.shield = True
    await trio.to_thread.run_sync(print)
"""
    good = """
import trio
async def f(d):
    with trio.CancelScope(deadline=d, shield=True):
        pass
    with trio.move_on_after(2, shield=True):
        pass
    with trio.CancelScope(shield=False):
        pass
    writer = trio.CancelScope(shield=True)
    with writer:
        writer.deadline = trio.current_time() + 1
    await trio.to_thread.run_sync(print, abandon_on_cancel=True)
    # with trio.CancelScope(shield=True): a comment is not code
"""
    assert len(unbounded_waits(bad)) == 5
    assert unbounded_waits(good) == []
