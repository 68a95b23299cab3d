"""Settings: every value checked by type and range with the file, line and key named; one help text per setting."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from assistant.config import Settings, load_settings, setting_help
from assistant.errors import BadInputFile, UsageError
from tests.conftest import REPO


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    import main

    code = main.main(argv)
    return code, capsys.readouterr().err


def settings_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    # A good first line, so the bad key's line number is not trivially 1.
    path.write_text('system_prompt = "你好"\n' + body + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ('max_new_tokens = "lots"', "max_new_tokens", "a whole number > 0, not 'lots'"),
        ('threads = "x"', "threads", "a whole number > 0, not 'x'"),
        ("base = 5", "base", "non-empty text, not 5"),
        ("max_new_tokens = true", "max_new_tokens", "a whole number > 0, not true"),
        ("max_new_tokens = 2.5", "max_new_tokens", "a whole number > 0, not 2.5"),
        ("threads = -2", "threads", "a whole number > 0, not -2"),
        ("temperature = -0.5", "temperature", "a number >= 0, not -0.5"),
        ('quantization = "3bit"', "quantization", "one of '4bit', 'bf16', not '3bit'"),
        ('device = "gpu"', "device", "one of 'auto', 'cpu', 'cuda', not 'gpu'"),
        ("repetition_penalty = 0.9", "repetition_penalty", "a number >= 1.0, not 0.9"),
        ('adapter_dirs = "store"', "adapter_dirs", "a non-empty list of paths"),
        ("adapter_dirs = []", "adapter_dirs", "a non-empty list of paths"),
        ("routing_data = [1]", "routing_data", "a list of paths"),
    ],
)
def test_bad_setting_exits_2_naming_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, key: str, expected: str
) -> None:
    path = settings_file(tmp_path, line)
    code, err = run_main(["adapters", "--config", str(path)], capsys)
    assert code == 2
    assert f"{path}:2: setting {key!r} must be {expected}" in err
    assert "Traceback" not in err


def test_train_reads_the_settings_file_from_config_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = settings_file(tmp_path, 'max_new_tokens = "lots"')
    argv = ["train", "adapter", "--name", "x", "--data", str(tmp_path / "d.jsonl"), "--config", str(path)]
    code, err = run_main(argv, capsys)
    assert code == 2
    assert f"{path}:2: setting 'max_new_tokens'" in err


def test_train_takes_the_recipe_from_recipe() -> None:
    import main

    parser = main.build_parser([(m.__name__, m.register) for m in main.command_modules()])
    args = parser.parse_args(
        ["train", "adapter", "--name", "x", "--data", "d.jsonl", "--config", "s.toml", "--recipe", "r.yaml"]
    )
    assert (args.config, args.train_config) == (Path("s.toml"), Path("r.yaml"))
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "adapter", "--name", "x", "--data", "d.jsonl", "--settings", "s.toml"])


def test_unknown_key_and_broken_toml_are_rejected_with_their_line(tmp_path: Path) -> None:
    with pytest.raises(BadInputFile, match=r"config\.toml:2: unknown setting\(s\): bsae"):
        load_settings(settings_file(tmp_path, 'bsae = "typo"'))
    with pytest.raises(BadInputFile, match=r"config\.toml:2: not valid TOML"):
        load_settings(settings_file(tmp_path, "base = "))


def test_a_good_file_loads_typed_values(tmp_path: Path) -> None:
    path = settings_file(
        tmp_path,
        'base = "/models/x"\nquantization = "bf16"\nmax_new_tokens = 64\ntemperature = 1\nthreads = 2\n'
        'adapter_dirs = ["~/mine", "/shared"]\nrouting_data = ["/labels.txt"]\ndevice = "cpu"',
    )
    s = load_settings(path)
    assert (s.base, s.quantization, s.device, s.max_new_tokens, s.threads, s.system_prompt) == (
        "/models/x",
        "bf16",
        "cpu",
        64,
        2,
        "你好",
    )
    assert s.temperature == 1.0 and isinstance(s.temperature, float)  # a whole number is fine for a float
    assert s.adapter_dirs == (Path.home() / "mine", Path("/shared"))
    assert s.routing_data == (Path("/labels.txt"),)


def test_legacy_adapters_dir_is_the_one_store(tmp_path: Path) -> None:
    assert load_settings(settings_file(tmp_path, 'adapters_dir = "/store"')).adapter_dirs == (Path("/store"),)
    both = settings_file(tmp_path, 'adapters_dir = "/store"\nadapter_dirs = ["/other"]')
    with pytest.raises(BadInputFile, match=r"config\.toml:2: give 'adapters_dir' \(one store\) or 'adapter_dirs'"):
        load_settings(both)
    with pytest.raises(BadInputFile, match=r"config\.toml:2: setting 'adapters_dir' must be a path, not 5"):
        load_settings(settings_file(tmp_path, "adapters_dir = 5"))


def test_command_line_values_are_checked_like_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["adapters", "--threads", "0"], capsys)
    assert code == 2
    assert "setting 'threads' must be a whole number > 0, not 0" in err
    with pytest.raises(UsageError, match="setting 'temperature' must be a number >= 0"):
        Settings().with_overrides(temperature=-1.0)
    assert Settings().with_overrides(temperature=1).temperature == 1.0


def _help_of(parser: argparse.ArgumentParser, command: str, flag: str) -> str | None:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return action.help


def test_command_line_help_is_the_settings_help() -> None:
    from assistant.cli import build_parser

    parser = build_parser()
    meta = {f.name: f.metadata["help"] for f in dataclasses.fields(Settings)}
    assert _help_of(parser, "ask", "--max-new-tokens") == meta["max_new_tokens"]
    for flag, name in [("--base", "base"), ("--threads", "threads"), ("--system", "system_prompt")]:
        assert _help_of(parser, "ask", flag) == meta[name] == setting_help(name)


def _readme_settings_block() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Settings file") :]
    match = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert match, "README's settings section has no toml block"
    return match.group(1).splitlines()


def test_readme_settings_block_lists_every_setting_with_its_help(tmp_path: Path) -> None:
    lines = _readme_settings_block()
    for f in dataclasses.fields(Settings):
        assert f.metadata.get("help"), f"setting {f.name} has no help"
        at = [i for i, line in enumerate(lines) if re.match(rf"#?\s*{f.name} = ", line)]
        assert at, f"README's settings block does not list {f.name}"
        assert lines[at[0] - 1] == f"# {f.metadata['help']}", f"README's comment on {f.name} is not its help"
    # The uncommented lines are a valid settings file that states the real defaults.
    written = tomllib.loads("\n".join(lines))
    path = tmp_path / "readme.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    loaded = load_settings(path)
    assert written and all(getattr(loaded, k) == getattr(Settings(), k) for k in written)
