"""Experiments in TOML files: parsing with errors that name the key, and real runs."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from strategylab.chaos import (
    Experiment,
    ExperimentEvent,
    ExperimentFileError,
    load_experiment,
    parse_experiment,
    run_experiment,
    run_experiment_file,
)
from strategylab.testing import FakeClock

PY = sys.executable.replace("\\", "/")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """A real TCP echo service on a local port: its ``host:port``."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def _experiment(upstream: str, method: str, rollbacks: str = "", hypothesis: str = "") -> str:
    return f"""
title = "echo survives a partition"
description = "the echo service answers again once the partition is gone"

[[proxies]]
name = "echo"
listen = "127.0.0.1:0"
upstream = "{upstream}"

[steady_state_hypothesis]
title = "echo answers"
interval = 0.05
{hypothesis}

[[steady_state_hypothesis.probes]]
name = "echo-round-trip"
type = "tcp"
address = "${{proxy.echo}}"
send = "ping"
expect = "ping"
timeout = 0.3

{method}

{rollbacks}
"""


def _load(tmp_path: Path, text: str) -> Experiment:
    path = tmp_path / "experiment.toml"
    path.write_text(text)
    return load_experiment(path)


_PARTITION = """
[[method]]
type = "toxic"
name = "partition"
proxy = "echo"
toxic = "partition"
duration = 0.5
"""

_RESET = """
[[rollbacks]]
type = "reset"
proxy = "echo"
"""


def _marker_action(table: str, path: Path, name: str = "marker") -> str:
    return f"""
[[{table}]]
type = "command"
name = "{name}"
command = ["{PY}", "-c", "open(r'{path}', 'w').write('ran')"]
"""


# ------------------------------------------------------------------------- parsing


_PROBE0 = "steady_state_hypothesis.probes[0]"
_BAD_FILES = [
    ('toxic = "partition"', 'toxic = "lag"', "method[0].toxic", "'lag'"),
    ('proxy = "echo"\ntoxic', 'proxy = "db"\ntoxic', "method[0].proxy", "'db'"),
    ('type = "tcp"', 'type = "ping"', f"{_PROBE0}.type", "'ping'"),
    ("duration = 0.5", "duration = -1", "method[0].duration", "-1"),
    ("${proxy.echo}", "${proxy.web}", f"{_PROBE0}.address", "'${proxy.web}'"),
    ("timeout = 0.3", 'timeout = "soon"', f"{_PROBE0}.timeout", "'soon'"),
    ('title = "echo survives', 'titel = "echo survives', "titel", ""),
    (
        "duration = 0.5",
        "duration = 0.5\nattributes = { latency = 10 }",
        "method[0].attributes.latency",
        "10",
    ),
    (
        'toxic = "partition"',
        'toxic = "latency"\nattributes = { latency = -5 }',
        "method[0].attributes.latency",
        "-5",
    ),
]


@pytest.mark.parametrize(("old", "new", "key", "value"), _BAD_FILES)
def test_a_bad_file_is_rejected_with_the_key_path_and_the_value(
    tmp_path: Path, old: str, new: str, key: str, value: str
) -> None:
    """Every bad key is named with its path and the value it held; nothing runs."""
    text = _experiment("127.0.0.1:9", _PARTITION)
    assert old in text
    with pytest.raises(ExperimentFileError) as info:
        _load(tmp_path, text.replace(old, new, 1))
    assert info.value.key == key
    assert f"{key}: {value}" in str(info.value)
    assert str(tmp_path / "experiment.toml") in str(info.value)


def test_an_unknown_toxic_lists_the_known_ones(tmp_path: Path) -> None:
    """The message for a toxic that does not exist says which ones do."""
    text = _experiment("127.0.0.1:9", _PARTITION).replace('"partition"', '"lag"')
    with pytest.raises(
        ExperimentFileError,
        match=r"method\[0\]\.toxic: 'lag' is not one of latency, bandwidth, partition",
    ):
        _load(tmp_path, text)  # fmt: skip


def test_a_file_that_is_not_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    """TOML syntax errors are reported with the file and the position."""
    with pytest.raises(ExperimentFileError, match=r"experiment\.toml: not valid TOML: .*line 2"):
        _load(tmp_path, 'title = "x"\n[[method]\n')


def test_a_missing_file_is_a_file_error(tmp_path: Path) -> None:
    """A path that does not exist raises the same error type (exit code 2 for the CLI)."""
    with pytest.raises(ExperimentFileError, match="cannot read"):
        load_experiment(tmp_path / "nope.toml")


def test_a_valid_file_parses_into_the_model(tmp_path: Path) -> None:
    """Proxies, probes, actions and rollbacks come out as declared."""
    exp = _load(tmp_path, _experiment("127.0.0.1:9", _PARTITION, _RESET))
    assert exp == parse_experiment(  # the file and the dict give the same experiment
        tomllib.loads(_experiment("127.0.0.1:9", _PARTITION, _RESET)),
        source=str(tmp_path / "experiment.toml"),
    )
    assert exp.proxies[0].upstream == "127.0.0.1:9"
    assert exp.method[0].toxic == "partition"
    assert exp.rollbacks[0].type == "reset"


# ------------------------------------------------------------------------- runs


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_partition_fails_a_probe_during_and_the_hypothesis_holds_after(
    tmp_path: Path, echo: str
) -> None:
    """Against a real echo service: held before, failed during the partition, held after."""
    exp = _load(tmp_path, _experiment(echo, _PARTITION, _RESET, hypothesis='during = "observe"'))
    events: list[ExperimentEvent] = []
    result = await run_experiment(exp, events.append)
    assert result.status == "completed", result.reason
    assert result.before is not None
    assert result.before.ok
    assert any(not p.ok for p in result.during), "the partition was not observed"
    assert result.after is not None
    assert result.after.ok
    assert [(r.name, r.ok) for r in result.rollbacks] == [("reset-0", True)]
    assert result.method[0].fault is not None
    assert result.method[0].fault["toxics"][0]["type"] == "blackhole"
    assert result.exit_code == 0
    assert events[-1].kind == "end"
    assert events[-1].result is result
    json.dumps(result.to_json())  # the report is JSON


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_fault_left_in_force_deviates_and_the_rollbacks_heal_it(
    tmp_path: Path, echo: str
) -> None:
    """A partition without a duration outlives the method: the hypothesis does not recover."""
    method = _PARTITION.replace("duration = 0.5\n", "")
    exp = _load(tmp_path, _experiment(echo, method, _RESET, hypothesis="recover_within = 0.4"))
    result = await run_experiment(exp)
    assert result.status == "deviated"
    assert result.reason is not None
    assert "echo-round-trip" in result.reason
    assert result.after is not None
    assert result.after.attempts > 1  # it kept trying for recover_within
    assert all(r.ok for r in result.rollbacks)
    assert result.exit_code == 1


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_during_probe_failure_deviates_when_the_hypothesis_must_hold(
    tmp_path: Path, echo: str
) -> None:
    """With ``during = "hold"`` a probe failing while the fault is in force deviates."""
    exp = _load(tmp_path, _experiment(echo, _PARTITION, _RESET, hypothesis='during = "hold"'))
    result = await run_experiment(exp)
    assert result.status == "deviated"
    assert result.reason is not None
    assert "during the method" in result.reason


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_the_rollbacks_run_when_the_method_fails(tmp_path: Path, echo: str) -> None:
    """An action that fails ends the method, fails the run, and the rollbacks still run."""
    marker = tmp_path / "rolled-back"
    method = (
        _PARTITION.replace("duration = 0.5\n", "")
        + f"""
[[method]]
type = "command"
name = "boom"
command = ["{PY}", "-c", "raise SystemExit(3)"]
"""
        + _marker_action("method", tmp_path / "never")
    )
    exp = _load(tmp_path, _experiment(echo, method, _marker_action("rollbacks", marker)))
    result = await run_experiment(exp)
    assert result.status == "failed"
    assert result.reason is not None
    assert "boom" in result.reason
    assert "exit 3" in result.reason
    assert marker.read_text() == "ran"
    assert not (tmp_path / "never").exists()  # the method stopped at the failure
    assert result.after is None


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_hypothesis_that_does_not_hold_before_aborts_and_injects_nothing(
    tmp_path: Path,
) -> None:
    """Nothing listens upstream: "deviated before", the method never runs."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # a port that refuses connections
    never = tmp_path / "never"
    exp = _load(tmp_path, _experiment(f"127.0.0.1:{port}", _marker_action("method", never)))
    result = await run_experiment(exp)
    assert result.status == "aborted"
    assert result.reason is not None
    assert result.reason.startswith("deviated before: probe 'echo-round-trip'")
    assert not never.exists()
    assert result.method == []


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_the_rollbacks_run_when_the_run_is_cancelled(tmp_path: Path, echo: str) -> None:
    """A cancellation (Ctrl-C) mid-method still runs the rollbacks, then propagates."""
    marker = tmp_path / "rolled-back"
    method = _PARTITION.replace("duration = 0.5", "duration = 30")
    exp = _load(tmp_path, _experiment(echo, method, _marker_action("rollbacks", marker)))
    events: list[ExperimentEvent] = []
    in_force = asyncio.Event()

    def seen(event: ExperimentEvent) -> None:
        events.append(event)
        if "in force" in event.message:
            in_force.set()

    task = asyncio.create_task(run_experiment(exp, seen))
    await asyncio.wait_for(in_force.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert marker.read_text() == "ran"
    end = events[-1]
    assert end.kind == "end"
    assert end.result is not None
    assert end.result.status == "aborted"
    assert end.result.interrupted


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_http_and_command_probes_judge_by_their_tolerance(tmp_path: Path) -> None:
    """An HTTP probe passes on a listed status; a command probe on a listed exit code."""

    async def unavailable(_: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        text = f"""
title = "probes"
[[proxies]]
name = "web"
upstream = "127.0.0.1:{port}"
[[steady_state_hypothesis.probes]]
type = "http"
url = "http://${{proxy.web}}/"
tolerance = [200, 503]
[[steady_state_hypothesis.probes]]
type = "command"
command = ["{PY}", "-c", "raise SystemExit(4)"]
tolerance = 4
[[method]]
type = "disable"
proxy = "web"
duration = 0.05
"""
        result = await run_experiment(_load(tmp_path, text))
    finally:
        await runner.cleanup()
    assert result.status == "completed", result.reason
    assert result.before is not None
    assert result.before.probes[0].detail.endswith("HTTP 503")


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_pauses_follow_the_injected_clock(tmp_path: Path, echo: str) -> None:
    """A pause of an hour takes no real time on a FakeClock and is timed on it."""
    method = """
[[method]]
type = "pause"
duration = 3600
"""
    exp = _load(tmp_path, _experiment(echo, method))
    clock = FakeClock()
    result = await run_experiment(exp, clock=clock)
    assert result.status == "completed", result.reason
    assert result.method[0].t_end - result.method[0].t_start == pytest.approx(3600)
    assert 3600 in clock.sleeps


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_run_experiment_file_runs_a_file_in_its_own_loop(tmp_path: Path) -> None:
    """The CLI's entry point loads and runs a file and maps the status to an exit code."""
    path = tmp_path / "experiment.toml"
    path.write_text(
        f"""
title = "a command holds"
[[steady_state_hypothesis.probes]]
type = "command"
command = "{PY} -c pass"
[[method]]
type = "pause"
duration = 0.01
"""
    )
    result = run_experiment_file(path)
    assert result.status == "completed"
    assert result.exit_code == 0


def test_the_documented_example_file_is_a_valid_experiment() -> None:
    """docs/examples/experiment.toml parses (the docs cannot drift from the format)."""
    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / "experiment.toml"
    exp = load_experiment(path)
    assert [a.toxic for a in exp.method if a.type == "toxic"] == ["latency", "partition"]
    assert exp.hypothesis.recover_within == 5.0


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ctrl_c_runs_the_rollbacks_then_raises_keyboard_interrupt(tmp_path: Path) -> None:
    """SIGINT to a process in run_experiment_file: the rollbacks run, then KeyboardInterrupt."""
    marker = tmp_path / "rolled-back"
    path = tmp_path / "experiment.toml"
    path.write_text(
        f"""
title = "interrupted"
[[proxies]]
name = "p"
upstream = "127.0.0.1:9"
[[steady_state_hypothesis.probes]]
type = "command"
command = ["{PY}", "-c", "pass"]
[[method]]
type = "toxic"
proxy = "p"
toxic = "latency"
attributes = {{ latency = 100 }}
duration = 60
"""
        + _marker_action("rollbacks", marker)
    )
    script = (
        "import sys\n"
        "from strategylab.chaos import run_experiment_file\n"
        "try:\n"
        "    run_experiment_file(sys.argv[1], lambda e: print(e.message, flush=True))\n"
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt', flush=True)\n"
        "    raise SystemExit(130)\n"
    )
    with subprocess.Popen(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "in force" in line:
                    break
            proc.send_signal(signal.SIGINT)
            rest = proc.stdout.read()
            assert proc.wait(timeout=30) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "aborted: interrupted" in rest
    assert rest.rstrip().endswith("KeyboardInterrupt")
    assert marker.read_text() == "ran"


# ------------------------------------------------------------------------- review defects


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1:21/x", "ftp://${proxy.echo}/x", "${proxy.echo}/health", "http://"]
)
def test_an_http_probe_url_that_is_not_http_is_rejected_at_load(tmp_path: Path, url: str) -> None:
    """Only http:// and https:// URLs with a host: anything else is refused when the file is
    loaded, with the key path and the value (it used to pass and abort the run)."""
    text = _experiment("127.0.0.1:9", '[[method]]\ntype = "pause"\nduration = 0').replace(
        'type = "tcp"\naddress = "${proxy.echo}"\nsend = "ping"\nexpect = "ping"',
        f'type = "http"\nurl = "{url}"',
    )
    with pytest.raises(ExperimentFileError) as caught:
        _load(tmp_path, text)
    message = str(caught.value)
    assert f"{_PROBE0}.url" in message
    assert repr(url) in message
    assert "http:// or https://" in message


def test_an_http_probe_through_a_proxy_reference_loads(tmp_path: Path) -> None:
    """``http://${proxy.NAME}/...`` is a valid URL."""
    text = _experiment("127.0.0.1:9", '[[method]]\ntype = "pause"\nduration = 0').replace(
        'type = "tcp"\naddress = "${proxy.echo}"\nsend = "ping"\nexpect = "ping"',
        'type = "http"\nurl = "HTTPS://${proxy.echo}/ready"',
    )
    assert _load(tmp_path, text).hypothesis.probes[0].type == "http"


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_timed_fault_is_healed_at_its_deadline_not_after_a_probe(
    tmp_path: Path, echo: str
) -> None:
    """A 0.5 s partition observed by a probe with a 3 s timeout is healed at 0.5 s: the probe
    still waiting then is cut short and not recorded (the fault used to stay until the probe
    timed out)."""
    exp = _load(
        tmp_path,
        _experiment(echo, _PARTITION, _RESET, hypothesis='during = "observe"').replace(
            "timeout = 0.3", "timeout = 3.0"
        ),
    )
    result = await run_experiment(exp)
    partition = result.method[0]
    assert partition.ok, partition.detail
    held = partition.t_end - partition.t_start
    assert 0.5 <= held < 1.5, f"the 0.5 s partition was in force {held:.2f} s"
    for sample in result.during:
        assert sample.t + sample.duration_s <= partition.t_end
    assert all(s.duration_s < 3.0 for s in result.during)
