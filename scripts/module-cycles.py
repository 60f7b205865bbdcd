#!/usr/bin/env python3
"""Finds import cycles between the modules of each crate in the workspace.

For every crate (a folder with Cargo.toml and src/), every module file is
read and each path it names inside its crate (`crate::a::b`, `super::x`,
`self::y`, in `use` items and in expressions, doc comments excluded) is
resolved to the module it lands in. Two modules that are siblings (children
of the same parent) depend on each other when anything inside one names
anything inside the other; a parent and its own children are not compared
(a module declares its children, and children may use their parent's
items). A cycle among siblings, at any level, is reported with the
references that make it.

Usage: scripts/module-cycles.py [CRATE_DIR ...]   (default: every crate)
Exits 1 if any cycle is found.
"""

import os
import re
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def crates():
    out = []
    for name in sorted(os.listdir(ROOT)):
        d = os.path.join(ROOT, name)
        if os.path.isfile(os.path.join(d, "Cargo.toml")) and os.path.isdir(os.path.join(d, "src")):
            out.append(d)
    return out


def module_files(src):
    """Maps module paths (tuples) to files, for the library and each binary root."""
    mods = {}

    def walk(path, file):
        mods[path] = file
        text = strip(open(file, encoding="utf-8").read())
        base = os.path.dirname(file)
        stem = os.path.splitext(os.path.basename(file))[0]
        if stem not in ("lib", "main", "mod"):
            base = os.path.join(base, stem)
        for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", text, re.M):
            child = m.group(1)
            for cand in (os.path.join(base, child + ".rs"), os.path.join(base, child, "mod.rs")):
                if os.path.isfile(cand):
                    walk(path + (child,), cand)
                    break

    lib = os.path.join(src, "lib.rs")
    if os.path.isfile(lib):
        walk((), lib)
    return mods


def strip(text):
    """Removes comments and string literals, so only code is searched."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def inline_tests(text):
    """Drops `#[cfg(test)] mod tests { ... }` blocks: test code may use anything."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def references(path, text, mods):
    """Module paths that `text` (the code of module `path`) names."""
    refs = set()
    # Expand `use a::{b, c::{d}}` groups one level at a time.
    for m in re.finditer(r"\b(crate|super|self)((?:::(?:[A-Za-z_][A-Za-z0-9_]*|\{[^;]*?\}))+)", text):
        head, rest = m.group(1), m.group(2)
        for tail in expand(rest):
            parts = [p for p in tail.split("::") if p]
            if head == "crate":
                base = ()
            elif head == "self":
                base = path
            else:
                base = path[:-1]
                while parts and parts[0] == "super":
                    base = base[:-1]
                    parts = parts[1:]
            target = base
            for p in parts:
                if target + (p,) in mods:
                    target = target + (p,)
                else:
                    break
            refs.add(target)
    return refs


def expand(rest):
    """`::a::{b, c::d}` → ['::a::b', '::a::c::d'] (nested groups too)."""
    m = re.search(r"\{", rest)
    if not m:
        return [rest]
    depth, j = 0, m.start()
    for j in range(m.start(), len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[j], 0)
        if depth == 0:
            break
    prefix, inner, suffix = rest[: m.start()], rest[m.start() + 1 : j], rest[j + 1 :]
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    out = []
    for it in items:
        it = it.strip()
        if not it or it == "self":
            out.append(prefix)
            continue
        for e in expand("::" + it):
            out.append(prefix + e + suffix)
    return out


def sibling_edges(mods, refs):
    """Edges between siblings: (parent, a, b) -> example references."""
    edges = defaultdict(set)
    for src, targets in refs.items():
        for dst in targets:
            # The deepest common ancestor, and the children of it on each side.
            k = 0
            while k < len(src) and k < len(dst) and src[k] == dst[k]:
                k += 1
            if k == len(src) or k == len(dst):
                continue  # self, an ancestor or a descendant
            parent, a, b = src[:k], src[k], dst[k]
            edges[(parent, a, b)].add(("::".join(src) or "crate", "::".join(dst) or "crate"))
    return edges


def cycles(nodes, graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def check(crate):
    src = os.path.join(crate, "src")
    mods = module_files(src)
    refs = {}
    for path, file in mods.items():
        text = inline_tests(strip(open(file, encoding="utf-8").read()))
        refs[path] = references(path, text, mods)
    edges = sibling_edges(mods, refs)
    by_parent = defaultdict(lambda: defaultdict(set))
    for (parent, a, b) in edges:
        by_parent[parent][a].add(b)
    found = 0
    for parent, graph in sorted(by_parent.items()):
        nodes = set(graph) | {b for bs in graph.values() for b in bs}
        for comp in cycles(nodes, graph):
            found += 1
            where = "::".join(parent) or "crate root"
            print(f"{os.path.basename(crate)}: cycle among {', '.join(comp)} (in {where})")
            for a in comp:
                for b in comp:
                    for s, d in sorted(edges.get((parent, a, b), ()))[:3]:
                        print(f"    {s} -> {d}")
    return len(mods), found


def main():
    targets = sys.argv[1:] or crates()
    total = 0
    for c in targets:
        n, found = check(os.path.abspath(c))
        total += found
        print(f"{os.path.basename(os.path.abspath(c))}: {n} modules, {found} cycle(s)")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
