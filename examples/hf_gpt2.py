"""Worked example: decompose a Hugging Face GPT-2-architecture model through TransformerLens's bridge.

The model is built offline from a `GPT2Config` (no hub), trained briefly on a synthetic token task (each token
is a fixed permutation of the one before), wrapped with `build_bridge_from_module` (TL names; the logits equal
HF's), and decomposed with KL on the next-token logits. Under the bridge, attention runs through q/k/v
`nn.Linear`s split out of the fused `c_attn`; the attention output and both MLP matrices stay HF `Conv1D`s.

    python examples/hf_gpt2.py experiment=example_gpt2
"""

import os
from pathlib import Path

from common import permutation_sequences, run_token_example, train_next_token

from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.tracking import Logger

VOCAB, SEQ_LEN = 24, 12
TRAIN_STEPS = 300


def build_model(seed: int, steps: int):
    """The trained GPT-2 wrapped in a (frozen) TransformerBridge, and its final next-token loss."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is built from a config; nothing may be downloaded
    import torch
    from transformer_lens.model_bridge.sources import build_bridge_from_module  # lazy: importing TL takes seconds
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ_LEN,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf = GPT2LMHeadModel(config)
    loss = train_next_token(hf, lambda toks: hf(toks).logits, permutation_sequences(VOCAB, SEQ_LEN, 64, seed), steps)
    bridge = build_bridge_from_module(hf, architecture="GPT2LMHeadModel", hf_config=config, model_name="tiny-gpt2")
    return bridge.eval().requires_grad_(False), loss  # the bridge's split q/k/v Linears are new parameters


@hydra_script("example_gpt2")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    run_token_example(cfg, out_dir, logger, build_model, TRAIN_STEPS, VOCAB, SEQ_LEN)


if __name__ == "__main__":
    main()
