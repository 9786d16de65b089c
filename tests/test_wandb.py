"""W&B tracking from the CLI, offline: the run directory holds the config and the metrics.

And the converse: without a W&B logger nothing imports wandb or opens a network connection.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import CONFIGS, TINY_MODEL, TINY_TRAINER, run_cli


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # "val/ndcg@10" may be stored as nested ["val", "ndcg@10"]


def read_offline_run(path: Path) -> dict:
    """Config, history rows, summary and artifacts from an offline ``run-*.wandb`` file.

    The file is a LevelDB-style log (7-byte file header, 32 KiB blocks, records split into chunks
    with a 7-byte header: crc32, length, type) of ``wandb_internal_pb2.Record`` protobufs.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    run = {"config": {}, "history": [], "summary": {}, "artifacts": []}
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # block trailer padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind not in (1, 4):  # FIRST / MIDDLE chunks: the record continues
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        kind = record.WhichOneof("record_type")
        if kind == "config":
            run["config"].update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run["history"].append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            run["summary"].update({_key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "artifact":
            run["artifacts"].append((record.artifact.type, record.artifact.name))
    return run


def test_wandb_offline_run_has_config_metrics_lr_and_model(synthetic_txt, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_cli(
        ["fit", "-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "logger" / "wandb.yaml"),
         *TINY_MODEL, *TINY_TRAINER, "--data.init_args.path", str(synthetic_txt), "--trainer.max_epochs", "2",
         "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
         "--trainer.logger.init_args.log_model", "true", "--trainer.enable_checkpointing", "true",
         "--trainer.default_root_dir", str(tmp_path)],
        cwd=tmp_path,
    )
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    run = read_offline_run(next(runs[0].glob("run-*.wandb")))
    config = run["config"]
    # every model and data hyper-parameter, the dataset statistics and the trainer settings
    encoder, loss = config["encoder"], config["loss"]
    assert encoder["hidden_size"] == 8 and encoder["num_blocks"] == 1
    assert loss == {"class_path": "sasrec_lightning.model.losses.BCELoss", "init_args": {}}
    assert config["loader"]["batch_size"] == 128 and config["max_len"] == 50 and config["optimization"]["lr"] == 0.003
    assert config["data/users"] == 80 and config["data/items"] == 40 and config["data/actions"] > 0
    assert config["trainer/max_epochs"] == 2 and config["seed_everything"] == 0
    logged = {key for row in run["history"] for key in row}
    for name in ("train/loss", "val/ndcg@10", "val/hr@10", "test/ndcg@10", "test/hr@10", "lr-Adam"):
        assert name in logged, f"{name} not logged; logged: {sorted(logged)}"
    assert 0.0 <= run["summary"]["test/ndcg@10"] <= 1.0
    assert run["summary"]["lr-Adam"] == 0.003
    assert [kind for kind, _ in run["artifacts"]] == ["model"]  # log_model: the checkpoint as an artifact


def test_no_wandb_and_no_network_without_a_wandb_logger(synthetic_txt, tmp_path):
    script = textwrap.dedent(
        """
        import socket, sys
        contacted = []
        def audit(event, args):
            if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
                target = args[1] if event == "socket.connect" else args[0]
                host = target[0] if isinstance(target, tuple) else target
                if host not in ("localhost", "127.0.0.1", "::1", None) and not str(host).startswith("/"):
                    contacted.append((event, str(target)))
        sys.addaudithook(audit)
        from sasrec_lightning.cli.app import cli_main
        cli_main(sys.argv[1:])
        assert "wandb" not in sys.modules, "wandb was imported"
        assert not contacted, contacted
        print("NO-NETWORK-OK")
        """
    )
    args = ["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_MODEL, *TINY_TRAINER,
            "--data.init_args.path", str(synthetic_txt), "--trainer.max_epochs", "1"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB")}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "NO-NETWORK-OK" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
