"""Benchmark: how SPD's step time and peak memory grow with the TransformerLens model (width, depth, C, batch, seq).

Each axis is varied alone around a small base shape; a last row runs the GPT-2-small shape (d_model 768, 12 layers,
d_mlp 3072, 12 heads, vocabulary 50257). Every attention (q, k, v, o) and MLP (in, out) matrix of every block is
decomposed with C components; the loss is KL on the logits with stochastic + routed-subset reconstruction (the
transformer recipe: one masked pass each, not one per module). Each shape runs in its own forked process, so
memory is that shape's own (CPU: resident set, GPU: allocated): "frozen model" is what building the model added,
"SPD memory" the peak of SPD training above that (components, CI functions, optimiser state, activations).
Prints the table and, per axis, the log-log slope of cost against size (1.0 = linear).

    python scripts/bench_scale.py                          # every axis, then GPT-2 small (batch 4 x seq 64, C 128)
    python scripts/bench_scale.py --axes C batch --steps 5  # some axes only
"""

import argparse
import dataclasses
import multiprocessing as mp
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from circuitdecomp.decomp.config import DecompositionConfig, ModuleSpec, OutputLoss
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.decomp.train import fresh_state, train_step


@dataclass(frozen=True)
class Shape:
    d_model: int = 128
    n_layers: int = 2
    C: int = 64
    batch: int = 8
    seq: int = 32
    d_vocab: int = 1024

    @property
    def label(self) -> str:
        return f"d{self.d_model} L{self.n_layers} C{self.C} B{self.batch} S{self.seq} V{self.d_vocab}"


AXES = {
    "d_model": [64, 128, 256, 512, 768],
    "n_layers": [1, 2, 4, 8, 12],
    "C": [16, 32, 64, 128, 256],
    "batch": [2, 4, 8, 16, 32],
    "seq": [8, 16, 32, 64, 128],
}
GPT2_SMALL = Shape(d_model=768, n_layers=12, C=128, batch=4, seq=64, d_vocab=50257)


def build(shape: Shape, device: torch.device):
    """A TL-native transformer of this shape (random weights: cost does not depend on them), frozen."""
    from transformer_lens import TransformerBridge, TransformerBridgeConfig

    cfg = TransformerBridgeConfig(
        d_model=shape.d_model,
        d_head=64,
        n_heads=max(1, shape.d_model // 64),
        n_layers=shape.n_layers,
        n_ctx=max(shape.seq, 8),
        d_vocab=shape.d_vocab,
        d_mlp=4 * shape.d_model,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
        device=str(device),
    )
    return TransformerBridge.boot_native(cfg).eval().requires_grad_(False)


def spd_config(shape: Shape, compile_ci: bool) -> DecompositionConfig:
    return DecompositionConfig(
        modules=[ModuleSpec("blocks.*.attn.[qkvo]", shape.C), ModuleSpec("blocks.*.mlp.*", shape.C)],
        output_loss=OutputLoss.kl,
        layerwise_recon_coeff=0.0,
        subset_recon_coeff=1.0,
        warmup_steps=0,
        restarts=1,
        batch_size=shape.batch,
        compile=compile_ci,
    )


def _rss_peak_mb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024


def _rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024


def _reset_peak(cuda: bool) -> float:
    """Restart the peak-memory counter; returns the memory in use now (MB)."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    open("/proc/self/clear_refs", "w").write("5")  # Linux: VmHWM restarts from the current RSS
    return _rss_mb()


def _peak(cuda: bool) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_peak_mb()


def measure(shape: Shape, steps: int, compile_ci: bool, device: torch.device) -> dict[str, float]:
    """Median SPD step and target training step (ms), and memory (MB) for one shape, in this process."""
    cuda = device.type == "cuda"
    idle = _reset_peak(cuda)
    model = build(shape, device)
    gen = torch.Generator(device=device).manual_seed(0)

    def sample(_: torch.Generator) -> torch.Tensor:
        return torch.randint(0, shape.d_vocab, (shape.batch, shape.seq), generator=gen, device=device)

    def timed(fn) -> float:
        fn()  # warm-up (allocations, lazy init, compilation)
        times = []
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return 1000 * float(np.median(times))

    # SPD first, in a process that has allocated nothing else yet: its peak is its own.
    frozen = _reset_peak(cuda)
    cfg = spd_config(shape, compile_ci)
    cm = ComponentModel(model, cfg).to(device)
    state = fresh_state(cm, cfg, seed=0)
    step = iter(range(10**9))
    spd_ms = timed(lambda cm=cm, state=state: train_step(cm, state, sample, cfg, next(step)))
    spd_mb = _peak(cuda) - frozen
    n_params = sum(p.numel() for p in state.named.values()) / 1e6
    cm.detach_components()
    del cm, state

    # The target's own training step on the same batch, for scale.
    params = [p.requires_grad_(True) for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def target_step() -> None:
        toks = sample(gen)
        loss = F.cross_entropy(model(toks)[:, :-1].flatten(0, 1), toks[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    target_ms = timed(target_step)
    return {"spd_ms": spd_ms, "target_ms": target_ms, "spd_mb": spd_mb, "model_mb": frozen - idle, "spd_params_m": n_params}


def _child(conn, shape: Shape, steps: int, compile_ci: bool, device: str) -> None:
    conn.send(measure(shape, steps, compile_ci, torch.device(device)))
    conn.close()


def run_isolated(shape: Shape, steps: int, compile_ci: bool, device: str) -> dict[str, float]:
    """`measure` in a fresh process: its peak memory is this shape's alone."""
    ctx = mp.get_context("fork" if device == "cpu" else "spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, shape, steps, compile_ci, device))
    proc.start()
    result = parent.recv() if parent.poll(3600) else None
    proc.join()
    if result is None or proc.exitcode != 0:
        raise RuntimeError(f"{shape.label}: the benchmark process failed (exit code {proc.exitcode}; out of memory?)")
    return result


def slope(xs: list[float], ys: list[float]) -> float:
    """Exponent k of the least-squares fit y ~ x^k."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--axes", nargs="*", default=list(AXES), choices=list(AXES), help="axes to vary (default: all)")
    parser.add_argument("--steps", type=int, default=3, help="timed SPD steps per shape (median; one warm-up step first)")
    parser.add_argument("--no-gpt2", action="store_true", help="skip the GPT-2-small row")
    parser.add_argument("--compile", action="store_true", help="torch.compile the CI functions (slow to start on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    import transformer_lens  # noqa: F401  (once, here: forked children inherit it instead of each paying seconds)

    print(f"device {args.device}, {torch.get_num_threads()} threads, {args.steps} timed steps per shape\n")
    print(
        "| axis | shape | SPD step (ms) | target train step (ms) | ratio | frozen model (MB) | SPD memory (MB) | SPD params (M) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    fits = {}
    for axis in args.axes:
        rows = []
        for value in AXES[axis]:
            shape = dataclasses.replace(Shape(), **{axis: value})
            r = run_isolated(shape, args.steps, args.compile, args.device)
            rows.append((value, r))
            print(
                f"| {axis} | {shape.label} | {r['spd_ms']:.1f} | {r['target_ms']:.1f} | "
                f"{r['spd_ms'] / r['target_ms']:.1f}x "
                f"| {r['model_mb']:.0f} | {r['spd_mb']:.0f} | {r['spd_params_m']:.2f} |",
                flush=True,
            )
        xs = [v for v, _ in rows]
        fits[axis] = (slope(xs, [r["spd_ms"] for _, r in rows]), slope(xs, [max(r["spd_mb"], 1.0) for _, r in rows]))
    if not args.no_gpt2:
        r = run_isolated(GPT2_SMALL, args.steps, args.compile, args.device)
        print(
            f"| GPT-2 small | {GPT2_SMALL.label} | {r['spd_ms']:.1f} | {r['target_ms']:.1f} | "
            f"{r['spd_ms'] / r['target_ms']:.1f}x "
            f"| {r['model_mb']:.0f} | {r['spd_mb']:.0f} | {r['spd_params_m']:.2f} |",
            flush=True,
        )
    print("\n| axis | range | SPD step time ~ size^k | SPD memory ~ size^k |")
    print("|---|---|---|---|")
    for axis, (k_time, k_mem) in fits.items():
        print(f"| {axis} | {AXES[axis][0]}–{AXES[axis][-1]} | {k_time:.2f} | {k_mem:.2f} |")


if __name__ == "__main__":
    main()
