"""How often a reader following the calls from ``ris/training/train.py:train`` comes back to a file already left.

A static trace (``ast`` only, nothing is imported): starting at :func:`ris.training.train.train`, the reader
reads each function body top-down and, at each call it can resolve to a function or method of the ``ris``
package, reads that function first (depth first, each body only the first time it is called), then goes on in
the caller's file. The walk is the sequence of files the reader is in. A *return* is each arrival in a file
already read and left: a call into it, or coming back to the caller's file from a callee that went on to other
files. Coming back from a *glance* (a callee that stayed in its own file: a leaf for the reader) is not a
return, and a call within the current file is no move at all. Issue 23 asks for at most 35.

The rule was calibrated on the commit the issue describes ("15 files that pass one 23-field Run", b8c604f, the
same trace as af74597), where the issue counted 62 returns, tracking.py 7 times, run.py 5 times: following
every ``ris`` package with the glance rule gives 60, tracking.py 7, run.py 5 there (``docs/architecture.md``
has the other rules tried). ``--follow`` narrows the packages followed, ``--shallow`` reads a package's
functions without following their calls, and ``--place NAME=FILE`` counts as if a function, class or module
lived in another file, to weigh a move before making it.

Followed: plain names (module-level functions and classes, ``from ris.x import f``, function-level imports,
re-exports through a package's ``__init__``), module aliases (``from ris.training import distributed as
ddp``; ``ddp.gather(...)``), ``self.m()``, ``super().m()`` and ``Class.m()``, constructors (``C(...)`` reads
``C.__init__`` and ``__post_init__`` where the class or a base in the package defines them; ``with C(...)``
also ``__enter__`` before the block and ``__exit__`` after it), and ``x.m()`` where the type of ``x`` is
obvious: an annotated parameter (``run: Run``), a local assigned from a constructor or from a function with a
return annotation (``run = build_run(...)``), or an attribute annotated in its class (``run.tracker:
Tracker | None``, so ``run.tracker.finish()``; or set as ``self.x = C(...)``), chained
(``run.ema.update(...)``). Calls are taken in evaluation order (arguments before the call); nested functions
and lambdas are read where they are written.

Not followed: properties (an attribute read is not a call), functions passed as values (``worker_init_fn=``,
callbacks), decorators, calls through containers or dynamic dispatch (``registry[name](...)``, ``getattr``),
dataclass-generated ``__init__``, and methods of objects whose type the annotations do not say (``run.core``
is a ``torch.nn.Module``: ``run.core.loss(...)`` is not followed).

Usage (from the repository root)::

    python -m benchmarks.call_trace [--root DIR] [--sequence]
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

START = "ris.training.train:train"
FOLLOW = ("ris",)
SHALLOW: tuple[str, ...] = ()


@dataclass
class Module:
    """One parsed module: its file, its top-level definitions and what each local name refers to."""

    name: str
    path: str  # relative to the root, e.g. ris/training/run.py
    tree: ast.Module
    names: dict[str, str] = field(default_factory=dict)  # local name -> "module" or "module:attr"


@dataclass
class ClassInfo:
    """A class of the package: its methods and the attributes whose type it states."""

    module: Module
    node: ast.ClassDef
    methods: dict[str, ast.FunctionDef] = field(default_factory=dict)
    fields: dict[str, ast.expr] = field(default_factory=dict)  # attribute -> annotation or assigned value


class Index:
    """Every module of the package under ``root``, with name resolution through imports."""

    def __init__(self, root: Path, package: str = "ris") -> None:
        self.modules: dict[str, Module] = {}
        self.functions: dict[str, tuple[Module, ast.FunctionDef]] = {}  # "mod:f" or "mod:C.m"
        self.classes: dict[str, ClassInfo] = {}
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mod = Module(name, path.relative_to(root).as_posix(), ast.parse(path.read_text(), str(path)))
            self.modules[name] = mod
        for mod in self.modules.values():
            self._index(mod)

    def _index(self, mod: Module) -> None:
        package = mod.name if mod.path.endswith("__init__.py") else mod.name.rpartition(".")[0]
        for node in ast.walk(mod.tree):  # imports anywhere, also inside functions (lazy imports)
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        mod.names[a.asname] = a.name
                    else:
                        mod.names.setdefault(a.name.split(".")[0], a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                for a in node.names:
                    mod.names[a.asname or a.name] = f"{base}:{a.name}"
        for node in mod.tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                mod.names[node.name] = f"{mod.name}:{node.name}"
                self.functions[f"{mod.name}:{node.name}"] = (mod, node)
            elif isinstance(node, ast.ClassDef):
                ref = f"{mod.name}:{node.name}"
                mod.names[node.name] = ref
                info = self.classes[ref] = ClassInfo(mod, node)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        info.methods[item.name] = item
                        self.functions[f"{ref}.{item.name}"] = (mod, item)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        info.fields[item.target.id] = item.annotation
                for fn in info.methods.values():  # self.x: T = ... / self.x = C(...) in any method
                    for sub in ast.walk(fn):
                        target, value = None, None
                        if isinstance(sub, ast.AnnAssign):
                            target, value = sub.target, sub.annotation
                        elif isinstance(sub, ast.Assign) and len(sub.targets) == 1:
                            target, value = sub.targets[0], sub.value
                        if (
                            isinstance(target, ast.Attribute)
                            and isinstance(target.value, ast.Name)
                            and target.value.id == "self"
                        ):
                            info.fields.setdefault(target.attr, value)

    def resolve(self, ref: str, seen: int = 0) -> str | None:
        """A module name, "mod:f" of a function or "mod:C" of a class in the package; None if outside it."""
        if seen > 20:
            return None
        if ":" not in ref:
            return ref if ref in self.modules else None
        mod_name, attr = ref.split(":", 1)
        if f"{mod_name}.{attr}" in self.modules:
            return f"{mod_name}.{attr}"
        mod = self.modules.get(mod_name)
        if mod is None or attr not in mod.names:
            return None
        target = mod.names[attr]
        if target == ref:
            return ref
        return self.resolve(target, seen + 1)

    def mro(self, cls: str) -> Iterator[str]:
        """``cls`` and its bases defined in the package, depth first."""
        info = self.classes.get(cls)
        if info is None:
            return
        yield cls
        for base in info.node.bases:
            ref = self.resolve_expr(base, info.module)
            if ref in self.classes:
                yield from self.mro(ref)

    def method(self, cls: str, name: str, skip_own: bool = False) -> str | None:
        for c in list(self.mro(cls))[1 if skip_own else 0 :]:
            if name in self.classes[c].methods:
                return f"{c}.{name}"
        return None

    def resolve_expr(self, node: ast.expr, mod: Module) -> str | None:
        """What a name or dotted name refers to in ``mod`` (module, function or class), if in the package."""
        if isinstance(node, ast.Name):
            return self.resolve(mod.names[node.id]) if node.id in mod.names else None
        if isinstance(node, ast.Attribute):
            base = self.resolve_expr(node.value, mod)
            if base in self.modules:
                return self.resolve(f"{base}:{node.attr}")
        return None

    def types_of_annotation(self, node: ast.expr | None, mod: Module) -> list[str]:
        """Package classes named by an annotation (``X``, ``X | None``, ``Optional[X]``, ``"X"``)."""
        if node is None:
            return []
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                return self.types_of_annotation(ast.parse(node.value, mode="eval").body, mod)
            except SyntaxError:
                return []
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.types_of_annotation(node.left, mod) + self.types_of_annotation(node.right, mod)
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", getattr(node.value, "attr", "")) in (
            "Optional",
            "Union",
        ):
            inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            return [t for e in inner for t in self.types_of_annotation(e, mod)]
        ref = self.resolve_expr(node, mod)
        return [ref] if ref in self.classes else []


@dataclass
class Step:
    """One change of file in the walk: the reader arrives in ``path`` to read ``function`` or, ``back``, to go
    on with ``function`` after a call returned; ``is_return``: a file it had already read and left."""

    path: str
    function: str
    back: bool
    is_return: bool


@dataclass
class Trace:
    """The walk from one function: the functions read in order, the calls between them, the changes of file."""

    index: Index
    follow: tuple[str, ...] = FOLLOW
    shallow: tuple[str, ...] = SHALLOW
    place: dict[str, str] = field(default_factory=dict)  # what-if: function, class or module -> another file
    order: list[str] = field(default_factory=list)  # the functions, in the order they are first read
    calls: dict[str, list[str]] = field(default_factory=dict)  # caller -> followed callees (each call site)
    walk: list[Step] = field(default_factory=list)

    @property
    def returns(self) -> Counter:
        """Returns to a file already left, per file."""
        return Counter(s.path for s in self.walk if s.is_return)

    def path_of(self, ref: str) -> str:
        module, _, qual = ref.partition(":")
        for key in (ref, f"{module}:{qual.split('.')[0]}", module):
            if key in self.place:
                return self.place[key]
        return self.index.functions[ref][0].path

    def followed(self, ref: str) -> bool:
        return ref in self.index.functions and _inside(ref, self.follow + self.shallow)

    def enter(self, path: str, function: str, back: bool) -> None:
        """The reader is now in ``path``; a glance (a callee that stayed in its own file) is not a climb back."""
        if self.walk and self.walk[-1].path == path:
            return
        glance = back and bool(self.walk) and not self.walk[-1].back
        known = any(s.path == path for s in self.walk)
        self.walk.append(Step(path, function, back, known and not glance))

    def read_function(self, ref: str) -> None:
        """Read ``ref``'s body once, following the calls it makes (unless its package is read shallowly)."""
        if ref in self.order:
            return
        self.order.append(ref)
        self.calls[ref] = []
        self.enter(self.path_of(ref), ref, back=False)
        if not _inside(ref, self.follow):
            return
        mod, node = self.index.functions[ref]
        cls = ref.split(":")[1].rpartition(".")[0]
        env: dict[str, list[str]] = {}
        args = node.args
        for i, a in enumerate([*args.posonlyargs, *args.args, *args.kwonlyargs]):
            if i == 0 and cls and a.arg in ("self", "cls"):
                env[a.arg] = [f"{mod.name}:{cls}"]
            else:
                env[a.arg] = self.index.types_of_annotation(a.annotation, mod)
        _Reader(self, ref, mod, cls, env).read_body(node.body)

    def call(self, targets: list[str], caller: str) -> None:
        """``caller`` calls ``targets``: read each one not read yet, then come back to the caller's file."""
        for t in targets:
            if not self.followed(t):
                continue
            self.calls[caller].append(t)
            if t not in self.order:
                self.read_function(t)
                self.enter(self.path_of(caller), caller, back=True)

    def chain(self, start: str, end: str) -> list[str]:
        """A chain of calls from ``start`` to ``end`` among those followed ([] if none)."""
        parents: dict[str, str] = {start: start}
        queue = [start]
        for ref in queue:
            if ref == end:
                path = [end]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return path[::-1]
            for callee in self.calls.get(ref, []):
                if callee not in parents:
                    parents[callee] = ref
                    queue.append(callee)
        return []


def _inside(ref: str, packages: tuple[str, ...]) -> bool:
    module = ref.split(":")[0]
    return any(module == p or module.startswith(p + ".") for p in packages)


class _Reader:
    """Reads one function body in evaluation order, resolving each call and tracking obvious local types."""

    def __init__(self, trace: Trace, ref: str, mod: Module, cls: str, env: dict[str, list[str]]) -> None:
        self.trace, self.index, self.ref, self.mod, self.cls, self.env = trace, trace.index, ref, mod, cls, env

    def read_body(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.visit(stmt)

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.With | ast.AsyncWith):
            exits: list[str] = []
            for item in node.items:
                self.visit(item.context_expr)
                classes = self.constructed(item.context_expr)
                enters = [m for c in classes if (m := self.index.method(c, "__enter__"))]
                exits += [m for c in classes if (m := self.index.method(c, "__exit__"))]
                self.trace.call(enters, self.ref)
                if isinstance(item.optional_vars, ast.Name):
                    self.env[item.optional_vars.id] = classes
            self.read_body(node.body)
            self.trace.call(exits, self.ref)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            if node.value is not None:
                self.visit(node.value)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            types = self.type_of(node.value) if node.value is not None else []
            if isinstance(node, ast.AnnAssign):
                types = self.index.types_of_annotation(node.annotation, self.mod) or types
            for t in targets:
                if isinstance(t, ast.Name):
                    self.env[t.id] = types
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                self.visit(node.func.value)
            for child in [*node.args, *node.keywords]:
                self.visit(child)
            self.trace.call(self.callees(node), self.ref)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            self.read_body(node.body)  # a nested definition is read where it is written; decorators are not
        else:
            for child in ast.iter_child_nodes(node):
                self.visit(child)

    def constructed(self, node: ast.expr) -> list[str]:
        """The package classes that ``node`` constructs (``C(...)``), if any."""
        if isinstance(node, ast.Call):
            ref = self.index.resolve_expr(node.func, self.mod)
            if ref in self.index.classes:
                return [ref]
        return []

    def type_of(self, node: ast.expr | None) -> list[str]:
        """Package classes that ``node``'s value is obviously an instance of."""
        if isinstance(node, ast.Name):
            return self.env.get(node.id, [])
        if isinstance(node, ast.Attribute):
            types = []
            for cls in self.type_of(node.value):
                for c in self.index.mro(cls):
                    info = self.index.classes[c]
                    if node.attr in info.fields:
                        value = info.fields[node.attr]
                        found = self.index.types_of_annotation(value, info.module)
                        if not found and isinstance(value, ast.Call):
                            ref = self.index.resolve_expr(value.func, info.module)
                            found = [ref] if ref in self.index.classes else []
                        types += found
                        break
            return types
        if isinstance(node, ast.Call):
            if made := self.constructed(node):
                return made
            types = []
            for fn in self.callees(node):
                mod, fdef = self.index.functions[fn]
                types += self.index.types_of_annotation(fdef.returns, mod)
            return types
        return []

    def callees(self, node: ast.Call) -> list[str]:
        """The package functions a call runs: a function, a method, or a class's ``__init__``/``__post_init__``."""
        func = node.func
        if isinstance(func, ast.Attribute):
            value = func.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super" and self.cls:
                m = self.index.method(f"{self.mod.name}:{self.cls}", func.attr, skip_own=True)
                return [m] if m else []
            ref = self.index.resolve_expr(value, self.mod) if isinstance(value, ast.Name | ast.Attribute) else None
            if ref in self.index.modules:
                ref = self.index.resolve(f"{ref}:{func.attr}")
            elif ref in self.index.classes:  # Class.method(...)
                m = self.index.method(ref, func.attr)
                return [m] if m else []
            else:
                found = [self.index.method(c, func.attr) for c in self.type_of(value)]
                return [m for m in found if m]
        else:
            ref = self.index.resolve_expr(func, self.mod)
        if ref in self.index.functions:
            return [ref]
        if ref in self.index.classes:
            return [m for name in ("__init__", "__post_init__") if (m := self.index.method(ref, name))]
        return []


def trace(root: Path, start: str = START, **options) -> Trace:
    """The walk from ``start`` over the repository at ``root`` (options: those of :class:`Trace`)."""
    t = Trace(Index(root), **options)
    t.read_function(start)
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="repository root")
    parser.add_argument("--start", default=START, help="module:function to start from (default %(default)s)")
    parser.add_argument("--follow", nargs="*", default=list(FOLLOW), help="packages whose calls are followed")
    parser.add_argument("--shallow", nargs="*", default=list(SHALLOW), help="packages read one call deep")
    parser.add_argument(
        "--place", nargs="*", default=[], metavar="NAME=FILE",
        help="what-if: count as if a function (mod:f, mod:C.m), class or module lived in FILE",
    )  # fmt: skip
    parser.add_argument("--sequence", action="store_true", help="print the walk, one change of file per line")
    args = parser.parse_args(argv)
    place = dict(p.split("=", 1) for p in args.place)
    t = trace(args.root, args.start, follow=tuple(args.follow), shallow=tuple(args.shallow), place=place)
    if args.sequence:
        for i, s in enumerate(t.walk, 1):
            mark = "RETURN" if s.is_return else ""
            print(f"{i:4d} {mark:6s} {s.path:34s} {'back to ' if s.back else ''}{s.function}")
    files = {s.path for s in t.walk}
    returns = t.returns
    print(
        f"returns to a file already left: {sum(returns.values())} ({len(t.order)} functions read in {len(files)} files)"
    )
    for path, n in returns.most_common():
        print(f"  {n:4d}  {path}")


if __name__ == "__main__":
    main()
