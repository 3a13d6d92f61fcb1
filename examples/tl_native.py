"""Worked example: decompose a TransformerLens native transformer (TransformerBridge.boot_native).

A 2-layer transformer is trained briefly on a synthetic token task (each token is a fixed permutation of the
one before), then every attention and MLP matrix is decomposed with KL on the next-token logits. Masks are
per token: the modules see [batch, pos, d] inputs.

    python examples/tl_native.py experiment=example_tl
"""

from pathlib import Path

from circuitdecomp import decompose
from circuitdecomp.cli import hydra_script
from circuitdecomp.config import Config
from circuitdecomp.decomp.distributed import process_group
from circuitdecomp.tracking import Logger
from common import finish, permutation_sequences, train_next_token

VOCAB, SEQ_LEN = 24, 12
TRAIN_STEPS = 300


def build_model(seed: int, steps: int):
    """The trained (frozen) bridge and its final next-token loss."""
    from transformer_lens import TransformerBridge, TransformerBridgeConfig  # lazy: importing TL takes seconds

    cfg = TransformerBridgeConfig(d_model=32, d_head=8, n_heads=4, n_layers=2, n_ctx=SEQ_LEN, d_vocab=VOCAB, d_mlp=64,
                                  act_fn="gelu", normalization_type="LN", seed=seed)
    model = TransformerBridge.boot_native(cfg)
    loss = train_next_token(model, model, permutation_sequences(VOCAB, SEQ_LEN, 64, seed), steps)
    return model, loss


@hydra_script("example_tl")
def main(cfg: Config, out_dir: Path, logger: Logger) -> None:
    model, loss = build_model(cfg.seed, TRAIN_STEPS)
    d = cfg.decomposition
    with process_group() as shard:
        dec = decompose(model, {m.pattern: m.C for m in d.modules}, permutation_sequences(VOCAB, SEQ_LEN, d.batch_size, cfg.seed + 1),
                        d, out_dir=out_dir, seed=cfg.seed, logger=logger, log_every=cfg.tracking.log_every)
        if shard is None or shard.is_main:
            eval_batch = next(permutation_sequences(VOCAB, SEQ_LEN, 512, cfg.seed + 2))
            metrics = finish(dec, eval_batch, out_dir, logger, cfg.name, {"target/next_token_loss": loss})
            print({k: round(v, 4) for k, v in metrics.items()})


if __name__ == "__main__":
    main()
