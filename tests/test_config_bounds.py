"""Configs are bounded: a YAML alias bomb, a huge file or a long list is one ``error:`` line, refused at once.

Before the bounds, a 500-byte config of 9 levels of 10 aliases, or a 12M-entry ``top_k`` list, kept the
CLI busy for minutes at 6-7 GB (jsonargparse copies, validates and dumps a config value by value).
"""

from __future__ import annotations

import time

import pytest
import yaml

from conftest import CONFIGS
from sasrec_lightning.cli.app import main
from sasrec_lightning.cli.bounded_yaml import MAX_CONFIG_NODES, MAX_LIST_ENTRIES, ConfigTooLarge, config_size

QUICKSTART = str(CONFIGS / "quickstart.yaml")

# 9 levels of 10 aliases in 470 bytes: 10^9 strings at the last level, 1,234,567,909 values in all.
BOMB = "\n".join(['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                 + [f"a{level}: &a{level} [{','.join([f'*a{level - 1}'] * 10)}]" for level in range(1, 9)]) + "\n"


def _refused(capsys, args: list[str], seconds: float = 10.0) -> str:
    """Run the console script in process; return its one ``error:`` line (exit status 2, no traceback, fast)."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and "usage:" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert elapsed < seconds, f"refused after {elapsed:.1f} s"  # was minutes (generous: a loaded CI machine)
    return lines[0]


def test_an_alias_bomb_in_a_config_file_is_refused_at_once(capsys, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB + "model:\n  init_args:\n    evaluation:\n      top_k: *a8\n")  # the last level once more
    line = _refused(capsys, ["fit", "-c", str(bomb)])
    assert line == (f"error: config file 'bomb.yaml' expands to 2,345,679,027 values once its YAML aliases (*name) are "
                    f"expanded; a config may expand to at most {MAX_CONFIG_NODES:,} (the shipped configs hold at most "
                    "111): remove the aliases that repeat large parts")
    # --print_config dumps the config: refused the same way, before anything is expanded.
    assert _refused(capsys, ["fit", "-c", str(bomb), "--print_config"]) == line


def test_an_alias_bomb_inline_is_refused_naming_the_flag(capsys):
    line = _refused(capsys, ["fit", "-c", QUICKSTART, "-c", BOMB])
    assert line.startswith("error: the value of -c expands to 1,234,567,909 values"), line


def test_a_12m_entry_top_k_file_is_refused_before_it_is_read(capsys, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("model:\n  init_args:\n    evaluation:\n      top_k: [" + ",".join(["1"] * 12_000_000) + "]\n")
    line = _refused(capsys, ["fit", "-c", QUICKSTART, "-c", str(big)], seconds=5.0)
    assert line == (f"error: config file '{big}' is 24,000,051 bytes; a config may be at most 262,144 bytes (256 KiB; "
                    "the shipped configs are at most 2.5 KB): check that -c names a config file")


def test_a_long_list_in_a_flag_is_refused_naming_the_flag(capsys):
    """A list under the byte and value bounds still costs jsonargparse n^2 copies: 4,000 entries took 32 s."""
    long_list = "[" + ",".join(["1"] * (MAX_LIST_ENTRIES + 1)) + "]"
    line = _refused(capsys, ["fit", "-c", QUICKSTART, "--model.init_args.evaluation.top_k", long_list])
    assert line == (f"error: the value of --model.init_args.evaluation.top_k holds a list of {MAX_LIST_ENTRIES + 1} "
                    f"entries; a list may hold at most {MAX_LIST_ENTRIES} (the shipped configs' longest has 4)")
    line = _refused(capsys, ["fit", "-c", QUICKSTART, f"--trainer.callbacks={long_list}"])
    assert line.startswith(f"error: the value of --trainer.callbacks holds a list of {MAX_LIST_ENTRIES + 1} entries")


def test_a_config_that_contains_itself_is_refused(capsys, tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("model:\n  init_args:\n    evaluation:\n      top_k: &a [1, *a]\n")
    line = _refused(capsys, ["fit", "-c", str(loop)])
    assert line == ("error: config file 'loop.yaml' cannot be used: it contains itself (an alias inside its own "
                    "anchor, like &a [*a]), so it expands without end")


def test_config_size_counts_aliases_as_often_as_they_are_used():
    shared = [1, 2, 3]  # an alias: one list object referenced three times
    config = {"a": shared, "b": [shared, shared], "c": "x"}
    # the mapping 1 + keys 3 + a (1 + 3) + b (1 + 2 * 4) + c 1
    assert config_size(config) == (1 + 3 + 4 + 9 + 1, 3)
    assert config_size("scalar") == (1, 0)
    loop: list = [1]
    loop.append(loop)
    with pytest.raises(ConfigTooLarge, match="contains itself"):
        config_size(loop)


@pytest.mark.parametrize("config", sorted(CONFIGS.rglob("*.yaml")), ids=lambda path: str(path.relative_to(CONFIGS)))
def test_the_shipped_configs_are_far_within_the_bounds(config):
    size = config_size(yaml.safe_load(config.read_text()))
    # 0.3's option groups add a key and a mapping per group (the largest config: 111 values, 0.2's: 99).
    assert size.values <= 120 and size.longest_list <= 4 and config.stat().st_size <= 2_500
