#!/usr/bin/env python3
"""Writes the config loader fuzzer's seed corpus (Fuzz/ConfigLoader/corpus).

Seeds are the shipped config and every YAML text in the config unit tests
(Swift multi-line string literals in Tests/StickyCoreTests/*Config*Tests.swift),
dedented as Swift does. A literal that is only a fragment (no 'listeners:')
is also written after the tests' minimal config, the way the tests use it, so
the fuzzer starts from files that load as well as from files that fail.
Run from the repository root; it replaces the corpus's generated seeds.
"""
import glob
import hashlib
import os
import re

CORPUS = "Fuzz/ConfigLoader/corpus"
MINIMAL = """listeners:
  - address: 127.0.0.1:7001
pools:
  - name: web
    targets:
      - address: 127.0.0.1:8081
"""
LITERAL = re.compile(r'"""\n(.*?)\n([ \t]*)"""', re.S)


def literals(path):
    text = open(path, encoding="utf-8").read()
    for m in LITERAL.finditer(text):
        body, indent = m.group(1), m.group(2)
        lines = [l[len(indent):] if l.startswith(indent) else l.lstrip() for l in body.split("\n")]
        # Swift's escapes that matter in YAML text; interpolations stay as
        # written, which is still text worth mutating.
        yield "\n".join(lines).replace("\\\\", "\\").replace('\\"', '"').replace("\\t", "\t") + "\n"


def main():
    os.makedirs(CORPUS, exist_ok=True)
    for old in glob.glob(os.path.join(CORPUS, "test-*")):
        os.remove(old)
    seeds = {"stickyd.yaml": open("config/stickyd.yaml", encoding="utf-8").read()}
    for path in sorted(glob.glob("Tests/StickyCoreTests/*Config*Tests.swift")):
        stem = os.path.basename(path).removesuffix("Tests.swift")
        for text in literals(path):
            variants = [text] if "listeners:" in text else [text, MINIMAL + text]
            for v in variants:
                digest = hashlib.sha1(v.encode()).hexdigest()[:10]
                seeds[f"test-{stem}-{digest}.yaml"] = v
    for name, text in seeds.items():
        with open(os.path.join(CORPUS, name), "w", encoding="utf-8") as f:
            f.write(text)
    print(f"{CORPUS}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
