"""Play inside a learned world: ``python -m worldmodels play RUN_OR_EXPORT``.

    python -m worldmodels play runs/<name>                       # a window, the keyboard plays
    python -m worldmodels play runs/<name> --side-by-side        # the real game beside it
    python -m worldmodels play runs/<a> --compare runs/<b>       # two worlds, the same actions
    python -m worldmodels play runs/<name> --record out.gif      # + out.actions.jsonl
    python -m worldmodels play runs/<name> --actions out.actions.jsonl --headless --record b.gif

The window shows the world stepped live at ``--fps`` by the held keys (arrows and space, mapped
to the game's action set, or 0-9 for an action by number; the map is on screen), its predicted
reward and end per frame, and the measured frame rate. R resets from a fresh real context, P
pauses, ``.`` steps one frame, ``[`` ``]`` change the denoising steps and ``-`` ``=`` the sampling
temperature where the world has them, A hands control to the trained agent and back. A recording
writes what was shown, labels included, and the action log beside it; replaying the log
(``--actions``) under the same seed (the log's, unless ``--seed`` says otherwise) gives the same
frames. ``--headless`` needs no display (nor pygame): it plays the script of ``--actions`` (or the
agent, ``--agent``) and writes the recording. See docs/play.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worldmodels.cli import Parser
from worldmodels.errors import UserError


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(
        prog="python -m worldmodels play",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument("run", metavar="RUN_OR_EXPORT", help="a run directory or an exported folder")
    p.add_argument("--side-by-side", action="store_true", help="the real game beside the world")
    p.add_argument("--compare", metavar="OTHER", help="a second run's world beside the first")
    p.add_argument("--record", metavar="OUT", help="write what is shown to OUT (.gif or .mp4)")
    p.add_argument("--log", metavar="FILE", help="the action log (default: OUT.actions.jsonl)")
    p.add_argument(
        "--actions", metavar="FILE",
        help="a script: an action log, a .json list or a .txt file of actions (numbers or names)",
    )  # fmt: skip
    p.add_argument("--headless", action="store_true", help="no window: play the script and quit")
    p.add_argument("--agent", action="store_true", help="the trained agent starts in control")
    p.add_argument("--seed", type=int, help="seed of the contexts and the worlds (default: 0)")
    p.add_argument("--steps", type=int, help="stop after this many steps")
    p.add_argument("--fps", type=float, default=15.0, help="steps per second (default: 15)")
    p.add_argument("--scale", type=int, default=4, help="pixels per frame pixel (default: 4)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument(
        "--trust-plugins", action="store_true",
        help="import the plugins the run's config names (they run code: trusted runs only)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.fps <= 0:
        p.error(f"--fps must be > 0, got {args.fps}")
    if args.steps is not None and args.steps < 0:
        p.error(f"--steps must be >= 0, got {args.steps}")
    if args.scale < 1:
        p.error(f"--scale must be >= 1, got {args.scale}")
    if args.seed is not None and args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.side_by_side and args.compare:
        p.error("--side-by-side and --compare both add a panel: choose one")
    return args


def _pygame() -> Any:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError:
        raise UserError(
            "the play window needs pygame (pip install 'worldmodels[play]', or pip install "
            "pygame); --headless plays without it"
        ) from None
    return pygame


def _need_display() -> None:
    if sys.platform.startswith("linux") and os.environ.get("SDL_VIDEODRIVER") not in (
        "dummy", "offscreen"
    ):  # fmt: skip
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise UserError(
                "no display to open the play window on (DISPLAY is not set): use --headless "
                "(with --actions FILE or --agent), or run under Xvfb"
            )


def build(args: argparse.Namespace) -> Any:
    """The ``Driver`` of a session as the arguments ask (nothing shown yet)."""
    from worldmodels import hub
    from worldmodels import play as P

    record = P.check_record_path(args.record) if args.record else None
    if args.actions:
        suffix = Path(args.actions).suffix.lower()
        if suffix not in P.ACTION_FILE_FORMATS:  # before loading anything
            P.read_actions(args.actions, ())
    m = hub.load(args.run, device=args.device, trust_plugins=args.trust_plugins)
    other = None
    if args.compare:
        other = hub.load(args.compare, device=args.device, trust_plugins=args.trust_plugins)
    meanings = m.env_info.action_meanings or tuple(
        f"ACTION_{i}" for i in range(m.env_info.num_actions)
    )
    script, header = P.read_actions(args.actions, meanings) if args.actions else ([], {})
    seed = args.seed if args.seed is not None else int(header.get("seed", 0))
    session = P.PlaySession(
        m, other=other, side_by_side=args.side_by_side, seed=seed,
        names=[args.run] + ([args.compare] if args.compare else []),
    )  # fmt: skip
    if args.agent:
        session.set_agent(True)
    log_path = args.log or (P.log_path_for(record) if record else None)
    log = None
    if log_path:
        log = P.ActionLog(log_path, {
            "source": str(args.run), "compare": args.compare, "side_by_side": args.side_by_side,
            "seed": seed, "world": m.config.world and m.config.world.name, "action_meanings": list(meanings),
            "settings": session.settings(),
        })  # fmt: skip
        if args.agent:
            log.write({"event": "agent", "on": True})
    renderer = P.Renderer(session, scale=args.scale)
    recorder = P.Recorder(record, args.fps) if record else None
    return P.Driver(session, renderer=renderer, recorder=recorder, log=log, script=script)


# --------------------------------------------------------------------------------- the window

DIGITS = {f"{i}": i for i in range(10)}


def run_window(
    driver: Any, *, fps: float, steps: int | None = None,
    on_tick: Callable[[int, Any], None] | None = None,
) -> int:  # fmt: skip
    """The pygame window loop: until Esc, Q, closing the window or ``steps`` steps; the number of
    steps taken. ``on_tick(tick, screen)`` is called before each tick's events are read (tests
    post synthetic events from it)."""
    pygame = _pygame()
    _need_display()
    try:
        pygame.display.init()
        pygame.font.init()
    except pygame.error as exc:
        raise UserError(f"cannot open the play window ({exc}): use --headless") from None
    s = driver.session
    screen = pygame.display.set_mode(driver.renderer.size)
    pygame.display.set_caption(f"worldmodels play: {s.names[0]}")
    clock = pygame.time.Clock()
    held: set[str] = set()
    keys = {
        pygame.K_UP: "up", pygame.K_DOWN: "down", pygame.K_LEFT: "left",
        pygame.K_RIGHT: "right", pygame.K_SPACE: "space",
    }  # fmt: skip
    paused, running, tick, taken = False, True, 0, 0
    last = time.perf_counter()
    rate = 0.0
    dirty = True
    try:
        while running:
            if on_tick is not None:
                on_tick(tick, screen)
            tick += 1
            one = False
            pick: int | None = None
            for ev in pygame.event.get():
                if ev.type == pygame.QUIT:
                    running = False
                elif ev.type == pygame.KEYUP and ev.key in keys:
                    held.discard(keys[ev.key])
                elif ev.type == pygame.WINDOWFOCUSLOST:
                    held.clear()
                elif ev.type == pygame.KEYDOWN:
                    name = pygame.key.name(ev.key)
                    if ev.key in keys:
                        held.add(keys[ev.key])
                    elif ev.key in (pygame.K_ESCAPE, pygame.K_q):
                        running = False
                    elif ev.key == pygame.K_r:
                        driver.event(_item("reset"))
                        dirty = True
                    elif ev.key == pygame.K_p:
                        paused = not paused
                        dirty = True
                    elif ev.key == pygame.K_PERIOD:
                        one = True
                    elif ev.key == pygame.K_a:
                        driver.event(_item("agent", on=not s.agent_on))
                        dirty = True
                    elif ev.key in (pygame.K_LEFTBRACKET, pygame.K_RIGHTBRACKET):
                        dirty |= driver.change(
                            "denoising_steps", 1 if ev.key == pygame.K_RIGHTBRACKET else -1
                        )
                    elif ev.key in (pygame.K_MINUS, pygame.K_EQUALS, pygame.K_KP_MINUS,
                                    pygame.K_KP_PLUS):  # fmt: skip
                        up = ev.key in (pygame.K_EQUALS, pygame.K_KP_PLUS)
                        dirty |= driver.change("temperature", 1 if up else -1)
                    elif name in DIGITS and DIGITS[name] < s.num_actions:
                        pick = DIGITS[name]
            if not running:
                break
            if (not paused or one) and (steps is None or taken < steps):
                if driver.script_left and driver.next_scripted():
                    pass
                else:
                    from worldmodels.play import action_from_held

                    action = pick
                    if action is None and not s.agent_on:
                        action = action_from_held(s.action_meanings, held)
                    driver.step(action, "keys")
                taken += 1
                now = time.perf_counter()
                rate = (
                    0.9 * rate + 0.1 / max(now - last, 1e-6) if rate else 1 / max(now - last, 1e-6)
                )
                last = now
                dirty = True
            elif steps is not None and taken >= steps:
                running = False
            driver.status.paused = paused
            driver.status.fps = f"{rate:4.1f} fps (target {fps:g})"
            if dirty:
                frame = driver.frame()
                surface = pygame.image.frombuffer(frame.tobytes(), driver.renderer.size, "RGB")
                screen.blit(surface, (0, 0))
                pygame.display.flip()
                dirty = False
            clock.tick(fps)
    finally:
        pygame.display.quit()
    return taken


def _item(kind: str, **kw: Any) -> Any:
    from worldmodels.play import Item

    return Item(kind, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.headless:
        if not args.actions and not args.agent:
            raise UserError("--headless plays a script: give --actions FILE (or --agent)")
        if args.agent and not args.actions and args.steps is None:
            raise UserError("--headless --agent needs --steps N (how long the agent plays)")
    else:
        _pygame()
        _need_display()
    from worldmodels.play import play_headless

    driver = build(args)
    try:
        if args.headless:
            taken = play_headless(driver, steps=args.steps, fps=args.fps)
        else:
            taken = run_window(driver, fps=args.fps, steps=args.steps)
    finally:
        driver.close()
    wrote = [str(p) for p in (driver.recorder and driver.recorder.path,
                               driver.log and driver.log.path) if p]  # fmt: skip
    print(f"played {taken} steps" + (f"; wrote {', '.join(wrote)}" if wrote else ""))
    return 0


if __name__ == "__main__":
    from worldmodels.cli import run_main

    sys.exit(run_main(main))
