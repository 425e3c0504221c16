#!/usr/bin/env python3
"""Module import cycles inside each SDK crate (file-level), resolving items re-exported by a
parent module (`pub use sub::{A, B}`) to the submodule that defines them. Ignores
`#[cfg(test)] mod tests` tails. Usage: .ci/module-cycles.py sdk"""
import os, re, sys
root = sys.argv[1]
def files(crate):
    out = {}
    src = os.path.join(root, crate, "src")
    for d, _, fs in os.walk(src):
        for f in fs:
            if not f.endswith(".rs") or "/bin" in d: continue
            p = os.path.join(d, f); rel = os.path.relpath(p, src)[:-3]
            parts = rel.split("/")
            if parts[-1] in ("mod", "lib"): parts = parts[:-1]
            text = open(p).read()
            m = re.search(r"^#\[cfg\(test\)\]\n(pub(\(crate\))? )?mod tests", text, re.M)
            if m: text = text[:m.start()]
            text = "\n".join(l for l in text.split("\n") if not l.strip().startswith("//"))
            out[tuple(parts)] = text
    return out
def reexports(text):
    m = {}
    for sub, items in re.findall(r"pub use (?:self::)?([a-z_]+)::\{([^}]*)\}", text, re.S):
        for it in re.split(r"[,\s]+", items):
            if it: m[it.split(" as ")[-1]] = sub
    for sub, it in re.findall(r"pub use (?:self::)?([a-z_]+)::([A-Za-z_0-9]+)(?: as [A-Za-z_0-9]+)?;", text):
        m[it] = sub
    return m
def resolve(mods, base, names):
    # base: module path tuple; names: path segments after it
    target = list(base)
    for n in names:
        if tuple(target + [n]) in mods: target.append(n); continue
        rx = reexports(mods.get(tuple(target), ""))
        if n in rx and tuple(target + [rx[n]]) in mods: target.append(rx[n])
        break
    return tuple(target)
cycles = 0
for crate in sorted(os.listdir(root)):
    if not os.path.isdir(os.path.join(root, crate, "src")): continue
    mods = files(crate); edges = {m: set() for m in mods}
    for m, text in mods.items():
        parent = m[:-1] if m else ()
        is_dir = any(k[:len(m)] == m and len(k) > len(m) for k in mods)  # mod.rs of a dir
        sup = m[:-1] if m else ()
        for prefix, path in re.findall(r"\b(super|crate)::((?:[A-Za-z_0-9]+::)*(?:[A-Za-z_0-9]+|\{[^}]*\}))", text, re.S):
            base = sup if prefix == "super" else ()
            segs = path.split("::")
            if segs[-1].startswith("{"):
                head = segs[:-1]
                for it in re.split(r"[,\s]+", segs[-1].strip("{}")):
                    it = it.split("::")[0]
                    if it and it != "self": edges[m].add(resolve(mods, base, head + [it]))
                if head: edges[m].add(resolve(mods, base, head))
            else:
                edges[m].add(resolve(mods, base, segs))
        edges[m].discard(m)
        # a module's own ancestors (reached only via re-export hubs) are not layering edges
        edges[m] = {t for t in edges[m] if not (t == m[:len(t)])}
    # Tarjan SCC
    index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
    def strong(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in mods: continue
            if w not in index: strong(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = []
            while True:
                w = stack.pop(); on.discard(w); c.append(w)
                if w == v: break
            if len(c) > 1: sccs.append(c)
    for v in mods:
        if v not in index: strong(v)
    for c in sccs:
        cycles += 1
        print(crate, "cycle:", " <-> ".join("::".join(x) or "lib" for x in c))
print("module cycles:", cycles)
