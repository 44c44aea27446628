"""The corpus of broken configs (tests/configs/*.yaml): every file is rejected, quickly, with the problem
its second line names (`# expect: FILE:line: key.path: message`), both by the loader and by `havs check`.

Each file is the shipped etc/havs.yaml with one mistake: the mistakes an operator makes in the first hour
(types YAML reads differently, ranges, typos, addresses that are not one host's, paths) and the files an
attacker writes (alias bombs, recursive aliases, malformed tags, deep nesting)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from havs.cli import main
from havs.configfile import load_config
from havs.errors import ConfigError

CORPUS = Path(__file__).resolve().parent / "configs"
FILES = sorted(CORPUS.glob("*.yaml"))


def expected(path: Path) -> str:
    line = path.read_text().splitlines()[1]
    assert line.startswith("# expect: FILE:"), f"{path.name}: the second line must say what to expect"
    return line.removeprefix("# expect: ").replace("FILE", str(path), 1)


def test_the_corpus_has_at_least_100_broken_files() -> None:
    assert len(FILES) >= 100
    assert len({expected(f).split(": ", 1)[1] for f in FILES}) >= 100  # 100 different problems, not copies


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_broken_file_is_rejected_with_its_problem(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    want = expected(path)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert time.perf_counter() - start < 1.0
    assert want in [str(p) for p in info.value.problems]
    assert main(["check", "--offline", "-c", str(path), "--node", "lvs1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert want in err and err[-1].startswith("havs: ") and "Traceback" not in "\n".join(err)
