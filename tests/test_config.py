"""Config composition: layers, overrides, strict keys and types, one-line errors."""

import dataclasses
import re

import pytest

from worldmodels import config as C
from worldmodels.errors import UserError


def test_defaults_are_the_atari100k_protocol():
    cfg = C.resolve(env="Breakout")
    assert cfg.env.game == "Breakout"
    assert cfg.env.sticky_action_prob == 0.0
    assert cfg.env.full_action_space is False
    assert cfg.env.frame_skip == 4 and cfg.env.size == 64 and cfg.env.noop_max == 30
    assert cfg.env.life_loss_terminal is True
    assert cfg.env.max_episode_frames == 108_000
    assert cfg.agent.name == "random"
    assert cfg.schedule.env_steps_budget == 100_000
    assert cfg.eval.episodes == 100


def test_machado_protocol_changes_the_three_flags():
    cfg = C.resolve(env="Pong", protocol="machado")
    assert cfg.env.sticky_action_prob == 0.25
    assert cfg.env.full_action_space is True
    assert cfg.env.life_loss_terminal is False
    assert cfg.env.protocol == "machado"


def test_game_names_are_canonicalised():
    assert C.resolve(env="ms_pacman").env.game == "MsPacman"
    assert C.resolve(env="breakout").env.game == "Breakout"


def test_preset_then_overrides_win():
    cfg = C.resolve(env="Breakout", preset="smoke", overrides=["schedule.epochs=7", "run.seed=3"])
    assert cfg.schedule.epochs == 7  # --set beats the preset
    assert cfg.schedule.num_envs == 2  # from the smoke preset
    assert cfg.run.seed == 3


def test_override_values_are_typed():
    cfg = C.resolve(
        env="Breakout",
        overrides=["env.sticky_action_prob=1e-1", "schedule.collect_epsilon=0", "eval.video=false"],
    )
    assert cfg.env.sticky_action_prob == pytest.approx(0.1)  # YAML reads '1e-1' as a string
    assert isinstance(cfg.schedule.collect_epsilon, float)
    assert cfg.eval.video is False


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"env": "NotAGame"}, "unknown Atari game 'NotAGame'"),
        ({"world": "nope"}, "unknown world 'nope'"),
        ({"agent": "nope"}, "unknown agent 'nope' (valid: "),
        (
            {"preset": "huge"},
            "unknown preset 'huge' (valid: atari100k, learn-cpu, learn-gpu, paper, smoke, test",
        ),
        ({"protocol": "x"}, "unknown env protocol 'x' (valid: atari100k, machado)"),
        ({"overrides": ["schedule.epochz=3"]}, "unknown config key 'schedule.epochz' (valid: "),
        ({"overrides": ["bogus.x=1"]}, "unknown config section 'bogus'"),
        ({"overrides": ["schedule.epochs=many"]}, "schedule.epochs: expected an integer"),
        ({"overrides": ["env.pool_order=sideways"]}, "env.pool_order: 'sideways' is not one of"),
        ({"overrides": ["env.max_pool=3"]}, "env.max_pool: expected true or false"),
        ({"overrides": ["noequals"]}, "--set expects key.path=value"),
    ],
)
def test_bad_input_is_a_one_line_user_error(kwargs, needle):
    with pytest.raises(UserError) as err:
        C.resolve(**{"env": "Breakout", **kwargs})
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        C.resolve(env="Breakout", overrides=["env.stiky_action_prob=0.25"])
    assert "sticky_action_prob" in str(err.value)


def test_dump_and_build_round_trip():
    cfg = C.resolve(env="Pong", preset="smoke", overrides=["run.seed=5"])
    again = C.build(__import__("yaml").safe_load(C.dump(cfg)))
    assert again == cfg


def test_configs_are_frozen():
    cfg = C.resolve(env="Breakout")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.env.frame_skip = 2  # type: ignore[misc]


def test_every_preset_and_protocol_resolves():
    for protocol in C.available("env"):
        for preset in C.available("preset"):
            cfg = C.resolve(env="Breakout", protocol=protocol, preset=preset)
            assert cfg.preset == preset and cfg.env.protocol == protocol


def test_protocol_values_exclude_game_and_backend():
    a = C.resolve(env="Breakout").env.protocol_values()
    b = C.resolve(env="Pong", overrides=["env.backend=python"]).env.protocol_values()
    assert a == b
    assert C.resolve(env="Pong", protocol="machado").env.protocol_values() != a


def test_partial_nested_sections_keep_the_fields_own_defaults():
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Inner:
        a: int = 1
        b: int = 2

    @dataclass(frozen=True)
    class Outer:
        inner: Inner = field(default_factory=lambda: Inner(a=10, b=20))

    assert C.from_dict(Outer, {"inner": {"b": 5}}).inner == Inner(a=10, b=5)
    assert C.from_dict(Outer, {}).inner == Inner(a=10, b=20)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("schedule.epochs=-1", "schedule.epochs must be >= 0, got -1"),
        ("schedule.collect_epsilon=.nan", "schedule.collect_epsilon must be a finite number"),
        ("schedule.keep_checkpoints=0", "schedule.keep_checkpoints must be >= 1"),
        ("eval.episodes=0", "eval.episodes must be >= 1"),
        ("run.name=../../x", "run.name must be a plain directory name"),
        ("run.device=gpu", "run.device must be auto, cpu, cuda or cuda:N"),
        ("run.seed=9223372036854775808", "run.seed must be in [0, 2**63 - 1]"),
        ("env.size=0", "env.size must be >= 1"),
    ],
)
def test_values_are_checked_when_the_config_is_resolved(override, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        C.resolve(env="Breakout", overrides=[override])


def test_inf_only_where_a_field_allows_it():
    cfg = C.resolve(env="Breakout", world="vae")  # the VAE does not clip: max_grad_norm .inf
    assert cfg.world.config.vae_training.max_grad_norm == float("inf")
    again = C.build(__import__("yaml").safe_load(C.dump(cfg)))
    assert again == cfg
    with pytest.raises(UserError, match="world.vae_training.lr must be a finite number"):
        C.resolve(env="Breakout", world="vae", overrides=["world.vae_training.lr=.inf"])


def test_a_config_never_imports_the_plugins_it_names(tmp_path, monkeypatch):
    (tmp_path / "wm_cfg_payload.py").write_text("open('MARKER', 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    tree = C.to_dict(C.resolve(env="Breakout"))
    tree["run"]["plugins"] = ["wm_cfg_payload"]
    with pytest.raises(UserError, match="names plugin wm_cfg_payload, which was not loaded"):
        C.build(tree)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize(
    ("tree", "needle"),
    [
        ({"world": "diffusion"}, "world: expected a mapping with a 'name' key"),
        ({"agent": ["random"]}, "agent: expected a mapping with a 'name' key"),
        ({"run": 3}, "run: expected a mapping, got 3"),
        ({"preset": ["smoke"]}, "preset: expected a name"),
        ({"run": {"plugins": "x"}}, "run.plugins: expected a list of module names"),
    ],
)
def test_a_config_of_the_wrong_structure_is_one_line(tree, needle):
    with pytest.raises(UserError, match=re.escape(needle)) as err:
        C.build(tree)
    assert "\n" not in str(err.value)
