"""The README cannot drift: its subclassing example runs, its CLI line runs, and CI runs its test command."""

from __future__ import annotations

import re
import runpy
import shlex

from conftest import REPO, TINY_TRAINER
from sasrec_lightning.cli.app import cli_main

README = (REPO / "README.md").read_text()


def readme_example() -> str:
    match = re.search(r"<!-- readme-example: my_recsys.py -->\s*```python\n(.*?)```", README, re.S)
    assert match, "README.md lost its subclassing example block"
    return match.group(1)


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, re.S)


def test_readme_example_runs_as_a_script(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = readme_example().replace("max_epochs=2", "max_epochs=1")  # same code, one epoch is enough here
    (tmp_path / "my_recsys.py").write_text(source)
    runpy.run_path(str(tmp_path / "my_recsys.py"), run_name="__main__")
    assert "test/ndcg@10" in capsys.readouterr().out


def test_readme_cli_line_runs_the_subclass_with_the_shipped_config(tmp_path, monkeypatch):
    (tmp_path / "my_recsys.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))  # what PYTHONPATH=. does
    monkeypatch.chdir(REPO)  # the README's paths are relative to the repository
    line = next(line for block in readme_commands() for line in block.splitlines() if "my_recsys.MySASRec" in line)
    words = shlex.split(line)
    assert words[:2] == ["PYTHONPATH=.", "sasrec-lightning"]
    cli = cli_main([*words[2:], *TINY_TRAINER, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir",
                    str(tmp_path), "--model.init_args.encoder.hidden_size", "8",
                    "--data.init_args.source.synthetic_users", "60", "--data.init_args.source.synthetic_items", "30"])
    assert type(cli.model).__name__ == "MySASRec" and cli.model.warmup_steps == 50
    assert isinstance(cli.trainer.optimizers[0], __import__("torch").optim.AdamW)
    assert cli.trainer.state.finished


def test_ci_runs_the_readme_test_command():
    test_command = next(block.strip() for block in readme_commands() if "pytest" in block)
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
    quickstart = next(block.strip() for block in readme_commands() if "quickstart.yaml" in block)
    # The two set-up commands differ only in what they run after installing.
    assert quickstart.rsplit("&&", 1)[0] == test_command.rsplit("&&", 1)[0]
