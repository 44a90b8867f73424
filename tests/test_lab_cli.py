"""``strategylab lab``'s usage errors: exit 2, one line naming the flag and the value, no
traceback, and nothing started or written (run as a real process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from strategylab._lab_cli import parse_categories, parse_seed
from strategylab.errors import ConfigurationError

pytestmark = pytest.mark.timeout(60)


def _lab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", "lab", *args],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--category", "0"], "--category='0'"),
        (["--category", "11"], "--category='11'"),
        (["--category", "x"], "--category='x'"),
        (["--category", "3,,4"], "--category='3,,4'"),
        (["--category", "3,3"], "--category='3'"),
        (["--severity", "extreme"], "--severity='extreme'"),
        (["--postgres", "mysql://db"], "--postgres='mysql://db'"),
        (["--seed", "abc"], "--seed='abc'"),
        (["--seed", "x"], "--seed='x'"),
        (["--seed", "1.5"], "--seed='1.5'"),
        (["--seed", ""], "--seed=''"),
        (["--report", "/dev/null/x"], "--report '/dev/null/x'"),
        (["--junit", "/dev/null/j.xml"], "--junit '/dev/null/j.xml'"),
        (["--report", ""], "--report"),
    ],
)
def test_a_bad_flag_exits_2_naming_it(tmp_path: Path, args: list[str], named: str) -> None:
    """A bad value: exit 2, the flag and the value named on stderr, no traceback, no report."""
    done = _lab(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert "Try" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_report_dir_exits_2_untouched(tmp_path: Path) -> None:
    """--report naming a non-empty directory the lab did not create: exit 2, nothing touched."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    done = _lab("--category", "3", "--report", str(mine), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "--report" in done.stderr
    assert "mine" in done.stderr
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]


def test_lab_run_with_a_missing_file_exits_2(tmp_path: Path) -> None:
    """``lab run FILE`` with no such file: exit 2 naming it."""
    done = _lab("run", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "nope.toml" in done.stderr
    assert "Traceback" not in done.stderr


def test_lab_run_with_a_malformed_file_exits_2(tmp_path: Path) -> None:
    """``lab run FILE`` with a file that is not an experiment: exit 2, nothing written."""
    bad = tmp_path / "bad.toml"
    bad.write_text("this is [not toml\n")
    done = _lab("run", str(bad), "--report", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "bad.toml" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3,4", (3, 4)), (" 10 , 1 ", (10, 1)), ("1,2,3,4,5,6,7,8,9,10", tuple(range(1, 11)))],
)
def test_categories_parse_in_the_order_given(text: str, expected: tuple[int, ...]) -> None:
    """--category keeps the order given."""
    assert parse_categories(text) == expected


@pytest.mark.parametrize("text", ["", "0", "11", "-1", "3.0", "٣", "1,1"])
def test_bad_categories_are_refused_naming_the_item(text: str) -> None:
    """A bad id is refused with the flag's name."""
    with pytest.raises(ConfigurationError, match="--category"):
        parse_categories(text)


def test_a_junit_path_that_is_a_directory_exits_2_naming_junit(tmp_path: Path) -> None:
    """--junit naming a directory: exit 2 before anything runs, blaming --junit (not the report
    directory), nothing written."""
    done = _lab("--category", "3", "--junit", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"strategylab lab: error: --junit {str(tmp_path)!r}" in done.stderr
    assert "report" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_lab_run_checks_report_and_junit_before_running(tmp_path: Path) -> None:
    """``lab run`` checks --report and --junit before the experiment starts (exit 2)."""
    exp = tmp_path / "e.toml"
    exp.write_text(
        'title = "t"\n[[steady_state_hypothesis.probes]]\ntype = "command"\n'
        'command = ["true"]\n[[method]]\ntype = "pause"\nduration = 0\n'
    )
    for args, named in (
        (["--junit", str(tmp_path)], "--junit"),
        (["--junit", "/dev/null/j.xml"], "--junit"),
        (["--report", "/dev/null/x"], "--report"),
    ):
        done = _lab("run", str(exp), *args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert f"strategylab lab run: error: {named} " in done.stderr
        assert [p.name for p in tmp_path.iterdir()] == ["e.toml"]


@pytest.mark.parametrize(("text", "value"), [("7", 7), (" -3 ", -3), ("+12", 12)])
def test_seeds_parse_as_whole_numbers(text: str, value: int) -> None:
    """--seed takes a whole number, signed or not."""
    assert parse_seed(text) == value


@pytest.mark.parametrize("text", ["", " ", "x", "1.5", "1e3", "٣", "--1"])
def test_bad_seeds_are_refused_naming_the_value(text: str) -> None:
    """A seed that is not a whole number names --seed and the value."""
    with pytest.raises(ConfigurationError, match=r"--seed="):
        parse_seed(text)
