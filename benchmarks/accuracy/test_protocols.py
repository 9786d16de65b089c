"""Test one checkpoint under several evaluation protocols (full / sampled uniform / sampled popularity).

The checkpoint's weights are loaded into a fresh ``SASRecModule`` built from its saved
hyper-parameters (unknown keys from older versions are dropped), with only the evaluation protocol
(``evaluation.protocol``) and the cut-offs (``evaluation.top_k``) changed, so every row is the same model.

    python benchmarks/accuracy/test_protocols.py CKPT --data ../shared/data/beauty.txt
"""

from __future__ import annotations

import argparse
import inspect
import json

import lightning as L
import torch

from sasrec_lightning.data.datamodule import SASRecDataModule
from sasrec_lightning.training.module import SASRecModule

PROTOCOLS = {
    "full": ("full", "uniform"),
    "sampled-uniform": ("sampled", "uniform"),
    "sampled-popularity": ("sampled", "popularity"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="../shared/data/beauty.txt")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    args = parser.parse_args()
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)  # the safe path
    known = set(inspect.signature(SASRecModule.__init__).parameters)
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k in known}
    evaluation = {**hparams.get("evaluation", {}), "top_k": (1, 5, 10, 20)}
    for name in args.protocols:
        protocol, sampling = PROTOCOLS[name]
        model = SASRecModule(**{**hparams, "evaluation": {**evaluation, "protocol": protocol}})
        # strict=False: module-level buffers added after the checkpoint was written (e.g. the
        # recommend() popularity fallback) are not part of the encoder; the encoder must load fully.
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
        if any(key.startswith("model.") for key in missing + unexpected):
            raise RuntimeError(f"encoder weights do not match: missing {missing}, unexpected {unexpected}")
        data = SASRecDataModule(path=args.data, max_len=hparams["max_len"],
                                loader={"eval_negative_sampling": sampling})
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        results = trainer.test(model, datamodule=data, verbose=False)[0]
        print(json.dumps({"protocol": name, "epoch": ckpt["epoch"], **{k: round(v, 4) for k, v in results.items()}}),
              flush=True)


if __name__ == "__main__":
    main()
