"""Playing inside a learned world (``python -m worldmodels play``, ``worldmodels/play.py``):
headless play of smoke runs of every world writes a recording and the action log, and replaying
the log gives the very same frames; settings change without rebuilding a world; bad inputs are
one-line errors; under Xvfb the real window takes synthetic key events and closes cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cli_inproc import call

from worldmodels import play as P
from worldmodels.cli import run_main
from worldmodels.commands import play as cmd
from worldmodels.hub import load

WORLDS = ("diffusion", "iris", "vae")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A test-preset run of every world (seconds each)."""
    root = tmp_path_factory.mktemp("play") / "runs"
    for world in WORLDS:
        rc, _, err = call(
            "train.py", "--env", "Breakout", "--world", world, "--preset", "test",
            "--name", world, "--set", f"run.runs_dir={root}",
        )  # fmt: skip
        assert rc == 0, err
    return {w: root / w for w in WORLDS}


def script_file(path: Path) -> Path:
    """50 scripted steps: names and numbers, the agent in control for a while, a reset."""
    lines: list[object] = []
    names = ["RIGHT", "FIRE", "LEFT", "NOOP", 2, 3, 1, 0]
    for i in range(50):
        if i == 20:
            lines.append({"event": "agent", "on": True})
        if i == 26:
            lines.append({"event": "agent", "on": False})
        if i == 30:
            lines.append({"event": "reset"})
        if 20 <= i < 26:
            lines.append(None)  # the agent's choice
        else:
            lines.append(names[i % len(names)] if i % 3 else {"action": names[i % len(names)]})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def headless(argv: list[str]) -> tuple[P.Driver, int]:
    """Run headless play as the command does, keeping every rendered frame."""
    driver = cmd.build(cmd.parse([*argv, "--headless"]))
    driver.keep_shown = True
    try:
        taken = P.play_headless(driver, steps=None, fps=15)
    finally:
        driver.close()
    return driver, taken


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_frames(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert np.array_equal(x, y), f"frame {i} differs"


@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_headless_play_records_and_its_log_replays_the_same_frames(runs, world, tmp_path):
    script = script_file(tmp_path / "script.jsonl")
    first, taken = headless([str(runs[world]), "--actions", str(script),
                             "--record", str(tmp_path / "a.gif"), "--seed", "3"])  # fmt: skip
    assert taken == 50
    log = read_log(tmp_path / "a.actions.jsonl")
    assert log[0]["play"]["seed"] == 3 and log[0]["play"]["world"] == world
    steps = [e for e in log if "step" in e]
    assert len(steps) == 50 and [e["step"] for e in steps] == list(range(1, 51))
    assert {e["by"] for e in steps} == {"script", "agent"}
    assert sum(e.get("event") == "reset" for e in log) == 1
    gif = P.gif_frames(tmp_path / "a.gif")
    assert len(gif) == 51 == len(first.shown)
    assert gif[0].shape == first.shown[0].shape
    assert len(first.session.world_frames) == 52  # the start, 50 steps, the reset
    # the log, replayed (its seed from its header), gives the same frames, shown and recorded
    second, taken = headless([str(runs[world]), "--actions", str(tmp_path / "a.actions.jsonl"),
                              "--record", str(tmp_path / "b.gif")])  # fmt: skip
    assert taken == 50
    assert_same_frames(first.shown, second.shown)
    for fa, fb in zip(first.session.world_frames, second.session.world_frames, strict=True):
        assert_same_frames(fa, fb)
    assert_same_frames(gif, P.gif_frames(tmp_path / "b.gif"))
    replayed = [e for e in read_log(tmp_path / "b.actions.jsonl") if "step" in e]
    assert replayed == steps
    # another seed dreams something else
    third, _ = headless([str(runs[world]), "--actions", str(script), "--seed", "4"])
    assert any(not np.array_equal(x, y) for x, y in zip(first.shown, third.shown, strict=True))


@pytest.mark.slow
def test_side_by_side_and_compare_replay_too(runs, tmp_path):
    (tmp_path / "s.txt").write_text("# Breakout\nFIRE\n" + "RIGHT\nLEFT\n1\n" * 4)
    for extra in (["--side-by-side"], ["--compare", str(runs["iris"])]):
        a, taken = headless([str(runs["diffusion"]), "--actions", str(tmp_path / "s.txt"),
                             "--log", str(tmp_path / "a.jsonl"), *extra])  # fmt: skip
        assert taken == 13 and len(a.session.panels) == 2
        b, _ = headless([str(runs["diffusion"]), "--actions", str(tmp_path / "a.jsonl"), *extra])
        assert_same_frames(a.shown, b.shown)
    assert a.session.panels[1].title.startswith("dream: iris")


@pytest.mark.slow
def test_settings_change_at_play_time_without_rebuilding_the_world(runs):
    d = P.PlaySession(load(runs["diffusion"]))
    world = d.loaded.world
    before = d.settings()["denoising_steps"]
    d.change("denoising_steps", 1)
    assert world.config.denoising_steps == before + 1 and len(world.sigmas) == before + 2
    d.step(1)
    assert d.change("temperature", 1) is None  # a diffusion world samples at no temperature
    d.close()
    assert world.config.denoising_steps == before and len(world.sigmas) == before + 1
    for name, owner in (("iris", lambda w: w), ("vae", lambda w: w.mdn)):
        s = P.PlaySession(load(runs[name]))
        t0 = owner(s.loaded.world).config.temperature
        s.change("temperature", 1)
        assert owner(s.loaded.world).config.temperature == pytest.approx(t0 + 0.1)
        s.step(0)
        s.close()
        assert owner(s.loaded.world).config.temperature == t0


@pytest.mark.slow
def test_the_agent_plays_headless_on_features(runs, tmp_path):
    rc, out, err = call_play(str(runs["vae"]), "--headless", "--agent", "--steps", "5",
                             "--record", str(tmp_path / "v.gif"))  # fmt: skip
    assert rc == 0, err
    assert "played 5 steps" in out
    steps = [e for e in read_log(tmp_path / "v.actions.jsonl") if "step" in e]
    assert [e["by"] for e in steps] == ["agent"] * 5


def call_play(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = run_main(cmd.main, list(argv))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def test_keys_map_to_the_games_actions():
    breakout = ("NOOP", "FIRE", "RIGHT", "LEFT")
    assert P.action_from_held(breakout, set()) == 0
    assert P.action_from_held(breakout, {"right", "space"}) == 3 - 1  # no RIGHTFIRE: RIGHT
    assert P.action_from_held(breakout, {"up"}) == 0
    assert P.action_from_held(breakout, {"up", "space"}) == 1
    full = ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT",
            "DOWNLEFT", "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE",
            "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE")  # fmt: skip
    assert full[P.action_from_held(full, {"down", "left", "space"})] == "DOWNLEFTFIRE"
    assert full[P.action_from_held(full, {"left", "right", "up"})] == "UP"
    rows = P.action_keys(full)
    assert rows[14] == ("", "UPRIGHTFIRE", "Up+Right+Space") and rows[0][2] == "none"


def test_action_files_read_and_bad_ones_are_one_line_errors(tmp_path):
    meanings = ("NOOP", "FIRE", "RIGHT", "LEFT")
    (tmp_path / "a.json").write_text(json.dumps({"actions": ["fire", 2, {"event": "reset"}, 0]}))
    items, header = P.read_actions(tmp_path / "a.json", meanings)
    assert [i.kind for i in items] == ["step", "step", "reset", "step"] and header == {}
    assert [i.action for i in items if i.kind == "step"] == [1, 2, 0]
    bad = {
        "a.csv": ("1,2", "unknown action file format '.csv'"),
        "b.txt": ("FIRE\nJUMP\n", "b.txt:2: unknown action 'JUMP'"),
        "c.txt": ("7\n", "out of range"),
        "d.jsonl": ("1\n{oops\n", "d.jsonl:2 is not JSON"),
        "e.json": ('{"x": 1}', "expected a list of actions"),
        "f.jsonl": ('{"event": "fly"}\n', "unknown entry"),
        "g.txt": ("# nothing\n", "holds no action"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(P.UserError) as exc:
            P.read_actions(tmp_path / name, meanings)
        assert message in str(exc.value) and "\n" not in str(exc.value)


def test_command_line_errors_are_one_line(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    rc, _, err = call_play(str(missing), "--headless", "--actions", str(tmp_path / "x.txt"))
    assert rc == 2 and "does not exist" in err and err.count("\n") == 1
    (tmp_path / "x.yaml").write_text("")
    rc, _, err = call_play(str(missing), "--headless", "--actions", str(tmp_path / "x.yaml"))
    assert rc == 2 and "unknown action file format '.yaml'" in err
    rc, _, err = call_play(str(missing), "--headless", "--agent", "--steps", "2", "--record",
                           str(tmp_path / "o.avi"))  # fmt: skip
    assert rc == 2 and "unknown format '.avi' (valid: .gif, .mp4)" in err
    rc, _, err = call_play(str(missing), "--headless")
    assert rc == 2 and "--actions FILE" in err
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    pytest.importorskip("pygame", reason="pygame is not installed (pip install pygame)")
    rc, _, err = call_play(str(missing))
    assert rc == 2 and "use --headless" in err and err.count("\n") == 1


# ------------------------------------------------------------------ the real window, under Xvfb


@pytest.fixture
def xvfb(monkeypatch):
    """A virtual X display for this test (skipped where Xvfb or pygame is missing)."""
    pytest.importorskip("pygame", reason="pygame is not installed (pip install pygame)")
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb): the window test needs it")
    for n in range(99, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen([exe, f":{n}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(100):
            if Path(f"/tmp/.X11-unix/X{n}").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            pytest.skip(f"Xvfb :{n} did not start (exit status {proc.returncode})")
        monkeypatch.setenv("DISPLAY", f":{n}")
        monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
        yield f":{n}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_the_window_takes_20_key_events_and_closes_cleanly(runs, xvfb, tmp_path):
    import pygame

    keys = [
        (pygame.KEYDOWN, pygame.K_RIGHT), (pygame.KEYUP, pygame.K_RIGHT),
        (pygame.KEYDOWN, pygame.K_SPACE), (pygame.KEYUP, pygame.K_SPACE),
        (pygame.KEYDOWN, pygame.K_p), (pygame.KEYDOWN, pygame.K_PERIOD),
        (pygame.KEYDOWN, pygame.K_PERIOD), (pygame.KEYDOWN, pygame.K_p),
        (pygame.KEYDOWN, pygame.K_RIGHTBRACKET), (pygame.KEYDOWN, pygame.K_LEFTBRACKET),
        (pygame.KEYDOWN, pygame.K_EQUALS), (pygame.KEYDOWN, pygame.K_a),
        (pygame.KEYDOWN, pygame.K_a), (pygame.KEYDOWN, pygame.K_r),
        (pygame.KEYDOWN, pygame.K_1), (pygame.KEYDOWN, pygame.K_LEFT),
        (pygame.KEYUP, pygame.K_LEFT), (pygame.KEYDOWN, pygame.K_3),
        (pygame.KEYDOWN, pygame.K_0), (pygame.KEYDOWN, pygame.K_ESCAPE),
    ]  # fmt: skip
    assert len(keys) == 20
    shot = tmp_path / "window.png"

    def on_tick(tick: int, screen) -> None:
        if tick == 12:
            pygame.image.save(screen, str(shot))
        if tick < len(keys):
            kind, key = keys[tick]
            pygame.event.post(pygame.event.Event(kind, key=key, mod=0, unicode="", scancode=0))

    driver = cmd.build(cmd.parse([str(runs["diffusion"]), "--side-by-side", "--fps", "60",
                                  "--record", str(tmp_path / "w.gif")]))  # fmt: skip
    try:
        taken = cmd.run_window(driver, fps=60, on_tick=on_tick)
    finally:
        driver.close()
    assert not pygame.display.get_init()  # the window is closed
    log = read_log(tmp_path / "w.actions.jsonl")
    events = [e.get("event") for e in log[1:] if "event" in e]
    assert events == ["set", "set", "agent", "agent", "reset"]  # no temperature: no event
    steps = [e for e in log if "step" in e]
    assert len(steps) == taken and 10 <= taken <= 19  # paused for a few ticks, two single steps
    assert {"RIGHT", "FIRE", "LEFT"} <= {e["name"] for e in steps}
    assert any(e["name"] == "LEFT" and e["by"] == "keys" for e in steps)
    assert shot.stat().st_size > 0 and len(P.gif_frames(tmp_path / "w.gif")) >= taken
    assert os.environ["DISPLAY"] == xvfb
