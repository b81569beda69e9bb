"""The package's module graph: no module imports one that imports it back (lazy imports included)."""
import ast
import os

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fitgap")


def import_graph():
    graph = {}
    for f in sorted(os.listdir(PKG)):
        if f.endswith(".py"):
            deps = set()
            for node in ast.walk(ast.parse(open(os.path.join(PKG, f)).read())):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            graph[f[:-3]] = deps - {f[:-3]}
    return graph


def cycles(graph):
    """Every strongly connected set of more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles_in_the_package():
    assert cycles(import_graph()) == []


def test_one_entry_point_reaches_every_command():
    import subprocess
    import sys

    from fitgap.__main__ import COMMANDS

    root = os.path.dirname(PKG)
    r = subprocess.run([sys.executable, "-m", "fitgap", "--help"], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(f"  {name} " in r.stdout for name in COMMANDS), r.stdout
    for name in COMMANDS:  # each command's own parser answers, named as the command
        r = subprocess.run([sys.executable, "-m", "fitgap", name, "--help"], cwd=root, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "usage: fitgap " + name in r.stdout, (name, r.stdout[:300], r.stderr[-500:])
    r = subprocess.run([sys.executable, "-m", "fitgap", "detekt"], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown command 'detekt'" in r.stderr
