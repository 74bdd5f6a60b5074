"""The repository stands alone: no file points outside it, and every link in the docs resolves.

Checked on every tracked Markdown, Python, YAML and TOML file (`git ls-files`):
- no reference to a file that lives outside the repository: the `shared` folder beside the
  checkout, or upper-case design and style notes the repository does not ship (its design
  document is docs/design.md);
- no path of a development machine: none under `/work` anywhere, and in the Markdown none under
  `/tmp` but the few example paths the docs tell the reader to create (EXAMPLE_TMP_PATHS).
And in README.md and docs/: every relative Markdown link (and image) names a file of the
repository, and an `#anchor` names a heading of its target; every repository path the prose
quotes (`docs/...`, `bench/....py`, `systemd/...`) exists.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Written with a character class, so that this file does not match its own patterns.
OUTSIDE = {
    "a folder beside the checkout": re.compile(r"\.\./share[d]\b"),
    "a design note the repository does not ship (use docs/design.md)":
        re.compile(r"\bDESIG[N]\.md\b"),
    "a style note the repository does not ship": re.compile(r"\bSTYL[E]\.md\b"),
    "a path of a development machine": re.compile(r"/wor[k]/"),
}
TMP_PATH = re.compile(r"/tm[p]/[^\s`)\"'<>:,]*")
# Example paths the docs ask the reader to create (README's sweep example, bench/README.md).
EXAMPLE_TMP_PATHS = ("/tmp/demo/", "/tmp/demo/broadcasts", "/tmp/janitor-before", "/tmp/s.json")
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]+`")
# A repository path quoted in prose or code: a top-level folder of the repo, then a file name.
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:docs|bench|systemd|kubernetes|tests|janitor|trainer_hooks|demo|\.ci)"
    r"/[\w./@-]*\.(?:md|py|json|yaml|service|timer|conf|example|env|sh|png))\b")


@cache
def tracked() -> tuple[str, ...]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return tuple(name for name in out.stdout.decode().split("\0") if name)


def files(*suffixes: str) -> list[str]:
    return [name for name in tracked() if name.endswith(suffixes) and (REPO / name).is_file()]


def docs() -> list[str]:
    return [name for name in files(".md") if name == "README.md" or name.startswith("docs/")]


def prose(text: str) -> str:
    """The text without its fenced code blocks and code spans (where links are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:  # a repeated heading gets -1, -2, ...
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def test_the_tree_is_tracked_and_scanned() -> None:
    scanned = files(".md", ".py", ".yaml", ".toml")
    assert {"README.md", "pyproject.toml", "docs/design.md", "kubernetes/base/job.yaml"} \
        <= set(scanned)
    assert len(docs()) >= 5, docs()


def test_no_file_refers_outside_the_repository() -> None:
    problems = []
    for name in files(".md", ".py", ".yaml", ".toml"):
        for number, line in enumerate((REPO / name).read_text(encoding="utf-8").splitlines(), 1):
            problems += [f"{name}:{number}: {why}: {line.strip()}"
                         for why, pattern in OUTSIDE.items() if pattern.search(line)]
    assert not problems, "\n".join(problems)


def test_docs_name_no_temporary_path_but_their_examples() -> None:
    problems = []
    for name in files(".md"):
        for number, line in enumerate((REPO / name).read_text(encoding="utf-8").splitlines(), 1):
            problems += [f"{name}:{number}: {path}" for path in TMP_PATH.findall(line)
                         if not path.startswith(EXAMPLE_TMP_PATHS)]
    assert not problems, "a path of this machine, or a new example (add it to " \
        "EXAMPLE_TMP_PATHS):\n" + "\n".join(problems)


def test_every_relative_link_in_the_docs_resolves() -> None:
    problems = []
    for name in docs():
        source = REPO / name
        for match in LINK.finditer(prose(source.read_text(encoding="utf-8"))):
            target = match["target"]
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            where, _, anchor = target.partition("#")
            path = (source.parent / where).resolve() if where else source
            shown = f"{name}: [{match['text']}]({target})"
            if REPO not in path.parents and path != REPO:
                problems.append(f"{shown}: outside the repository")
            elif not path.exists():
                problems.append(f"{shown}: {path.relative_to(REPO)} does not exist")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                problems.append(f"{shown}: no heading #{anchor} in {path.relative_to(REPO)}")
    assert not problems, "\n".join(problems)


def test_every_repository_path_the_docs_quote_exists() -> None:
    problems = []
    for name in docs():
        text = (REPO / name).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            for path in REPO_PATH.findall(line):
                if not (REPO / path).exists():
                    problems.append(f"{name}:{number}: {path}")
    assert not problems, "\n".join(problems)
