#!/usr/bin/env python3
"""The layering check CI runs (DESIGN.md, "Target layout"). It fails on:

- an import cycle between sibling modules of a crate, at any depth (`crate::a` used
  in `b` and `crate::b` used in `a`, directly or through others; `ops::x` and `ops::y`
  likewise), test modules left out;
- a crate using one of ours it must not: `protocol` none, `pg` only `protocol`, `repo`
  only `protocol` and `pg`, `agent` never the coordinator, the coordinator never the
  agent, `repo` or `pg`, the CLI never the agent;
- the CLI using coordinator modules other than `admin`;
- the coordinator's `rules/` reading a clock, or using tokio, quinn, actix, or a
  coordinator module outside `rules` (its tests may read a clock for a base time).

What the code still does wrong is listed in scripts/layering-baseline.txt, one line per
violation. The baseline only shrinks: a violation not in it fails, and so does a line of
it that no longer matches what the code does (remove or narrow it). Run:

    python3 scripts/check-layering.py            # check
    python3 scripts/check-layering.py --print    # print today's violations, one a line
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(ROOT, "scripts", "layering-baseline.txt")

# crate directory -> (package name, crates of ours it may use)
CRATES = {
    "protocol": ("drmesh-protocol", set()),
    "pg": ("drmesh-pg", {"drmesh-protocol"}),
    "repo": ("drmesh-repo", {"drmesh-protocol", "drmesh-pg"}),
    "agent": ("drmesh-agent", {"drmesh-protocol", "drmesh-pg", "drmesh-repo"}),
    "coordinator": ("drmesh-coordinator", {"drmesh-protocol"}),
    "cli": ("drmesh-cli", {"drmesh-protocol", "drmesh-pg", "drmesh-repo", "drmesh-coordinator"}),
}
# The only coordinator module the CLI may reach.
CLI_COORDINATOR_FACADE = "admin"


def strip(code):
    """Removes comments, strings and char literals (lifetimes stay), so that only code
    is searched for paths."""
    out, i, n = [], 0, len(code)
    while i < n:
        c = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
        elif code.startswith("/*", i):
            j = code.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', code[i:]) and (i == 0 or not (code[i - 1].isalnum() or code[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", code[i:]).group(1)
            end = code.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            j = i + 1
            while j < n and code[j] != '"':
                j += 2 if code[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", code[i:]):
            m = re.match(r"'(\\.[^']*|[^\\'])'", code[i:])
            out.append("''")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def braced(text, start):
    """The text inside the braces opening at `start`."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return text[start + 1 :]


def modules_used(code, prefix):
    """Top-level names used through `prefix::` (`crate`, or another crate's name)."""
    return {p[0] for p in paths_used(code, (), prefix) if p}


def crate_files(crate):
    src = os.path.join(ROOT, crate, "src")
    for dirpath, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, src)
                yield rel, path


def module_path(rel):
    """`foo.rs` → ("foo",), `foo/bar.rs` → ("foo", "bar"), `foo/mod.rs` → ("foo",);
    `lib.rs`, `main.rs` → () (the root); `bin/x.rs` → None (another crate)."""
    parts = rel[:-3].split(os.sep)
    if parts[0] == "bin":
        return None
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return ()
    return tuple(parts)


def top_module(rel):
    path = module_path(rel)
    return path[0] if path else None


def without_test_modules(code):
    """The code without its `#[cfg(test)] mod name { … }` blocks."""
    out = code
    for m in reversed(list(re.finditer(r"#\[cfg\(test\)\]\s*(#\[[^\]]*\]\s*)*mod\s+\w+\s*\{", code))):
        body = braced(code, m.end() - 1)
        out = out[: m.start()] + out[m.end() + len(body) + 1 :]
    return out


def group_paths(group):
    """Every path a `{a, b::c, d::{e, f}}` use group names, as tuples."""
    out, depth, item = [], 0, ""
    items = []
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(item)
            item = ""
        else:
            item += ch
    items.append(item)
    for it in items:
        it = it.strip()
        m = re.match(r"((?:\w+::)*)(\w+|\{)", it)
        if not m:
            continue
        base = tuple(x for x in m.group(1).split("::") if x)
        if m.group(2) == "{":
            inner = braced(it, it.index("{"))
            out.extend(base + p for p in group_paths(inner))
        else:
            out.append(base + (m.group(2),))
    return out


def paths_used(code, here, prefix="crate"):
    """Module paths (tuples of names) this file's code names: `crate::a::b::…` (or
    `<prefix>::…`), and `super::…` resolved from `here`; use groups expanded."""
    used = []
    for m in re.finditer(r"\b" + prefix + r"((?:::\w+)*)::(\{)?", code):
        base = tuple(x for x in m.group(1).split("::") if x)
        if m.group(2):
            used.extend(base + p for p in group_paths(braced(code, m.end() - 1)))
        else:
            rest = re.match(r"\w+", code[m.end():])
            used.append(base + ((rest.group(0),) if rest else ()))
    for m in re.finditer(r"\b((?:super::)+)((?:\w+::)*)(\w+|\{)", code):
        up = m.group(1).count("super::")
        if up > len(here):
            continue
        base = here[: len(here) - up] + tuple(x for x in m.group(2).split("::") if x)
        if m.group(3) == "{":
            used.extend(base + p for p in group_paths(braced(code, m.end() - 1)))
        else:
            used.append(base + (m.group(3),))
    return used


def module_graph(crate, nested=False):
    """Edges between modules of `crate`. Top-level modules by default; with `nested`,
    between sibling modules at every level (a reference from `a::b` to `a::c` is an
    edge `a::b` → `a::c`; one from `a::b` to `d` is `a` → `d`)."""
    files = {}
    for rel, path in crate_files(crate):
        mp = module_path(rel)
        if mp is None:
            continue
        with open(path, encoding="utf-8") as f:
            # Test modules may reach anywhere (a test of `archive` may build an
            # `enforce` policy); the cycle rule is about the code that ships.
            files[mp] = without_test_modules(strip(f.read()))
    modules = set(files)
    graph = {}
    for here, code in files.items():
        for target in paths_used(code, here):
            # The longest prefix that is a module of ours.
            while target and target not in modules:
                target = target[:-1]
            if not target:
                continue
            common = 0
            while common < min(len(here), len(target)) and here[common] == target[common]:
                common += 1
            if common == len(here) or common == len(target):
                continue  # parent and child
            if not nested and common > 0:
                continue
            src, dst = here[: common + 1], target[: common + 1]
            graph.setdefault(src, set()).add(dst)
            graph.setdefault(dst, set())
    if not nested:
        return {k[0]: {d[0] for d in v} for k, v in graph.items()}
    return graph


def sccs(graph):
    """Tarjan's strongly connected components with more than one member."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def our_dependencies(crate):
    deps = set()
    with open(os.path.join(ROOT, crate, "Cargo.toml"), encoding="utf-8") as f:
        section = None
        for line in f:
            line = line.strip()
            if line.startswith("["):
                section = line
                continue
            if section in ("[dependencies]", "[build-dependencies]"):
                m = re.match(r"(drmesh-[\w-]+)", line)
                if m:
                    deps.add(m.group(1))
    return deps


def violations():
    out = []
    for crate, (name, allowed) in CRATES.items():
        if not os.path.isdir(os.path.join(ROOT, crate, "src")):
            continue
        for dep in sorted(our_dependencies(crate) - allowed):
            out.append(f"crate {name} uses {dep}")
        for comp in sccs(module_graph(crate, nested=True)):
            out.append(f"cycle in {name}: {' '.join('::'.join(m) for m in comp)}")
    # The CLI reaches the coordinator through its façade only.
    cli_uses = set()
    for rel, path in crate_files("cli"):
        with open(path, encoding="utf-8") as f:
            cli_uses |= modules_used(strip(f.read()), "drmesh_coordinator")
    for m in sorted(cli_uses - {CLI_COORDINATOR_FACADE}):
        out.append(f"cli uses drmesh_coordinator::{m}")
    out.extend(impure_rules())
    return out


RULES_FORBIDDEN = {
    "tokio": r"\btokio::",
    "quinn": r"\bquinn::",
    "actix": r"\bactix(_web|_rt)?::",
    "a clock": r"\b(Instant|Utc|SystemTime|Local)::now\(",
    "a sleep": r"\bsleep\(",
}


def impure_rules():
    """`coordinator/src/rules*` is pure: time is an argument, no runtime, no I/O."""
    out = []
    for rel, path in sorted(crate_files("coordinator")):
        if top_module(rel) != "rules":
            continue
        with open(path, encoding="utf-8") as f:
            code = strip(f.read())
        if code.lstrip().startswith("#![cfg(test)]"):
            continue  # a module only tests compile, e.g. rules/testing.rs
        code = code.split("#[cfg(test)]")[0]
        for what, pattern in RULES_FORBIDDEN.items():
            if re.search(pattern, code):
                out.append(f"rules uses {what}: coordinator/src/{rel}")
        others = modules_used(code, "crate") - {"rules"}
        for m in sorted(others):
            out.append(f"rules uses crate::{m}: coordinator/src/{rel}")
    return out


def main():
    found = violations()
    if "--print" in sys.argv:
        print("\n".join(found))
        return 0
    baseline = []
    if os.path.exists(BASELINE):
        with open(BASELINE, encoding="utf-8") as f:
            baseline = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    failed = False
    for v in found:
        if v in baseline:
            continue
        failed = True
        if v.startswith("cycle in "):
            crate, members = v[len("cycle in ") :].split(": ", 1)
            members = set(members.split())
            wider = [
                b
                for b in baseline
                if b.startswith(f"cycle in {crate}: ")
                and members <= set(b.split(": ", 1)[1].split())
            ]
            if wider:
                print(f"layering: the cycle shrank; replace the baseline line\n  {wider[0]}\nwith\n  {v}")
                continue
        print(f"layering: new violation: {v}")
    for b in baseline:
        if b not in found:
            failed = True
            print(f"layering: fixed, remove it from {os.path.relpath(BASELINE, ROOT)}: {b}")
    if failed:
        return 1
    print(f"layering: ok ({len(found)} known violations in the baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
