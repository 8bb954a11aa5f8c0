"""README.md and docs/: every `t5jax` command in a code block parses with the real CLI and
names gin files that exist; every relative link points at a file of the repository."""

import glob
import os
import re
import shlex

import pytest

from t5jax.cli import build_parser
from t5jax.gin_setup import find_gin_file, split_gin_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def _commands(text: str) -> list[str]:
  """`t5jax ...` lines of the fenced code blocks (continuations joined), less the usage
  summaries (`[--flag ...]`, `FILE ...`)."""
  out = []
  for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split(" #")[0].strip()
      if line.startswith("t5jax ") and "[" not in line and "..." not in line:
        out.append(line)
  return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_commands_parse_and_their_gin_files_exist(page):
  with open(page, encoding="utf-8") as f:
    commands = _commands(f.read())
  for command in commands:
    argv = shlex.split(command)[1:]
    rest, _ = split_gin_flags(argv)
    try:
      args = build_parser().parse_args(rest)
    except SystemExit:
      pytest.fail(f"{os.path.relpath(page, REPO)}: `{command}` does not parse")
    for name in getattr(args, "gin_file", None) or []:
      assert find_gin_file(name), f"{page}: {command}: no gin file {name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_point_at_files(page):
  with open(page, encoding="utf-8") as f:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", f.read())
  for link in links:
    if "://" in link:
      continue
    target = os.path.normpath(os.path.join(os.path.dirname(page), link))
    assert os.path.exists(target), f"{os.path.relpath(page, REPO)}: link {link} is broken"


def test_readme_is_a_front_door():
  with open(PAGES[0], encoding="utf-8") as f:
    text = f.read()
  assert "make pretrain" in text and "make test" in text
  assert len(text.splitlines()) <= 160
