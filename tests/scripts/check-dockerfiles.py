#!/usr/bin/env python3
"""Checks the Dockerfiles as far as this machine allows without a Docker engine.

Parses each Dockerfile with BuildKit's own parser (PyPI package `dockerfile`, a
binding of the Go parser) and checks what a broken image would get wrong: a
multi-stage build, every workspace member copied into the build stage, a final stage that runs as a numeric non-root user, COPY sources
that exist in the repository, a `cargo build -p <package>` of a workspace package,
and an ENTRYPOINT that is the binary that package builds. Prints one line per check
and ends with an "N passed, N failed" line.
"""
import pathlib
import re
import sys

import dockerfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES = {"controller/Dockerfile": "openvox-code-controller", "job-image/Dockerfile": "openvox-code-worker"}

passed = failed = 0


def check(ok, what):
    global passed, failed
    print(("ok   " if ok else "FAIL ") + what)
    if ok:
        passed += 1
    else:
        failed += 1


for path, binary in IMAGES.items():
    commands = dockerfile.parse_file(str(ROOT / path))
    froms = [c for c in commands if c.cmd == "FROM"]
    check(len(froms) >= 2, f"{path}: multi-stage ({len(froms)} stages)")
    final = commands[commands.index(froms[-1]):]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    check(bool(users) and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]) is not None,
          f"{path}: final stage runs as a numeric non-root user ({users[-1] if users else 'none'})")
    for c in commands:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for source in c.value[:-1]:
                check((ROOT / source).exists(), f"{path}: COPY source {source} exists")
    copied = {s for c in commands if c.cmd == "COPY" and not c.flags for s in c.value[:-1]}
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", (ROOT / "Cargo.toml").read_text()).group(1)
    for member in re.findall(r'"([^"]+)"', members):
        check(member in copied, f"{path}: workspace member {member} is copied into the build")
    runs = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    packages = re.findall(r"cargo build [^&]*-p ([\w-]+)", runs)
    manifests = {m.parent.name: m.read_text() for m in ROOT.glob("*/Cargo.toml")}
    names = {re.search(r'^name = "([^"]+)"', t, re.M).group(1) for t in manifests.values()}
    check(packages == [binary] and binary in names, f"{path}: builds workspace package {binary}")
    entry = [c.value for c in final if c.cmd == "ENTRYPOINT"]
    check(bool(entry) and entry[-1][0].endswith("/" + binary), f"{path}: ENTRYPOINT runs {binary}")

print(f"dockerfiles: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
