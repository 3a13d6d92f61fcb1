"""The planted target: the trained target's architecture with weights set by construction.

Context layout (rows of the world's context basis C): C[0] = modifier channel m (tiny -m, huge +m),
C[1] = fact flag (on for every fact question), C[2+q] = code of question q. Layer 0's attention attends
uniformly (zero queries and keys) and copies the context part of every token, so at the read-out
x = e_entity + e_question + e_modifier. The MLP then has, in this order:

* one look-up neuron per animal i: reads exactly v_i, thresholded halfway between v_i . v_i = 1 and its
  nearest neighbour's cosine (so it outputs exactly 1 on animal i, 0 on every other animal), gated by the
  fact flag, and votes for all of animal i's fact answers;
* two neurons per attribute question (yes, no): ReLU(+-S u_j . x), gated by the question's code, with S set so a
  value at the question's margin gives one vote: the answer's logit is *proportional to the attribute value* on
  every input and at least one vote on every asked one, so the output pins the read direction u_j (the former
  clamp to one vote was saturated on every asked input and left it free: decompositions read tilted directions,
  docs/results_log.md); the size question also reads the modifier channel (a shift of modifier_shift stds);
* one neuron per fact, on when that fact is asked, voting for all of the fact's answers (selects the fact).

The unembedding reads orthonormal answer directions, so each vote adds `planted_logit_scale` to one logit.
"""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitdecomp.target.config import TransformerTargetConfig
from circuitdecomp.target.model import build_model, planted_width
from circuitdecomp.world.geometry import nearest_neighbour_cos, random_rotation
from circuitdecomp.world.vocab import Modifier
from circuitdecomp.world.world import World


def answer_directions(world: World, seed: int) -> Float[Tensor, "n_answers d_model"]:
    """Orthonormal unembedding directions of the answer tokens (no, yes, then fact answers)."""
    gen = torch.Generator().manual_seed(seed + 104729)  # a stream of its own: the world's draws stay unchanged
    return random_rotation(world.d_model, gen)[: world.cfg.n_answers].float()


def planted_model(world: World, cfg: TransformerTargetConfig, seed: int) -> nn.Module:
    """Build the target and set every weight by construction (see module docstring)."""
    model = build_model(world, cfg, seed, constrained=False)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        _embeddings(model, world)
        _copy_context_attention(model, world)
        _mlp(model, world, cfg.planted_logit_scale, answer_directions(world, seed))
        model.unembed.weight[world.vocab.answers_start :] = answer_directions(world, seed)  # nn.Linear: [d_vocab, d_model]
    return model.eval()


def _embeddings(model: nn.Module, world: World) -> None:
    vocab, C = world.vocab, world.geometry.context_basis
    model.W_E[: vocab.n_entities] = world.entity_embeddings()
    for q in range(vocab.n_attribute_questions):
        model.W_E[vocab.attribute_question(q)] = C[2 + q]
    for f in range(vocab.n_facts):
        model.W_E[vocab.fact_question(f)] = C[2 + vocab.n_attribute_questions + f] + C[1]
    for m in Modifier:
        model.W_E[vocab.modifier(m)] = int(m) * C[0]


def _copy_context_attention(model: nn.Module, world: World) -> None:
    """Layer 0 copies the context part of every token (uniform attention over 3 tokens, so times 3)."""
    C = world.geometry.context_basis
    k = C.shape[0]
    attn = model.blocks[0].attn
    attn.get_submodule("v").weight[:k] = C  # value = context coordinates; the entity's own value is 0
    attn.get_submodule("o").weight[:, :k] = 3.0 * C.T


def _mlp(model: nn.Module, world: World, scale: float, answers: Float[Tensor, "n_answers d_model"]) -> None:
    cfg, vocab, C = world.cfg, world.vocab, world.geometry.context_basis
    w_in = model.blocks[0].mlp.get_submodule("in")
    w_out = model.blocks[0].mlp.get_submodule("out")
    W, b, W_out = w_in.weight, w_in.bias, w_out.weight
    n, n_attr_q, K = cfg.n_animals, vocab.n_attribute_questions, cfg.n_fact_answers

    def fact_answer(f: int, k: int) -> int:
        return 2 + f * K + k  # row of `answers`: 0 no, 1 yes, then fact answers

    # look-up: exactly 1 on animal i, <= -1 on every other animal (threshold midway to the nearest neighbour)
    v = world.animal_directions
    nn_cos = nearest_neighbour_cos(v) if n > 1 else torch.zeros(1)
    sharp = 2.0 / (1.0 - nn_cos).clamp_min(1e-3)
    W[:n] = sharp[:, None] * v + 2.0 * C[1]
    b[:n] = -sharp * (1.0 + nn_cos) / 2.0 - 2.0
    for i in range(n):
        W_out[:, i] = scale * answers[[fact_answer(f, int(world.fact_answers[i, f])) for f in range(cfg.n_facts)]].sum(0)
    # attribute questions: ReLU(+-S value), one vote at the margin, linear beyond it
    for q, j in enumerate(cfg.asked_attributes):
        sigma = float(world.attribute_scale[j])
        shift = cfg.modifier_shift * sigma if j == cfg.size_attribute else 0.0
        S = 1.0 / max(cfg.attribute_margin * sigma, 1e-3 * sigma)
        reads = world.attribute_directions[j].clone()
        if j == cfg.size_attribute:
            reads += shift * C[0]  # 'tiny'/'huge' shift the size the reader sees
        gate = S * (1.0 + shift) + 2.0  # |u_j . x| <= 1: shut off-question
        for sign, answer, unit in ((1.0, 1, n + 2 * q), (-1.0, 0, n + 2 * q + 1)):
            W[unit] = sign * S * reads + gate * C[2 + q]
            b[unit] = -gate
            W_out[:, unit] = scale * answers[answer]
    # fact selectors: on (exactly 1) when fact f is asked, voting for all of its answers
    for f in range(cfg.n_facts):
        unit = n + 2 * n_attr_q + f
        W[unit] = C[2 + n_attr_q + f]
        W_out[:, unit] = scale * answers[[fact_answer(f, k) for k in range(K)]].sum(0)
    assert unit + 1 == planted_width(world)
