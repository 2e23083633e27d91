"""``xiaozhi sim`` as a real process against our real server (offline providers, real PostgreSQL) and
against tiny misbehaving servers: OTA and direct connection, remembered identity, text, files, keyboard,
recording, reconnecting, and every expected failure as one ``error:`` line with a non-zero exit.

These processes see no sound device at all (tests/support/sim.py points PulseAudio at nothing), which is
itself one of the cases: file and text input still work."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import soundfile

from server.config import DatabaseSettings, EventSettings, ServerSettings, Settings
from server.device.server import DeviceServer
from server.runtime import StorageRuntime
from simulator.identity import load_identity
from simulator.session import ConnectOptions, DeviceSession, create_client
from simulator.terminal import SilentTerminal
from tests.support.sim import SimRun, assert_one_line_error, espeak_wav, run_sim, run_sim_here, silent_server, sim_env
from tests.support.waiting import wait_until


@pytest.fixture
async def runtime(db: DatabaseSettings, tmp_path: Path) -> AsyncIterator[StorageRuntime]:
    settings = Settings(database=db, data_dir=tmp_path, events=EventSettings(replay_interval_s=0.05))
    async with StorageRuntime(settings) as rt:
        yield rt


async def start_server(runtime: StorageRuntime, port: int = 0, **server: object) -> DeviceServer:
    settings = runtime.settings.model_copy(
        update={"server": ServerSettings(host="127.0.0.1", port=port, http_port=0, **server)}  # type: ignore[arg-type]
    )
    srv = DeviceServer(settings, runtime=runtime)
    await srv.start()
    return srv


@pytest.fixture
async def server(runtime: StorageRuntime) -> AsyncIterator[DeviceServer]:
    srv = await start_server(runtime)
    yield srv
    await srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_ota_text_turns_tool_call_and_a_remembered_identity(server: DeviceServer, tmp_path: Path) -> None:
    env = sim_env(tmp_path)
    run = await run_sim(server.ota_url(), "--text", "hello", "--text", "set the volume to 30", env=env)
    assert run.returncode == 0, run.stderr
    assert "you: hello" in run.stdout and "xiaozhi: Hello" in run.stdout
    assert 'tool self.audio_speaker.set_volume({"volume":30})' in run.stdout
    assert "summary: replies: 2 (2 with audio, 0 interrupted)" in run.stdout
    assert "0 dropped" in run.stdout and "first audio" in run.stdout
    # No sound device here: said once, and text still works.
    assert "note: replies are not played: no audio output device" in run.stderr
    identity = load_identity(tmp_path / "sim-identity")
    assert f"device {identity.device_id} (protocol v1)" in run.stderr
    again = await run_sim(server.websocket_url(), "--text", "what time is it", "--protocol-version", "3", env=env)
    assert again.returncode == 0, again.stderr
    assert f"device {identity.device_id} (protocol v3)" in again.stderr, "the same device comes back"
    assert load_identity(tmp_path / "sim-identity", "kitchen") != identity, "--identity NAME: another device"


async def test_a_spoken_file_in_manual_mode_is_recorded_to_wav(server: DeviceServer, tmp_path: Path) -> None:
    wav = espeak_wav(tmp_path / "q.wav", "what time is it")
    out = tmp_path / "conversation.wav"
    run = await run_sim(server.websocket_url(), "--file", str(wav), "--mode", "manual", "--protocol-version", "2",
                        "--record", str(out), "--no-speaker", "--quiet", env=sim_env(tmp_path))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "you:" not in run.stdout, "--quiet: no subtitles"
    assert "summary: replies: 1" in run.stdout
    audio, rate = soundfile.read(out, dtype="int16")
    assert rate == 16000 and audio.shape[1] == 2
    assert abs(audio[:, 0]).max() > 1000 and abs(audio[:, 1]).max() > 1000, "mic left, speaker right"


async def test_typed_lines_from_the_keyboard(server: DeviceServer, tmp_path: Path) -> None:
    run = await run_sim(server.websocket_url(), "--no-speaker", env=sim_env(tmp_path),
                        stdin="/nonsense\nturn the light red\n/status\n")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "note: no microphone (no audio input device" in run.stderr
    assert "unknown command '/nonsense'" in run.stderr
    assert "you: turn the light red" in run.stdout and "tool self.light.set_rgb(" in run.stdout
    assert "'light': {'on': True" in run.stdout, "/status shows the device after the reply"


async def test_no_sound_device_at_all(server: DeviceServer, tmp_path: Path) -> None:
    env = sim_env(tmp_path)
    mic = await run_sim(server.websocket_url(), "--mic", env=env)
    assert_one_line_error(mic, 2, r"^error: no audio input device: PortAudio sees no sound card .*--file or --text")
    listing = await run_sim("--list-devices", env=env)
    assert listing.returncode == 0 and "no sound devices" in listing.stdout


async def test_unreachable_refused_and_silent_servers(
    runtime: StorageRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XIAOZHI_SIM_DIR", str(tmp_path / "sim-identity"))
    port = free_port()
    unreachable = await run_sim(f"ws://127.0.0.1:{port}/xiaozhi/v1/", "--text", "hi", env=sim_env(tmp_path))
    assert_one_line_error(unreachable, 1, rf"^error: cannot connect to ws://127\.0\.0\.1:{port}/xiaozhi/v1/: ")
    no_ota = await run_sim_here(capsys, f"http://127.0.0.1:{port}/xiaozhi/ota/", "--text", "hi", "--no-speaker")
    assert_one_line_error(no_ota, 1, r"^error: cannot reach OTA server")

    async with silent_server(refuse=400) as url:
        refused = await run_sim_here(capsys, url, "--text", "hi", "--no-speaker")
    assert_one_line_error(refused, 1, r"^error: server refused the connection: HTTP 400 Bad Request: bad request")

    srv = await start_server(runtime, auth={"enabled": True, "secret": "s3cret"})
    try:
        no_token = await run_sim_here(capsys, srv.websocket_url(), "--text", "hi", "--no-speaker")
        assert_one_line_error(no_token, 1, r"HTTP 401 Unauthorized")
        bad_token = await run_sim_here(capsys, srv.websocket_url(), "--text", "hi", "--token", "bad.1", "--no-speaker")
        assert_one_line_error(bad_token, 1, r"HTTP 401")
        via_ota = await run_sim_here(capsys, srv.ota_url(), "--text", "hello", "--no-speaker")  # brings a good token
        assert via_ota.returncode == 0 and "xiaozhi: Hello" in via_ota.stdout, via_ota.stderr
    finally:
        await srv.stop()

    async with silent_server() as url:
        silent = await run_sim_here(capsys, url, "--text", "hi", "--hello-timeout", "1", "--no-speaker")
    assert_one_line_error(silent, 1, r"^error: server hello missing or late: none within 1 s")


async def test_malformed_server_messages_are_warnings_not_crashes(tmp_path: Path) -> None:
    async with silent_server(garbage=True) as url:
        run = await run_sim(url, "--text", "hi", "--no-speaker", "--protocol-version", "2", env=sim_env(tmp_path))
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4, run.stdout
    assert any("not JSON" in w for w in warnings) and any("'warp'" in w for w in warnings)
    assert any("bad binary frame" in w for w in warnings)
    assert "you: still fine" in run.stdout and "xiaozhi: ok" in run.stdout


async def test_bad_input_is_a_usage_error(
    server: DeviceServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XIAOZHI_SIM_DIR", str(tmp_path / "sim-identity"))
    url = server.websocket_url()
    junk = tmp_path / "notes.wav"
    junk.write_text("this is not audio at all\n" * 20)
    bad_file = await run_sim(url, "--file", str(junk), env=sim_env(tmp_path))
    assert_one_line_error(bad_file, 2, r"^error: cannot read audio file .*notes\.wav: ")
    missing = await run_sim_here(capsys, url, "--file", str(tmp_path / "nope.flac"))
    assert_one_line_error(missing, 2, r"nope\.flac")
    scheme = await run_sim_here(capsys, "ftp://example/xiaozhi", "--text", "hi")
    assert_one_line_error(scheme, 2, r"server must be an OTA URL .* or a WebSocket URL")
    no_server = await run_sim_here(capsys, "--text", "hi")
    assert_one_line_error(no_server, 2, r"give the server")
    load_mic = await run_sim_here(capsys, url, "--devices", "3", "--mic")
    assert_one_line_error(load_mic, 2, r"load mode .* not the microphone")
    damaged = tmp_path / "sim-identity" / "identity-broken.json"
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_text(json.dumps({"device_id": "nope", "client_id": "x"}))
    broken = await run_sim_here(capsys, url, "--text", "hi", "--identity", "broken")
    assert_one_line_error(broken, 2, r"identity file .* is damaged")
    flag = await run_sim_here(capsys, url, "--protocol-version", "7")
    assert flag.returncode == 2 and "invalid choice" in flag.stderr and "Traceback" not in flag.stderr


async def test_the_device_reconnects_with_backoff_when_the_server_comes_back(
    runtime: StorageRuntime, tmp_path: Path
) -> None:
    port = free_port()
    srv = await start_server(runtime, port=port)
    options = ConnectOptions(srv.websocket_url(), load_identity(tmp_path / "id"))
    session = DeviceSession(await create_client(options), SilentTerminal())
    await session.start()
    first = session.client.session_id
    stop = asyncio.Event()
    live = asyncio.create_task(session.live(None, None, stop))
    try:
        await srv.stop()  # the server goes away: the device notices and retries with backoff
        await wait_until(lambda: not session.client.connected, timeout=10)
        await asyncio.sleep(1.5)
        srv = await start_server(runtime, port=port)
        await wait_until(lambda: session.client.connected, timeout=15)
        assert session.client.session_id != first
        report = await session.say_text("hello")
        assert report is not None and report.sentences
    finally:
        stop.set()
        await live
        await session.close()
        await srv.stop()


async def sim_via_ota(capsys: pytest.CaptureFixture[str], routes: dict[str, Any]) -> SimRun:
    """``xiaozhi sim OTA-URL --text hello`` against an OTA endpoint made of ``routes`` (path → POST handler)."""
    from aiohttp import web

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        return await run_sim_here(capsys, f"http://127.0.0.1:{port}/xiaozhi/ota/", "--text", "hello", "--no-speaker")
    finally:
        await runner.cleanup()


async def test_an_activation_code_is_shown_and_polled_until_bound(
    server: DeviceServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OTA endpoint like the Go server's with auth on: a code to enter, 202 until the user has, then 200."""
    from aiohttp import web

    monkeypatch.setenv("XIAOZHI_SIM_DIR", str(tmp_path / "id"))
    monkeypatch.setattr("simulator.session.ACTIVATION_POLL_S", 0.1)
    polls: list[str] = []

    async def ota(request: web.Request) -> web.Response:
        assert request.headers["Activation-Version"] == "1" and request.headers["Device-Id"]
        body = await request.json()
        assert body["application"]["version"] and body["mac_address"] == request.headers["Device-Id"]
        return web.json_response({
            "websocket": {"url": server.websocket_url(), "token": "t0k"},
            "activation": {"code": "424242", "message": "enter 424242 in the console", "challenge": "c"},
        })  # fmt: skip

    async def activate(request: web.Request) -> web.Response:
        polls.append(request.headers["Device-Id"])
        return web.Response(status=200 if len(polls) >= 3 else 202)

    run = await sim_via_ota(capsys, {"/xiaozhi/ota/": ota, "/xiaozhi/ota/activate": activate})
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "activation code: 424242 — enter 424242 in the console" in run.stdout
    assert len(polls) == 3 and "device activated" in run.stderr
    assert "xiaozhi: Hello" in run.stdout


async def test_a_server_without_an_activation_endpoint_is_asked_again_until_bound(
    server: DeviceServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a Go reference server: an activation code in the OTA answer but no ``/activate`` route (404). The
    firmware then re-checks OTA until the answer carries no code; so does the simulator."""
    from aiohttp import web

    monkeypatch.setenv("XIAOZHI_SIM_DIR", str(tmp_path / "id"))
    monkeypatch.setattr("simulator.session.ACTIVATION_POLL_S", 0.1)
    checks: list[str] = []

    async def ota(request: web.Request) -> web.Response:
        checks.append(request.headers["Device-Id"])
        answer: dict[str, object] = {"websocket": {"url": server.websocket_url(), "token": f"t{len(checks)}"}}
        if len(checks) < 4:  # bound by the user after the third answer
            answer["activation"] = {"code": "777000", "message": "bind 777000"}
        return web.json_response(answer)

    run = await sim_via_ota(capsys, {"/xiaozhi/ota/": ota})
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "activation code: 777000" in run.stdout
    assert "activate answered HTTP 404" in run.stderr and "asking the OTA endpoint again" in run.stderr
    assert len(checks) == 4 and "device activated" in run.stderr
    assert "xiaozhi: Hello" in run.stdout
