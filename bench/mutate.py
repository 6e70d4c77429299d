"""Mutation testing of the core modules: how many small wrong changes do the tests catch?

Each mutant is one change to one AST node of one module (operators below), written into a
copy of the repository; the tests that cover that module (``COVERAGE``) run against it with
``-x``. A mutant is *killed* when they fail (or run past the timeout), *survives* when they
pass. The last line per module is ``module killed/total = share``; surviving mutants are
listed with their line so each can be killed by a test or explained as equivalent.

Operators: comparison (``<``↔``<=``, ``>``↔``>=``, ``==``↔``!=``, ``is``↔``is not``,
``in``↔``not in``), arithmetic (``+``↔``-``, ``*``↔``/``, ``//``→``/``, ``%``→``//``,
``**``→``*``, augmented ``+=``↔``-=``), boolean (``and``↔``or``), ``not x``→``x``, numbers
``n``→``n + 1``, ``True``↔``False``. Not mutated: strings, f-strings and logging calls
(messages), annotations, docstrings.

Not part of CI (it runs the covering tests once per mutant: minutes to hours). Run it with::

    nice -n 19 .venv/bin/python bench/mutate.py [--modules trainer/metrics.py ...] [--max-per-module N]

``--max-per-module`` draws that many mutants per module at random (``--seed``), so a run fits
the time available; the share is then an estimate over the drawn mutants.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("trainer", "launcher", "infra", "tests", "bench", "pyproject.toml", "cdk.json", "app.py")

# module -> the tests that cover it (fastest first: -x stops at the first failure)
COVERAGE: dict[str, list[str]] = {
    "trainer/model.py": ["tests/trainer/test_bite_model.py", "tests/trainer/test_model.py",
                         "tests/trainer/test_fork_diphone.py"],
    "trainer/validation.py": ["tests/trainer/test_bite_validation.py", "tests/trainer/test_bite_maths.py",
                              "tests/trainer/test_model.py",
                              "tests/trainer/test_fork_diphone.py",
                              "tests/trainer/test_training.py::test_train_evaluate_and_outputs"],
    "trainer/metrics.py": ["tests/trainer/test_bite_maths.py", "tests/trainer/test_maths.py",
                           "tests/trainer/test_fork_diphone.py"],
    "trainer/schedule.py": ["tests/trainer/test_maths.py"],
    "trainer/checkpoint.py": ["tests/trainer/test_checkpoint.py", "tests/trainer/test_bite_checkpoint.py",
                              "tests/trainer/test_model.py", "tests/trainer/test_lifecycle.py"],
    "trainer/augment.py": ["tests/trainer/test_bite_augment.py", "tests/trainer/test_maths.py",
                           "tests/trainer/test_model.py"],
    "trainer/data/storage.py": ["tests/data/test_storage_faults.py", "tests/data/test_s3.py"],
    "launcher/request.py": ["tests/launcher/test_request.py",
                            "tests/launcher/test_bite_launcher.py::test_max_wait_equal_to_max_run_is_the_boundary",
                            "tests/launcher/test_bite_launcher.py::test_defaults_and_limits_of_a_request",
                            "tests/launcher/test_bite_launcher.py::test_job_names_use_all_63_characters_and_no_more",
                            "tests/launcher/test_bite_launcher.py::test_request_validation_counts_its_problems"],
}

_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
           ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
_BOOL = {ast.And: ast.Or, ast.Or: ast.And}
_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


@dataclass
class Mutant:
    module: str
    index: int
    line: int
    what: str
    status: str = ""
    seconds: float = 0.0


class _Mutator(ast.NodeTransformer):
    """Counts mutation sites in a fixed walk order; with ``target`` set, changes that site only."""

    def __init__(self, target: int = -1):
        self.target = target
        self.count = 0
        self.sites: list[tuple[int, str]] = []
        self.done: Optional[tuple[int, str]] = None

    def _site(self, node: ast.AST, what: str) -> bool:
        index = self.count
        self.count += 1
        self.sites.append((getattr(node, "lineno", 0), what))
        if index == self.target:
            self.done = (getattr(node, "lineno", 0), what)
            return True
        return False

    # -- not mutated: messages, annotations, docstrings
    def visit_JoinedStr(self, node):
        return node

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in _LOG_METHODS and isinstance(f.value, ast.Name) and f.value.id in (
                "log", "logging", "logger"):
            return node
        return self.generic_visit(node)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_arg(self, node):
        return node

    def visit_FunctionDef(self, node):
        for i, stmt in enumerate(node.body):
            node.body[i] = self.visit(stmt)
        for d in node.decorator_list:
            self.visit(d)
        node.args = self.visit(node.args)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    # -- operators
    def visit_Compare(self, node):
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            new = _COMPARE.get(type(op))
            if new and self._site(node, f"{type(op).__name__} -> {new.__name__}"):
                node.ops[i] = new()
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        new = _BINARY.get(type(node.op))
        if new and self._site(node, f"{type(node.op).__name__} -> {new.__name__}"):
            node.op = new()
        return node

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        new = {ast.Add: ast.Sub, ast.Sub: ast.Add}.get(type(node.op))
        if new and self._site(node, f"{type(node.op).__name__}= -> {new.__name__}="):
            node.op = new()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        new = _BOOL[type(node.op)]
        if self._site(node, f"{type(node.op).__name__} -> {new.__name__}"):
            node.op = new()
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._site(node, "not x -> x"):
            return node.operand
        return node

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            if self._site(node, f"{v} -> {not v}"):
                return ast.copy_location(ast.Constant(not v), node)
        elif isinstance(v, (int, float)) and not isinstance(v, complex):
            if self._site(node, f"{v!r} -> {v + 1!r}"):
                return ast.copy_location(ast.Constant(v + 1), node)
        return node


def sites(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    m = _Mutator()
    m.visit(tree)
    return m.sites


def mutate(source: str, index: int) -> tuple[str, tuple[int, str]]:
    tree = ast.parse(source)
    m = _Mutator(index)
    tree = m.visit(tree)
    ast.fix_missing_locations(tree)
    assert m.done is not None
    return ast.unparse(tree), m.done


def run_tests(workdir: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(workdir), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, timeout=timeout,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    took = time.monotonic() - started
    if proc.returncode == 0:
        return "survived", took
    if proc.returncode == 1:
        return "killed", took
    return f"error{proc.returncode}", took  # collection error, interrupted: killed too (it does not pass)


def copy_repo(dest: Path) -> None:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modules", nargs="*", default=list(COVERAGE), help="default: all core modules")
    p.add_argument("--max-per-module", type=int, default=0, help="draw at most N mutants per module (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every mutant's result here")
    p.add_argument("--list", action="store_true", help="only list the mutants")
    p.add_argument("--only", nargs="*", default=[], metavar="MODULE:INDEX",
                   help="run just these mutants (e.g. trainer/metrics.py:25, from a previous run's survivors)")
    args = p.parse_args(argv)
    if args.only:
        args.modules = [m for m in args.modules if any(o.rsplit(":", 1)[0] == m for o in args.only)]

    results: list[Mutant] = []
    with tempfile.TemporaryDirectory(prefix="b2t-mutate-") as tmp:
        work = Path(tmp)
        copy_repo(work)
        for module in args.modules:
            source = (ROOT / module).read_text()
            found = sites(source)
            chosen = list(range(len(found)))
            wanted = [int(o.rsplit(":", 1)[1]) for o in args.only if o.rsplit(":", 1)[0] == module]
            if args.only:
                chosen = wanted
            elif args.max_per_module and len(chosen) > args.max_per_module:
                chosen = sorted(random.Random(f"{args.seed}:{module}").sample(chosen, args.max_per_module))
            if args.list:
                for i in chosen:
                    print(f"{module}:{found[i][0]} #{i} {found[i][1]}")
                continue
            tests = COVERAGE[module]
            status, baseline = run_tests(work, tests, timeout=1800)
            if status != "survived":
                print(f"{module}: the covering tests fail without a mutant ({status}); skipped", flush=True)
                continue
            timeout = 3 * baseline + 30
            print(f"{module}: {len(chosen)} of {len(found)} mutants; tests pass in {baseline:.0f} s", flush=True)
            target = work / module
            for i in chosen:
                mutated, (line, what) = mutate(source, i)
                target.write_text(mutated)
                try:
                    status, took = run_tests(work, tests, timeout)
                finally:
                    target.write_text(source)
                m = Mutant(module, i, line, what, status, round(took, 1))
                results.append(m)
                print(f"  {status:8s} {module}:{line} #{i} {what} ({took:.0f} s)", flush=True)
    if args.list:
        return 0
    print()
    for module in args.modules:
        mine = [m for m in results if m.module == module]
        if not mine:
            continue
        killed = sum(m.status != "survived" for m in mine)
        for m in mine:
            if m.status == "survived":
                print(f"survived: {m.module}:{m.line} #{m.index} {m.what}")
        print(f"{module} killed {killed}/{len(mine)} = {killed / len(mine):.0%}")
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=1))
    total = len(results)
    killed = sum(m.status != "survived" for m in results)
    print(f"mutants_killed={killed}/{total} share={killed / total:.3f}" if total else "no mutants run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
