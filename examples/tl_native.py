"""Worked example: decompose a TransformerLens native transformer (TransformerBridge.boot_native).

A 2-layer transformer is trained briefly on a synthetic token task (each token is a fixed permutation of the
one before), then every attention and MLP matrix is decomposed with KL on the next-token logits. Masks are
per token: the modules see [batch, pos, d] inputs.

    python examples/tl_native.py experiment=example_tl
"""

from pathlib import Path

from common import permutation_sequences, run_token_example, train_next_token

from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.tracking import Logger

VOCAB, SEQ_LEN = 24, 12
TRAIN_STEPS = 300


def build_model(seed: int, steps: int):
    """The trained (frozen) bridge and its final next-token loss."""
    from transformer_lens import TransformerBridge, TransformerBridgeConfig  # lazy: importing TL takes seconds

    cfg = TransformerBridgeConfig(
        d_model=32,
        d_head=8,
        n_heads=4,
        n_layers=2,
        n_ctx=SEQ_LEN,
        d_vocab=VOCAB,
        d_mlp=64,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    model = TransformerBridge.boot_native(cfg)
    loss = train_next_token(model, model, permutation_sequences(VOCAB, SEQ_LEN, 64, seed), steps)
    return model, loss


@hydra_script("example_tl")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    run_token_example(cfg, out_dir, logger, build_model, TRAIN_STEPS, VOCAB, SEQ_LEN)


if __name__ == "__main__":
    main()
