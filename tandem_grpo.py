"""
tandem_grpo.py: Tandem Reinforcement Learning with verifiable rewards (TRL, arXiv 2606.28166).
("TRL" here is the paper's method, not Hugging Face's `trl` library.)

A trainable *senior* model and a frozen *junior* (by default a copy of the senior's starting
weights) co-write every rollout: a coin picks the author of the first token, and the coin is tossed
again after every word-start token (so the rest of a word may come from the other author) or after
32 tokens without one. A rule-based checker grades the team's final \\boxed{} answer, rewards
become group-relative advantages, and the GRPO clipped loss trains the senior on the tokens *it*
wrote; the junior's tokens are context only. Every rollout must survive the junior's interruptions,
so the senior is pushed to reason in a way the junior can continue. --schedule solo: plain GRPO.

Run it:
    python tandem_grpo.py --demo             # tiny bundled model, 2 CPU cores, a few minutes
    python tandem_grpo.py --out runs/trl \\
        --data hf://datasets/agentica-org/DeepScaleR-Preview-Dataset/deepscaler.json
                                             # the paper's setting: Qwen3-4B-Instruct-2507, one GPU
    python tandem_grpo.py --memory-report --model configs/qwen3-4b   # its GPU memory, from config

What it simplifies, and why:
  - Rollouts come from a plain PyTorch decode loop over Hugging Face models (one KV cache each),
    not from a patched vLLM: slower, but every step of co-generation is visible in ~100 lines.
  - One device a process. The senior keeps float32 master weights (bf16 cannot absorb updates of
    1e-6) and runs its matmuls in bf16 on CUDA; the junior is bf16. No sequence packing.
  - Validation is one solo sample per held-out problem every --val-every steps; eval.py does the
    rest (handoff robustness, legibility, drift).

Read it top to bottom: hyperparameters, data, reward, co-generation, advantages, the loss, one
training step, the loop. What is not the method sits in appendices after the loop, in this order:
a run's plumbing, GPU memory, the static-shape decode (--compile), more than one GPU, data files,
checkpoints, the answer checker. The numbers follow the paper and the authors' code (verl's GRPO).
"""
import argparse, gc, itertools, json, math, os, random, re, shlex, shutil, sys, time
from contextlib import nullcontext, suppress
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import mpmath  # ships with sympy (its numeric backend): the answer checker's bounded evaluator
import sympy as sp
import torch
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache, StaticCache

class UserError(Exception):
    """Something the user can fix (a flag, a path, a data row): one line, never a traceback."""

# --------------------------------------------------------------------------------------------------
# Hyperparameters: the method's flags, with the paper's values as defaults

DEMO_DIR = Path(__file__).resolve().parent / "demo"
# --demo swaps in these defaults (flags given on the command line still win): a tiny model, minutes.
DEMO = dict(model=str(DEMO_DIR / "model"), data=str(DEMO_DIR / "train.jsonl"), out="runs/demo",
            steps=40, prompts_per_step=8, mini_batch_prompts=4, group_size=8, micro_batch=32,
            gen_batch=64, lr=2e-5, max_new_tokens=96, save_every=0, temperature=1.0, val_size=100,
            val_every=10, log_every=5, show_every=40, threads=1)

def get_args(argv=None):
    """The command line -> args. The method's flags are here; how a run is carried out (hardware,
    memory, logs, checkpoints, cluster) is added by run_flags (appendix)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument_group("method: the team, who writes each token").add_argument
    a("--model", default="Qwen/Qwen3-4B-Instruct-2507", help="senior: hub id or local folder")
    a("--junior", default=None, help="frozen junior (same tokenizer); default: a copy of --model")
    a("--p-senior", type=float, default=0.5, help="probability the coin picks the senior")
    a("--schedule", default="word", choices=["word", "token", "step", "solo"],
      help="word: redraw after a word-start token (the paper); token: every token; "
           "step: alternate at \\n\\n; solo: vanilla GRPO")
    a("--max-gap", type=int, default=32, help="K: redraw after this many tokens with no word start")
    a = p.add_argument_group("method: rollouts and reward").add_argument
    a("--group-size", type=int, default=8, help="G: rollouts per prompt")
    a("--temperature", type=float, default=0.6, help="rollout temperature (top_p 1, top_k off)")
    a("--max-prompt-tokens", type=int, default=1024, help="longer prompts are dropped")
    a("--max-new-tokens", type=int, default=3000,
      help="response budget: a response cut there has no EOS")
    a("--truncated-reward", default="grade", choices=["grade", "zero"],
      help="grade: a cut response is graded like any other (verl); "
           "zero: it scores 0 (an overlong penalty)")
    a("--length-penalty", type=float, default=0.0,
      help="reward x (1 - this x response tokens / --max-new-tokens): scales the reward from the "
           "first token (not DAPO's additive penalty near the limit; 0: off, the paper)")
    a = p.add_argument_group("method: the GRPO update (verl's, as the authors ran it)").add_argument
    a("--prompts-per-step", type=int, default=16, help="prompts per step (16 x 8 = 128 rollouts)")
    a("--mini-batch-prompts", type=int, default=8, help="prompts per AdamW update (two a step)")
    a("--lr", type=float, default=1e-6, help="AdamW learning rate (constant)")
    a("--weight-decay", type=float, default=0.01, help="AdamW weight decay (verl's default)")
    a("--clip-low", type=float, default=0.2, help="ratio clip below: 1 - clip_low")
    a("--clip-high", type=float, default=0.2, help="ratio clip above: 1 + clip_high")
    a("--clip-c", type=float, default=3.0,
      help="dual clip: a token with A < 0 loses at most -A * clip_c (0: off)")
    a("--grad-clip", type=float, default=1.0, help="gradient-norm clip")
    a("--kl-coef", type=float, default=0.0,
      help="k3 KL toward the junior (the authors' ablation used 0.001)")
    a("--junior-token-weight", type=float, default=0.0,
      help="weight of junior-written tokens in the loss (paper: 0)")
    a("--token-mean", default="all", choices=["all", "senior"],
      help="the loss's denominator: all response tokens of the mini-batch, junior-written included "
           "(the authors' verl), or only the counted (weighted) ones")
    a = p.add_argument_group("method: data and training length").add_argument
    a("--data", default=None,
      help="problems: a .jsonl, .json or .parquet file, or hf://datasets/OWNER/NAME/FILE")
    a("--steps", type=int, default=200, help="training steps")
    a("--val-size", type=int, default=None, help="problems held out of training to validate on, "
      "drawn as the authors do (None: min(1000, a tenth of the rows))")
    a("--val-every", type=int, default=20,
      help="solo accuracy on them every N steps and on the last step (0: never)")
    a("--seed", type=int, default=0, help="seeds data order and sampling")
    run_flags(p)  # how the run is carried out: --out, --resume, --demo, --device, ... (appendix)
    argv = sys.argv[1:] if argv is None else argv
    if "--demo" in argv:
        p.set_defaults(**DEMO)
    args = p.parse_args(argv)
    check_args(p, args)  # every value, before anything loads: a bad one is one line (appendix)
    return args

# --------------------------------------------------------------------------------------------------
# Data: rows with a problem and its accepted answer(s), checked before any model loads

PROMPT_SUFFIX = ("Solve the following math problem step by step. Put your final answer inside "
                 "\\boxed{}, like \\boxed{42} or \\boxed{\\frac{1}{2}}.")  # the authors' words
# load_problems(path) reads them (appendix: data files): a .jsonl, .json or .parquet file, local or
# hf://, -> [{"problem": str, "answer": str or a list of accepted ones, "row": its position}].

def prompt_ids(tokenizer, problem, as_text=False):
    """One user message (the problem, one space, the authors' suffix) through the chat template, no
    <think> block -> token ids (as_text: the templated string)."""
    # a problem that ends with the suffix already (the authors' verl rows) is used verbatim
    verbatim = problem.rstrip().endswith(PROMPT_SUFFIX)
    content = problem if verbatim else f"{problem} {PROMPT_SUFFIX}"
    msg = [{"role": "user", "content": content}]
    text = tokenizer.apply_chat_template(msg, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)
    return text if as_text else tokenizer(text, add_special_tokens=False).input_ids

# --------------------------------------------------------------------------------------------------
# Reward: 1 if the final \boxed{} answer equals the gold answer, else 0 (no format reward)
# It is the only signal RL gets. Its two helpers live in the last appendix: final_answer() finds the
# last box, and answers_equal() decides "means the same" for competition answers (\frac12 vs 0.5,
# x = 3 vs 3, units, intervals, ...) without ever running model text through eval().

def reward(completion, gold):
    """1.0 if the completion's final boxed answer equals the gold (a string, or a list of accepted
    answers: any one), else 0.0. A gold that is a worked solution gives its final boxed answer."""
    try:
        pred = final_answer(completion)
        golds = [gold] if isinstance(gold, str) else list(gold)
        return float(pred is not None
                     and any(answers_equal(pred, final_answer(g) or g) for g in golds))
    except Exception:
        return 0.0

# --------------------------------------------------------------------------------------------------
# Co-generation: two models, two KV caches, one token stream
# Shapes: B rows of a batch (here a generation batch), b of them still running, P prompt and T
# response positions, V the tokenizer's ids, H the hidden size.

def eos_ids(tok, model=None):
    """Stop ids: the tokenizer's eos and every generation_config.eos_token_id (Qwen3: <|im_end|>,
    <|endoftext|>)."""
    cfg = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return ({tok.eos_token_id} | set(cfg if isinstance(cfg, (list, tuple)) else [cfg])) - {None}

def word_start_mask(tokenizer):
    """BoolTensor[V]: True for ids whose surface text starts with a space."""
    # byte-level BPE writes that space as 'Ġ' (U+0120), SentencePiece as '▁'; decided on the
    # vocabulary, once, never by decoding text. Special tokens are not words.
    mask = torch.zeros(len(tokenizer), dtype=torch.bool)
    for piece, i in tokenizer.get_vocab().items():
        mask[i] = piece.startswith(("Ġ", "▁"))
    mask[tokenizer.all_special_ids] = False
    return mask

def step_end_mask(tokenizer):
    """BoolTensor[V, 3], for each id's text: (contains '\\n\\n', starts with '\\n', ends with
    '\\n')."""
    # a reasoning step ends at a blank line: a token that holds one, or a token starting with '\n'
    # right after one ending with '\n' (tokenizers that write a blank line as two '\n' tokens)
    texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return torch.tensor([["\n\n" in s, s.startswith("\n"), s.endswith("\n")] for s in texts])

def junior_writes(schedule, p_senior):
    """Does the junior write any token? Always under step; under word/token unless p_senior is 1."""
    return schedule == "step" or (schedule in ("word", "token") and p_senior < 1)

def sample(logits, temperature, top_k=0, top_p=1.0, u=None):
    """logits [b, V] -> ids [b]; temperature 0 is greedy. u [b, 1]: uniforms (None: drawn here)."""
    # inverse-CDF sampling (cumsum + searchsorted) costs ~2 ms over Qwen's 151,936 ids on a CPU,
    # where torch.multinomial costs ~32 ms
    if temperature == 0:
        return logits.argmax(-1)
    logits, ids = logits.float() / temperature, None
    if top_k:
        logits, ids = logits.topk(top_k, dim=-1)                      # [b, k], sorted high to low
    probs = logits.softmax(-1)
    if top_p < 1:
        if ids is None:
            probs, ids = probs.sort(-1, descending=True)
        probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p, 0)  # smallest prefix >= top_p
    cdf = probs.cumsum(-1)                                             # [b, V]
    u = torch.rand(cdf.shape[0], 1, device=cdf.device) if u is None else u
    u = u * cdf[:, -1:]                                                # in [0, mass)
    pick = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1).squeeze(1)
    return pick if ids is None else ids.gather(1, pick[:, None]).squeeze(1)

def left_pad(seqs, pad_id, device):
    """list of id lists -> ids [B, P] and attention mask [B, P], padded on the left."""
    L = max(map(len, seqs))
    ids = torch.tensor([[pad_id] * (L - len(s)) + list(s) for s in seqs], device=device)
    attn = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, attn

def last_hidden(model, ids, attn, pos, cache):
    """One cached forward of the transformer body -> the last position's hidden state [b, H]."""
    # the output layer is applied only where needed (cache=: transformers 4's past_key_values=)
    out = model.get_decoder()(input_ids=ids, attention_mask=attn, position_ids=pos, cache=cache,
                              use_cache=True)
    return out.last_hidden_state[:, -1]

def next_author(schedule, tok, senior_turn, gap, turns, after_newline, coin, word_start, step_end,
                max_gap):
    """The schedule's rule, after each row wrote `tok` [b] -> its state, updated. A row's state,
    each [b]: senior_turn (who writes next), gap (word: tokens since the last redraw), turns and
    after_newline (step: turns so far; the last token ended with '\\n'). coin() is one draw a
    row, True (the senior) with probability p_senior."""
    if schedule == "word":  # redraw *after* a word-start token, or after max_gap tokens without one
        gap = gap + 1
        redraw = word_start[tok] | (gap >= max_gap)
        senior_turn, gap = torch.where(redraw, coin(), senior_turn), torch.where(redraw, 0, gap)
    elif schedule == "token":
        senior_turn = coin()
    elif schedule == "step":  # swap at a blank line: a token holding one, or '\n' then '\n...'
        swap = step_end[tok, 0] | (step_end[tok, 1] & after_newline)
        after_newline = step_end[tok, 2] & ~swap
        senior_turn, turns = senior_turn ^ swap, turns + swap.long()
    return senior_turn, gap, turns, after_newline

# tandem_generate, in ten lines of pseudocode (the rest is bookkeeping for a batch of rows):
#   both models read the prompt                        -> one KV cache each
#   author = coin(p_senior) for each row               (step schedule: the senior starts)
#   repeat until every row has ended or the budget is spent:
#       logits = the author's output layer on its own last hidden state
#       token  = sample(logits)                        -> remember who wrote it
#       word:  after a word-start token (or K tokens without one) author = coin(p_senior)
#       token: author = coin(p_senior);  step: swap authors after a blank line
#       a row that wrote EOS leaves the batch and both caches
#       both models read the token                     -> both caches grow by one
@torch.no_grad()
def tandem_generate(senior, junior, prompts, *, eos_ids, pad_id, n_vocab, word_start=None,
                    step_end=None, schedule="word", p_senior=0.5, max_gap=32, max_new_tokens=3000,
                    max_turns=0, temperature=0.6, top_k=0, top_p=1.0, u=None):
    """Co-write one response per prompt (lists of token ids) -> dict of tokens [B, T] (pad after
    the end), senior [B, T] (True where the senior wrote it), mask [B, T] (up to and including
    EOS), truncated [B] (no EOS). u [B, max_new_tokens]: the sampler's uniforms (None: drawn)."""
    # solo, or p_senior 1: the junior never runs. max_turns > 0 (eval.py, step schedule) stops
    # after that many turns; one turn needs no junior.
    dev, B = next(senior.parameters()).device, len(prompts)
    one_turn = (schedule, max_turns) == ("step", 1)
    if not junior_writes(schedule, p_senior) or junior is None and not one_turn:
        junior, schedule = None, "solo"
    models = [senior] if junior is None else [senior, junior]
    eos = torch.tensor(sorted(eos_ids), device=dev)
    word_start, step_end = [x if x is None else x.to(dev) for x in (word_start, step_end)]

    ids, attn = left_pad(prompts, pad_id, dev)                                # [B, P]
    pos = (attn.cumsum(1) - 1).clamp(min=0)                                    # left padding
    caches = [DynamicCache(config=m.config) for m in models]
    hid = [last_hidden(m, ids, attn, pos, c) for m, c in zip(models, caches)]  # each [B, H]
    pos = pos[:, -1:] + 1                                                      # [b, 1] next

    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    by_senior = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=dev)
    length = torch.full((B,), max_new_tokens, device=dev)
    truncated = torch.ones(B, dtype=torch.bool, device=dev)
    row = torch.arange(B, device=dev)  # original index of each still-running row
    # B draws a coin; row i keeps the i-th, whichever rows ended
    coin = lambda: torch.rand(B, device=dev)[row] < p_senior
    senior_turn = torch.ones(B, dtype=torch.bool, device=dev)  # step schedule: the senior starts
    if schedule in ("word", "token"):
        senior_turn = coin()
    gap = torch.zeros(B, dtype=torch.long, device=dev)       # tokens since the last redraw (word)
    turns = torch.ones(B, dtype=torch.long, device=dev)      # turns so far (step)
    after_newline = torch.zeros(B, dtype=torch.bool, device=dev)  # last token ended '\n' (step)
    for t in range(max_new_tokens):
        # 1. the author's next-token distribution: only the author's output layer runs, and ids
        #    beyond the tokenizer are cut
        logits = torch.empty(len(row), n_vocab, device=dev)
        for m, h, who in zip(models, hid, (senior_turn, ~senior_turn)):
            if who.any():
                logits[who] = m.get_output_embeddings()(h[who])[:, :n_vocab].float()
        ut = None
        if temperature:
            ut = (torch.rand(B, 1, device=dev) if u is None else u[:, t, None])[row]  # [b, 1]
        tok = sample(logits, temperature, top_k, top_p, ut)                       # [b]
        tokens[row, t] = tok
        by_senior[row, t] = senior_turn
        # 2. who writes the next token
        senior_turn, gap, turns, after_newline = next_author(
            schedule, tok, senior_turn, gap, turns, after_newline, coin, word_start, step_end,
            max_gap)
        # 3. finished rows leave the batch and both caches
        eos_hit = torch.isin(tok, eos)
        done = eos_hit | ((turns > max_turns) if max_turns else False)
        truncated[row[eos_hit]] = False
        length[row[done]] = t + 1
        if t == max_new_tokens - 1 or done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            for c in caches:
                c.batch_select_indices(keep)
            row, tok, attn, pos = row[keep], tok[keep], attn[keep], pos[keep]
            senior_turn, gap = senior_turn[keep], gap[keep]
            turns, after_newline = turns[keep], after_newline[keep]
        # 4. both models read the token
        attn = torch.cat([attn, attn.new_ones(len(row), 1)], 1)
        hid = [last_hidden(m, tok[:, None], attn, pos, c) for m, c in zip(models, caches)]
        pos = pos + 1
    mask = torch.arange(max_new_tokens, device=dev)[None] < length[:, None]
    T = int(length.max())
    mask = mask[:, :T]
    return dict(tokens=tokens[:, :T].masked_fill(~mask, pad_id), senior=by_senior[:, :T] & mask,
                mask=mask, truncated=truncated)

# --------------------------------------------------------------------------------------------------
# Advantages: group-relative, one number per rollout

def group_advantages(rewards, group_size, eps=1e-6):
    """rewards [prompts * G] (flat, a group's G rollouts adjacent) -> A [prompts * G]:
        A_i = (r_i - mean) / (std + eps) within the group, std with Bessel's correction (verl).
    Equal rewards -> A = 0: no signal."""
    r = rewards.view(-1, group_size)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).view(-1)

# --------------------------------------------------------------------------------------------------
# Log-probs and the GRPO loss
# From here on a batch (B rows) is flattened: N = the counted response tokens of all its rows,
# [B, T] -> [N].

LOGITS_CHUNK = 1024  # positions with logits at once: 1024 x 151,936 floats = 0.6 GB, not B x T x V

def chunk_logprobs(model, hidden, targets, n_vocab, temperature):
    """hidden [c, H], targets [c] -> log p(target) [c], float32, of logits / temperature."""
    logits = model.get_output_embeddings()(hidden)[:, :n_vocab].float() / temperature  # [c, V]
    return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)

def token_logprobs(model, hidden, targets, n_vocab, temperature):
    """hidden [N, H] (the state before each target), targets [N] -> log p(target) [N], float32."""
    # LOGITS_CHUNK rows at a time; with gradients, the logits are rebuilt in backward (checkpoint)
    # instead of stored
    out = []
    for h, y in zip(hidden.split(LOGITS_CHUNK), targets.split(LOGITS_CHUNK)):
        if torch.is_grad_enabled():
            out.append(checkpoint(chunk_logprobs, model, h, y, n_vocab, temperature,
                                  use_reentrant=False))
        else:
            out.append(chunk_logprobs(model, h, y, n_vocab, temperature))
    return torch.cat(out)

def response_hidden(model, ids, attn, n_prompt, select):
    """Final hidden states that predict the response tokens at the positions `select`, teacher-
    forced. ids, attn [B, P+T] (prompt left-padded to P, response right-padded to T); select [B, T]
    bool -> [N, H]."""
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    h = model.get_decoder()(input_ids=ids, attention_mask=attn, position_ids=pos,
                            use_cache=False).last_hidden_state
    return h[:, n_prompt - 1:-1][select]                 # the state at t-1 predicts token t

def response_logprobs(model, ids, attn, n_prompt, select, n_vocab, temperature):
    """log p(token) [N] float32 of the response tokens at `select` (shapes as response_hidden)."""
    h = response_hidden(model, ids, attn, n_prompt, select)
    return token_logprobs(model, h, ids[:, n_prompt:][select], n_vocab, temperature)

# PPO's pieces in plain words. The "old policy" is the senior's weights when the step's rollouts
# were written, and old_logp its log-prob of each token. A step makes two updates (one a
# mini-batch): the first runs on those weights, so ratio = exp(logp - old_logp) = 1; only the
# second, on moved weights, learns from tokens another policy sampled (off-policy): the ratio
# corrects for that, and the clip stops pushing a token whose ratio already left
# [1 - clip_low, 1 + clip_high] the way its advantage pushes. old_logp is recomputed teacher-forced,
# not kept from decoding (which ran only the author's output layer); log-probs use the rollout
# temperature, which drew the tokens.
def grpo_loss(logp, old_logp, adv, n_tokens, clip_low=0.2, clip_high=0.2, ref_logp=None,
              kl_coef=0.0, clip_c=3.0, weight=None):
    """Clipped surrogate over counted tokens, all [N] (weight None: all 1); adv: each token's
    rollout advantage. Returns sum_t weight_t loss_t / n_tokens, where
        ratio  = exp(clamp(logp - old_logp, -20, 20))
        loss_t = max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high))
        dual clip (verl), where A < 0: loss_t = min(loss_t, -A clip_c)
        loss_t += kl_coef * k3,  k3 = exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10]
    n_tokens is counted over the whole mini-batch, so its micro-batches add up to its mean."""
    # verl's clamp: e^20 is finite, so A = 0 never gives 0 x inf
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high))
    if clip_c:  # a huge ratio cannot blow up the loss of a token with A < 0
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * clip_c), loss)
    if kl_coef:  # k3 toward the junior (the frozen starting weights when self-paired)
        d = (ref_logp - logp).clamp(-20, 20)
        loss = loss + kl_coef * (torch.exp(d) - d - 1).clamp(-10, 10)
    return (loss if weight is None else loss * weight).sum() / n_tokens

def clip_active(logp, old_logp, adv, clip_low=0.2, clip_high=0.2):
    """[N] bool, the tokens verl's pg_clipfrac counts: where the clipped term is the larger loss."""
    # ratio above 1 + clip_high with A > 0, below 1 - clip_low with A < 0; a token capped by the
    # dual clip is not one of them
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    return -adv * ratio.clamp(1 - clip_low, 1 + clip_high) > -adv * ratio

def loss_weights(by_senior, attn, w_junior):
    """by_senior, attn [B, T] -> each response token's loss weight, float [B, T]: 1 senior,
    w_junior junior, 0 pad."""
    return torch.where(by_senior, 1.0, w_junior) * attn

# --------------------------------------------------------------------------------------------------
# One training step: rollouts -> rewards -> advantages -> old log-probs -> two clipped updates

def autocast(device):
    """bf16 matmuls on CUDA over float32 master weights; float32 on CPU."""
    # off once FSDP2 casts the senior itself (FSDP_CASTS, appendix)
    cuda = device.type == "cuda" and not FSDP_CASTS
    return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

def right_pad(seqs, fill, T, device):
    """list of lists -> [B, T], padded on the right with `fill`."""
    return torch.tensor([list(s) + [fill] * (T - len(s)) for s in seqs], device=device)

def pack(rollouts, pad_id, device):
    """Rollouts -> ids, attn [B, P+T] (prompts left-padded to P, responses right-padded to T), P,
    senior [B, T]."""
    p_ids, p_attn = left_pad([r["prompt"] for r in rollouts], pad_id, device)
    T = max(len(r["response"]) for r in rollouts)
    r_ids = right_pad([r["response"] for r in rollouts], pad_id, T, device)
    r_attn = right_pad([[1] * len(r["response"]) for r in rollouts], 0, T, device)
    senior = right_pad([r["senior"] for r in rollouts], False, T, device)
    return torch.cat([p_ids, r_ids], 1), torch.cat([p_attn, r_attn], 1), p_ids.shape[1], senior

def rollout(senior, junior, tok, problems, args, word_start, step_end):
    """G co-written rollouts for each problem, generated --gen-batch at a time, with rewards."""
    dev, out, jobs = next(senior.parameters()).device, [], []
    senior.eval()  # no dropout, and the KV cache on (gradient checkpointing turns it off in train)
    for p in problems:
        ids = prompt_ids(tok, p["problem"])  # templated once, repeated G times
        jobs += [(p, ids)] * args.group_size
    generate = decoder(args)  # tandem_generate (decoder: an appendix)
    for i in range(0, len(jobs), args.gen_batch):
        chunk = jobs[i:i + args.gen_batch]
        with autocast(dev):
            gen = generate(senior, junior, [ids for _, ids in chunk], eos_ids=eos_ids(tok, senior),
                           pad_id=tok.pad_token_id, n_vocab=len(tok), word_start=word_start,
                           step_end=step_end, schedule=args.schedule, p_senior=args.p_senior,
                           max_gap=args.max_gap, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature)
        for j, (p, ids) in enumerate(chunk):
            n = int(gen["mask"][j].sum())
            resp, by_senior = gen["tokens"][j, :n].tolist(), gen["senior"][j, :n].tolist()
            truncated = bool(gen["truncated"][j])
            graded = not (truncated and args.truncated_reward == "zero")
            r = reward(tok.decode(resp, skip_special_tokens=True), p["answer"]) if graded else 0.0
            r *= 1 - args.length_penalty * n / args.max_new_tokens  # the team's length: all tokens
            out.append(dict(prompt=ids, response=resp, senior=by_senior, reward=r,
                            truncated=truncated))
    return out

def loss_batch(rollouts, pad_id, device, w_junior):
    """Rollouts -> ids, attn [b, P+T], P, weight [b, T] (senior 1, junior w_junior, pad 0)."""
    ids, attn, P, by_senior = pack(rollouts, pad_id, device)
    return ids, attn, P, loss_weights(by_senior, attn[:, P:], w_junior)

def token_count(rollouts, w_junior):
    """The response tokens of these rollouts, a junior-written one counting w_junior."""
    return sum(1.0 if s else w_junior for r in rollouts for s in r["senior"])

@torch.no_grad()
def old_logprobs(senior, junior, tok, rollouts, args):
    """Teacher-forced log-probs of each rollout's counted tokens before any update: the senior's
    (old_logp) and, for the KL term, the junior's -> two lists of [n_i] (the second empty
    without --kl-coef)."""
    dev, old, ref = next(senior.parameters()).device, [], []
    senior.eval()
    for i in range(0, len(rollouts), args.micro_batch):
        batch = rollouts[i:i + args.micro_batch]
        ids, attn, P, weight = loss_batch(batch, tok.pad_token_id, dev, args.junior_token_weight)
        counted = weight > 0                                         # [b, T]
        per_row = counted.sum(1).tolist()                            # to split [N] back into rows
        with autocast(dev):
            lp = response_logprobs(senior, ids, attn, P, counted, len(tok), args.temperature)
            old += lp.split(per_row)
            if args.kl_coef:
                lp = response_logprobs(junior, ids, attn, P, counted, len(tok), args.temperature)
                ref += lp.split(per_row)
    return old, ref

def ppo_update(senior, opt, tok, rollouts, adv, old, ref, args):
    """One AdamW update on a mini-batch: each micro-batch's share of the loss goes backward, then
    one step on the clipped gradient -> dict(loss, clip_frac, grad_norm, finite)."""
    dev, w_junior = next(senior.parameters()).device, args.junior_token_weight
    w_all = 1.0 if args.token_mean == "all" else w_junior
    # token-mean over the whole mini-batch: its denominators are counted before any backward
    n_tokens = max(1e-8, all_sum(token_count(rollouts, w_all)))     # ranks: summed over all ranks
    n_counted = max(1e-8, all_sum(token_count(rollouts, w_junior)))  # ranks: likewise
    loss_sum = clip_sum = 0.0
    for i in range(0, len(rollouts), args.micro_batch):
        rows = slice(i, i + args.micro_batch)
        ids, attn, P, weight = loss_batch(rollouts[rows], tok.pad_token_id, dev, w_junior)
        counted = weight > 0                                                     # [b, T]
        old_lp = torch.cat(old[rows]).to(dev)                                    # [N]
        a = torch.cat([A.expand(len(lp)) for A, lp in zip(adv[rows], old[rows])]).to(dev)  # [N]
        ref_lp = torch.cat(ref[rows]).to(dev) if args.kl_coef else None          # [N]
        with autocast(dev):
            lp = response_logprobs(senior, ids, attn, P, counted, len(tok), args.temperature)
        loss = grpo_loss(lp, old_lp, a, n_tokens, args.clip_low, args.clip_high, ref_lp,
                         args.kl_coef, args.clip_c, weight[counted])
        loss.backward()  # the micro-batches' gradients add up to the mini-batch's
        loss_sum += loss.item()
        active = clip_active(lp.detach(), old_lp, a, args.clip_low, args.clip_high)  # [N]
        clip_sum += (active * weight[counted]).sum().item() / n_counted
    sum_grads(senior)  # ranks without FSDP2: add the ranks' gradients up (appendix)
    norm = torch.nn.utils.clip_grad_norm_(senior.parameters(), args.grad_clip)
    finite = bool(torch.isfinite(norm))
    if finite:  # a NaN/inf gradient never reaches the weights: the update is skipped (verl)
        opt.step()
    opt.zero_grad(set_to_none=True)
    return dict(loss=loss_sum, clip_frac=clip_sum, grad_norm=norm.item(), finite=finite)

def train_step(senior, junior, tok, opt, rollouts, args, skipped_in_a_row=0):
    """Advantages, old log-probs, then one PPO epoch: an update a mini-batch -> loss metrics.
    Junior-written tokens count with --junior-token-weight (0: context only)."""
    adv = group_advantages(torch.tensor([r["reward"] for r in rollouts]), args.group_size)  # [B]
    old, ref = old_logprobs(senior, junior, tok, rollouts, args)
    senior.train()  # gradient checkpointing is active in train mode only
    update_mode([senior, junior], True)  # FSDP2: gather a layer for its forward/backward only
    mb = args.mini_batch_prompts // world() * args.group_size  # ranks: this rank's share of one
    updates = []
    for i in range(0, len(rollouts), mb):
        part = slice(i, i + mb)
        up = ppo_update(senior, opt, tok, rollouts[part], adv[part], old[part], ref[part], args)
        updates.append(up)
        skipped_in_a_row = 0 if up["finite"] else skipped_in_a_row + 1
        if skipped_in_a_row >= 3:
            raise UserError("3 updates in a row had a non-finite gradient norm; stopping (the "
                            "weights are untouched since the last good update): lower --lr or "
                            "check the data")
    senior.eval()
    update_mode([senior, junior], False)  # FSDP2: gather the whole senior once for rollouts
    norms = [up["grad_norm"] for up in updates if up["finite"]]
    n = len(updates)
    return dict(loss=all_sum(sum(up["loss"] for up in updates)) / n,  # ranks: add the shares
                clip_frac=all_sum(sum(up["clip_frac"] for up in updates)) / n,  # ranks: likewise
                grad_norm=sum(norms) / max(1, len(norms)), skipped=n - len(norms),
                skipped_in_a_row=skipped_in_a_row)

def rollout_metrics(rollouts, group_size):
    """What to watch (GRPO's loss hovers near 0 by construction: watch the reward)."""
    r = torch.tensor([x["reward"] for x in rollouts])
    n_resp = sum(len(x["response"]) for x in rollouts)
    switches = [sum(a != b for a, b in zip(x["senior"], x["senior"][1:])) for x in rollouts]
    return dict(reward=r.mean().item(),
                zero_var_groups=(r.view(-1, group_size).std(1) == 0).float().mean().item(),
                truncated=sum(x["truncated"] for x in rollouts) / len(rollouts),
                senior_share=sum(sum(x["senior"]) for x in rollouts) / max(1, n_resp),
                switches=sum(switches) / len(rollouts), resp_len=n_resp / len(rollouts))

# --------------------------------------------------------------------------------------------------
# Training loop

@torch.no_grad()
def solo_accuracy(model, tok, problems, batch=32, max_new_tokens=3000, temperature=0.7, top_p=0.8,
                  top_k=20, seed=0):
    """Mean reward of one solo sample per problem, `batch` at a time (by default the paper's
    evaluation sampling)."""
    # problem i samples with row i of one seeded table of uniforms: the same draws whatever the
    # batch, and the training stream is untouched. main calls it through split_accuracy
    # (appendix), which deals the problems to the ranks.
    dev, total = next(model.parameters()).device, 0.0
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(len(problems), max_new_tokens, generator=g)  # 12 MB at 1000 x 3000
    for i in range(0, len(problems), batch):
        chunk = problems[i:i + batch]
        with autocast(dev):
            gen = tandem_generate(model, None, [prompt_ids(tok, p["problem"]) for p in chunk],
                                  eos_ids=eos_ids(tok, model), pad_id=tok.pad_token_id,
                                  n_vocab=len(tok), schedule="solo", max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_p=top_p, top_k=top_k,
                                  u=u[i:i + batch].to(dev))
        for j, p in enumerate(chunk):
            text = tok.decode(gen["tokens"][j][gen["mask"][j]], skip_special_tokens=True)
            total += reward(text, p["answer"])
    return total / len(problems)

def problems_for_step(n, step, k, seed):
    """The k problem indices of a step: a fresh shuffle every epoch, a pure function of (seed,
    step), so a resumed run draws the same."""
    out, perms = [], {}
    for j in range(step * k, (step + 1) * k):
        epoch, i = divmod(j, n)
        if epoch not in perms:  # (at most two a step) seed * 100003 + epoch: unique while < 100003
            g = torch.Generator().manual_seed(seed * 100003 + epoch)
            perms[epoch] = torch.randperm(n, generator=g)
        out.append(perms[epoch][i].item())
    return out

def main(args):
    """Train the senior: set up the run, then each step problems -> rollout -> train_step ->
    validate -> end the step. -> the trained senior and its tokenizer."""
    senior, junior, tok, opt, run = set_up(args)  # folder, ranks, data, models, resume (appendix)
    word_start = word_start_mask(tok)                                  # where the coin is redrawn
    step_end = step_end_mask(tok) if args.schedule == "step" else None  # blank lines (step)
    step = run.start
    try:
        for step in run.steps:  # a progress bar over the steps left
            t0 = time.time()
            batch = [run.train[i] for i in problems_for_step(len(run.train), step,
                                                             args.prompts_per_step, args.seed)]
            batch = batch[rank()::world()]  # ranks: each takes whole groups, a share of each update
            park(opt, junior, "rollout", args)  # GPU: AdamW waits on the CPU meanwhile (appendix)
            rollouts = rollout(senior, junior, tok, batch, args, word_start, step_end)
            t_gen = time.time() - t0
            park(opt, junior, "update", args)  # GPU: the junior waits on the CPU meanwhile
            everyone = all_rollouts(rollouts)  # ranks: metrics over every rank's rollouts
            m = dict(step=step + 1, **rollout_metrics(everyone, args.group_size))
            m.update(train_step(senior, junior, tok, opt, rollouts, args, run.skipped_in_a_row))
            run.skipped_in_a_row = m.pop("skipped_in_a_row")
            if run.val and args.val_every and ((step + 1) % args.val_every == 0
                                               or step + 1 == args.steps):
                park(opt, junior, "rollout", args)  # decoding again
                m["val_solo"] = split_accuracy(  # the authors' validation sampling
                    senior, tok, run.val, temperature=0.6, top_p=0.95, top_k=0,
                    batch=args.gen_batch, max_new_tokens=args.max_new_tokens, seed=args.seed)
            m.update(gen_s=t_gen, step_s=time.time() - t0)
            end_step(run, m, senior, tok, opt, batch[0], rollouts[0], args)  # log, save (appendix)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGUSR1 (saved): say how to resume (appendix)
        stop_hint(run, step + 1)
    summary(run, args)  # where the senior is, what it trained on (appendix)
    return senior, tok

# --------------------------------------------------------------------------------------------------
# Appendix: a run's plumbing (set-up, the end of a step, the command line; not the method)
# main() names these: set_up before the first step, end_step after each, stop_hint on Ctrl-C and
# summary at the end. demo() wraps main for --demo, cli() is the command line.

def set_up(args):
    """Everything before the first step, ordered so that bad input is refused before anything is
    written or loaded -> senior, junior, tok, opt and run (the loop's state)."""
    if args.threads:  # a tiny model runs 3-4x faster on one thread than on two busy ones
        torch.set_num_threads(args.threads)
    start_ranks(args)  # under torchrun: one process a GPU (appendix: more than one GPU)
    if not args.data:
        raise UserError("--data is required (or --demo)")
    out = check_out(args)  # writable; a used one only with --resume and its settings (args.json)
    problems = load_problems(args.data)  # every row checked before a model loads
    dev = torch.device(args.device)
    if dev.type == "cuda":  # cuDNN's attention spends ~0.3 ms of CPU a call: decode 65 vs 69-88
        torch.backends.cuda.enable_cudnn_sdp(False)  # ms a step (bench.py)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tok = load_tokenizer(args.model)
    same_vocabulary(tok, args.model, args.junior)  # token ids pass unchanged between the models
    start_run(out, args)  # one writer (a lock), room for a checkpoint, SIGUSR1 and SIGTERM, --wandb
    held = heldout_rows(problems, args.val_size, out)  # the authors' draw, before the length filter
    n_kept = len(problems)
    problems = [p for p in problems if len(prompt_ids(tok, p["problem"])) <= args.max_prompt_tokens]
    if len(problems) < n_kept:
        print(f"dropped {n_kept - len(problems)} problems longer than {args.max_prompt_tokens} "
              f"prompt tokens")
    val = [p for p in problems if p["row"] in held]  # held out of training, to validate on
    train = [p for p in problems if p["row"] not in held]
    if not train:
        raise UserError(f"--max-prompt-tokens {args.max_prompt_tokens} leaves no problem of "
                        f"{args.data} to train on")
    senior = load_model(args.model, dev, torch.float32, trainable=True)  # float32 master weights
    junior = None
    if junior_writes(args.schedule, args.p_senior) or args.kl_coef > 0:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        junior = load_model(args.junior or args.model, dev, dtype, trainable=False)
    senior.activation_checkpointing_enable({"use_reentrant": False})  # active in train mode only
    distribute(senior, junior, args)  # several ranks: FSDP2 shards the senior
    opt = torch.optim.AdamW(senior.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            fused=dev.type == "cuda")
    start = load_checkpoint(out, senior, opt)  # weights, AdamW and RNG states of `latest`, if any
    store_settings(out, args)  # args.json: the settings a --resume must keep
    if args.resume and rank() == 0:  # forget what was logged after the checkpoint: redone
        if not start:
            print(f"--resume: no checkpoint in {out} yet, starting from step 0")
        write_atomic(out / "metrics.jsonl", metrics_upto(out / "metrics.jsonl", start))
    steps = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train",
                 disable=rank() > 0)
    run = SimpleNamespace(out=out, train=train, val=val, n_kept=n_kept, start=start, steps=steps,
                          log=open(out / "metrics.jsonl", "a"), skipped_in_a_row=0,
                          color=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    return senior, junior, tok, opt, run

def end_step(run, m, senior, tok, opt, problem, r, args):
    """After a step: its metrics (metrics.jsonl, --wandb), the log line, a shown rollout, the
    checkpoint, and a scheduler's warning (SIGUSR1) obeyed."""
    step = m["step"]
    write_metrics(run.log, m)  # rank 0 (the numbers are over all ranks): fsynced
    val = {"val": f"{m['val_solo']:.3f}"} if "val_solo" in m else {}
    run.steps.set_postfix(reward=f"{m['reward']:.3f}", len=f"{m['resp_len']:.0f}", **val)
    if args.log_every and step % args.log_every == 0:
        tqdm.write(log_line(m, args.steps))
    if args.show_every and (step - 1 == run.start or step % args.show_every == 0):
        tqdm.write(logged_rollout(step, tok, problem, r, run.color))  # --wandb: a table row too
    if warned() or (args.save_every and step % args.save_every == 0) or step == args.steps:
        save_checkpoint(run.out, step, senior, tok, opt, args.keep)  # weights, AdamW, RNG: atomic
        stop_if_warned(run.out, step)  # SIGUSR1: exit 75 with the resume command

def log_line(m, steps):
    """One nanoGPT-style line of the step's metrics."""
    val = f" | val {m['val_solo']:.3f}" if "val_solo" in m else ""
    rare = "".join(f" | {k} {m[k]:.3g}" for k in ("truncated", "skipped") if m[k])  # when not 0
    return (f"step {m['step']}/{steps} | reward {m['reward']:.3f} | "
            f"zero-var {m['zero_var_groups']:.2f} | senior {m['senior_share']:.2f} | "
            f"switches {m['switches']:.1f} | clip {m['clip_frac']:.3f} | "
            f"gnorm {m['grad_norm']:.3f}{val}{rare} | {m['step_s']:.1f} s")

def show_rollout(tok, problem, r, color):
    """One co-written response, the junior's spans marked: cyan on a terminal, else [[brackets]]."""
    parts, junior_text = [], ""
    for by_senior, run in itertools.groupby(zip(r["response"], r["senior"]), key=lambda x: x[1]):
        text = tok.decode([t for t, _ in run], skip_special_tokens=True)
        junior_text += "" if by_senior else text
        marked = f"\033[36m{text}\033[0m" if color else f"[[{text}]]"
        parts.append(text if by_senior or not text else marked)
    marks = "cyan" if color else "[[bracketed]]"
    note = f"; the junior wrote the {marks} text" if junior_text else ""
    return (f"--- problem: {problem['problem']}\n{''.join(parts)}\n--- reward {r['reward']:.0f} "
            f"(gold {problem['answer']}){note}")

def summary(run, args):
    """A finished run's last line (rank 0; the demo prints its own): where the senior is."""
    if args.demo or rank() > 0:
        return
    out, train, val = run.out, run.train, run.val
    ckpt = out / (out / "latest").read_text().strip()
    print(f"done: the senior is in {ckpt} (eval.py --senior {out}); {len(train)} problems trained "
          f"on, {len(val)} held out, {run.n_kept - len(train) - len(val)} dropped (prompts over "
          f"{args.max_prompt_tokens} tokens); metrics in {out / 'metrics.jsonl'}")

def demo(args):
    """--demo: main(), then the solo accuracy of the base model and of the trained senior on the
    bundled held-out problems (one sample each, the paper's evaluation sampling)."""
    t0 = time.time()
    senior, tok = main(args)
    test = load_problems(DEMO_DIR / "test.jsonl")
    # measured after training, so that bad input is refused before any model loads: the base
    # model's samples come from their own seeded draws, whenever they are taken
    base = load_model(args.model, next(senior.parameters()).device, torch.float32, trainable=False)
    before = split_accuracy(base, tok, test, max_new_tokens=args.max_new_tokens)
    after = split_accuracy(senior, tok, test, max_new_tokens=args.max_new_tokens)
    out = Path(args.out)
    print(f"demo: solo accuracy before {100 * before:.1f}% after {100 * after:.1f}% "
          f"(n={len(test)} held-out problems, {time.time() - t0:.0f} s); wrote {out}/ "
          f"(metrics.jsonl, {(out / 'latest').read_text().strip()}/)")

def run_flags(p):
    """get_args' second half: the flags of how a run is carried out, not of what it computes."""
    a = p.add_argument_group("run: output, logs and checkpoints").add_argument
    a("--demo", action="store_true", help="run the bundled CPU demo (tiny model, toy arithmetic)")
    a("--out", default="runs/trl", help="output folder: metrics.jsonl and checkpoints")
    a("--resume", action="store_true",
      help="continue from the latest checkpoint in --out (or start if none)")
    a("--save-every", type=int, default=20, help="checkpoint every N steps (0: only at the end)")
    a("--keep", type=int, default=1,
      help="newest checkpoints that keep float32 weights + AdamW (older: bf16) (0: all)")
    a("--log-every", type=int, default=1, help="print one line of metrics every N steps (0: never)")
    a("--show-every", type=int, default=20,
      help="print one co-written rollout on the first step and every N (0: no)")
    a("--wandb", metavar="PROJECT",
      help="also log to this Weights & Biases project (optional: pip install wandb)")
    a = p.add_argument_group("run: hardware and memory").add_argument
    a("--micro-batch", type=int, default=4,
      help="rollouts per forward/backward (memory knob, same maths)")
    a("--gen-batch", type=int, default=32,
      help="rollouts generated at once (memory knob: both KV caches)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    a("--compile", action="store_true", help="rollouts: static-shape decode, captured as CUDA "
      "graphs on a GPU (appendix); same tokens; off until measured faster on a GPU")
    a("--memory-report", action="store_true",
      help="print the GPU memory budget for this setting and exit")
    a("--nproc", type=int, default=1, help="--memory-report: the budget of one of this many ranks")
    a("--threads", type=int, default=0, help="CPU threads for torch (0: all cores)")
    a = p.add_argument_group("run: more than one GPU (torchrun)").add_argument
    a("--fsdp", action=argparse.BooleanOptionalAction,
      help="shard the senior with FSDP2 (None: on with >1 rank)")
    a("--shard-junior", action="store_true",
      help="with --fsdp, shard the junior too (gathered for rollouts only)")
    a("--timeout", type=float, default=30,
      help="minutes a rank waits for the others before the whole job stops")

class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's layout and shows every default."""

def check_args(p, args):
    """Refuse values that cannot work, with the allowed range: argparse prints the line, exit 2."""
    for name, ok, rule in [
            ("group-size", args.group_size >= 2, ">= 2 (a group-relative advantage needs a group)"),
            ("temperature", args.temperature > 0, "> 0 (log-probs divide by it)"),
            ("p-senior", 0 <= args.p_senior <= 1, "in [0, 1]"),
            ("clip-low", 0 <= args.clip_low < 1, "in [0, 1)"),
            ("clip-high", args.clip_high >= 0, ">= 0"),
            ("clip-c", args.clip_c == 0 or args.clip_c > 1, "0 (off) or > 1"),
            ("lr", args.lr > 0, "> 0"), ("grad-clip", args.grad_clip > 0, "> 0"),
            ("timeout", args.timeout > 0, "> 0"), ("max-gap", args.max_gap >= 1, ">= 1"),
            ("kl-coef", args.kl_coef >= 0, ">= 0"),
            ("junior-token-weight", args.junior_token_weight >= 0, ">= 0"),
            ("length-penalty", 0 <= args.length_penalty <= 1, "in [0, 1]"),
            *[(n.replace("_", "-"), getattr(args, n) >= 1, ">= 1") for n in (
                "prompts_per_step", "mini_batch_prompts", "micro_batch", "gen_batch", "steps",
                "max_new_tokens", "max_prompt_tokens", "nproc")],
            *[(n.replace("_", "-"), getattr(args, n) >= 0, ">= 0") for n in (
                "save_every", "keep", "val_every", "log_every", "show_every", "threads")],
            ("val-size", args.val_size is None or args.val_size >= 0, ">= 0")]:
        if not ok:
            p.error(f"--{name} must be {rule}, got {getattr(args, name.replace('-', '_'))}")
    if args.prompts_per_step % args.mini_batch_prompts:
        p.error("--prompts-per-step must be a multiple of --mini-batch-prompts")
    if Path(args.out).is_file():
        p.error(f"--out {args.out} is a file; it must be a folder")
    if args.compile and (args.fsdp or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        p.error("--compile is for one process: it has not been tried with FSDP2 or under torchrun")

def cli(argv=None):
    """The command line: --memory-report, --demo, or a training run (main)."""
    try:
        args = get_args(argv)
        if args.memory_report:
            memory_report(args)
        elif args.demo:
            demo(args)
        else:
            main(args)
    except UserError as e:  # something the user can fix: one line, no traceback (bugs keep theirs)
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the steps (loading, the demo's accuracy)
        print("interrupted (no step was running)", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # N ranks: name the rank that failed first
        rank_failed(e)
        raise
    finally:
        stop_ranks()

# --------------------------------------------------------------------------------------------------
# Appendix: GPU memory (what one GPU holds in each phase; not part of the method)

def park(opt, junior, phase, args):
    """On CUDA, keep on the GPU only what the phase uses: AdamW's moments (2 x 4 bytes a weight)
    wait on the CPU during rollouts, the junior waits there during updates (unless the KL term needs
    it). See --memory-report."""
    if args.device != "cuda":
        return
    dev = "cpu" if phase == "rollout" else "cuda"
    # FSDP2 shards AdamW instead (1/N a rank)
    for state in opt.state.values() if not args.fsdp else []:
        for k, v in state.items():
            if torch.is_tensor(v) and v.dim():
                state[k] = v.to(dev, non_blocking=True)
    # --compile: the junior stays (the captured decode graph holds its weights' addresses)
    if (junior is not None and not args.kl_coef and not (args.fsdp and args.shard_junior)
            and not args.compile):
        junior.to("cuda" if phase == "rollout" else "cpu")

def memory_report(args):
    """Print the GPU budget of this setting, line by line, in GiB. Three phases never overlap:
    rollouts (weights, bf16 copy, junior, both KV caches; AdamW parked on the CPU), updates
    (weights, grads, AdamW, activations of one micro-batch with checkpointing, one logits chunk;
    junior parked unless --kl-coef) and validation (placed as for rollouts, but the senior decodes
    alone: one KV cache of --gen-batch rows; none if --val-every or --val-size is 0). Estimates: the
    peaks bench.py --paper measured on an H200 for Qwen3-4B were up to 5% above them (allocator,
    temporaries)."""
    try:
        c = AutoConfig.from_pretrained(args.model)
    except OSError as e:
        raise not_found(args.model, e) from None
    H, I, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    hd = getattr(c, "head_dim", None) or H // c.num_attention_heads
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    layer, root = (2 * H * q + 2 * H * kv + 3 * H * I + 2 * H + 2 * hd,
                   V * H * (1 if c.tie_word_embeddings else 2) + H)
    n = L * layer + root
    S, tandem = (args.max_prompt_tokens + args.max_new_tokens,
                 junior_writes(args.schedule, args.p_senior))
    # as park() places it
    junior_rollout, junior_update = tandem or args.kl_coef > 0, args.kl_coef > 0
    tok_mb = args.micro_batch * S                   # tokens in one training micro-batch
    kv_one = args.gen_batch * S * 2 * L * kv * 2    # one model's KV cache, full length, bf16
    kv_bytes = kv_one * (1 + tandem)                # rollouts: both models' (tandem)
    prefill = args.gen_batch * args.max_prompt_tokens * (3 * I * 2 + 3 * H * 4)
    junior_kept = 2 * n * (junior_update or junior_rollout * args.compile)
    # bytes in: rollout, update, validation
    rows = [("senior weights, float32 master copy", 4 * n, 4 * n, 4 * n),
            ("senior bf16 copy (autocast cache)", 2 * n, 0, 2 * n),
            ("senior gradients, float32", 0, 4 * n, 0),
            ("AdamW moments, float32 (2 a weight)", 0, 8 * n, 0),
            ("junior weights, bf16", 2 * n * junior_rollout, junior_kept, 2 * n * junior_rollout),
            # --compile: the static ones stay, validation adds its own
            (f"KV caches: {args.gen_batch} x {S} tokens x {1 + tandem} model{'s' * tandem}, "
             + ("kept; validation +1" if args.compile else "bf16; validation 1"),
             kv_bytes, kv_bytes * args.compile, kv_one + kv_bytes * args.compile),
            (f"prompt prefill, one layer's temporaries ({args.max_prompt_tokens}-token prompts)",
             prefill, 0, prefill),
            (f"checkpointed layer inputs: {args.micro_batch} x {S} tokens x {L} layers, fp32", 0,
             L * tok_mb * H * 4, 0),
            ("one layer recomputed in backward (+ its grads)", 0,
             2 * tok_mb * (2 * (2 * q + 2 * kv) + 8 * I + 16 * H), 0),
            (f"logits chunk: {LOGITS_CHUNK} x {V} fp32 (logits, log-softmax, grad)", 0,
             3 * LOGITS_CHUNK * V * 4, 0)]
    # FSDP2 over --nproc ranks: the senior's and junior's rows change (appendix: more than one GPU)
    if args.nproc > 1:
        rows = [(*r, r[1]) for r in sharded_rows(args, n, root, layer, junior_rollout,
                                                  junior_update)] + rows[5:]
    if not args.val_every or args.val_size == 0:  # no validation phase (None: the default tenth)
        rows = [(name, a, b, 0) for name, a, b, _ in rows]
    gib = lambda b: f"{b / 2**30:8.1f}"
    ranks = f", one of {args.nproc} ranks (FSDP2)" if args.nproc > 1 else ""
    print(f"memory budget for {args.model}: {n / 1e9:.2f}B parameters, "
          f"schedule {args.schedule}{ranks}")
    print(f"{'':62s}{'rollout':>8s}{'update':>8s}{'validate':>10s}  GiB")
    for name, a, b, c in rows:
        print(f"  {name:60s}{gib(a)}{gib(b)}  {gib(c)}")
    totals = [sum(r[i] for r in rows) for i in (1, 2, 3)]
    print(f"  {'total':60s}{gib(totals[0])}{gib(totals[1])}  {gib(totals[2])}   "
          f"peak {max(totals) / 2**30:.1f} GiB")
    return max(totals)

# --------------------------------------------------------------------------------------------------
# Appendix: static-shape decode (--compile, for CUDA graphs; not part of the method)
# tandem_generate changes shapes every step (both caches grow by one, finished rows leave the batch)
# and asks the GPU a yes/no question per token (any row still running?), so Python issues each of a
# step's ~3,700 kernels one by one for two 36-layer models: on a GPU that decode is bound by the
# CPU. static_generate writes the same tokens with shapes that never change, so
# torch.compile(mode="reduce-overhead") can capture both models reading a token as one CUDA graph
# and replay it every step (the output layers, sampling and the author rule stay eager: a few dozen
# small kernels a step, none of which waits for the GPU):
#   both KV caches are preallocated for L >= P + T positions (transformers' StaticCache): the
#       attention mask is [B, L] from the first step, and the positions not yet written are hidden
#       by the causal mask
#   all B rows run every step; a finished row keeps decoding, but nothing it writes is recorded
#       (live[b] False)
#   both output layers run on all rows and each row keeps its author's logits; the coins and the
#       sampler draw for all B rows, as tandem_generate does, so the two paths give the same tokens
#       for the same seed
#   "has every row ended?" is asked every `check_every` steps: no host<->device sync per token
# Same arguments and returns as tandem_generate. It may draw up to check_every - 1 extra steps of
# random numbers after the last row ends: the tokens are the same, the random stream after the call
# is not. On CUDA the caches are kept between calls (emptied, not reallocated) and the junior is not
# parked (park), so the captured graph's addresses stay valid: both stay on the GPU during updates
# (see --memory-report). On CPU nothing is compiled, and the tests check that this path gives
# tandem_generate's tokens, authors and ends. Not yet measured on a GPU.

# on CUDA, kept between calls: (model id, B) -> (L, its StaticCache); "read" -> compiled read_token
STATIC = {}

def decoder(args):
    """The decode loop rollout() uses: tandem_generate, or with --compile static_generate
    (same tokens)."""
    return static_generate if args.compile else tandem_generate

def read_token(models, caches, tok, attn, pos):
    """Every model reads one token per row: tok [B, 1], attn [B, L], pos [B, 1]
    -> [hidden [B, H] per model]."""
    return [last_hidden(m, tok, attn, pos, c) for m, c in zip(models, caches)]

def static_caches(models, B, L, keep):
    """-> (one empty StaticCache per model, B rows x L' positions; L'). keep (CUDA): the caches are
    kept between calls and only ever grow (a longer cache serves a shorter batch, masked), so the
    captured graph's addresses and shapes settle after the first few calls."""
    if not keep:
        return [StaticCache(config=m.config, max_cache_len=L) for m in models], L
    L = max([L] + [STATIC[id(m), B][0] for m in models if (id(m), B) in STATIC])
    for m in models:
        if STATIC.get((id(m), B), (0,))[0] < L:
            STATIC.pop((id(m), B), None)  # free the shorter one first
            STATIC[id(m), B] = (L, StaticCache(config=m.config, max_cache_len=L))
        STATIC[id(m), B][1].reset()
    return [STATIC[id(m), B][1] for m in models], L

@torch.no_grad()
def static_generate(senior, junior, prompts, *, eos_ids, pad_id, n_vocab, word_start=None,
                    step_end=None, schedule="word", p_senior=0.5, max_gap=32, max_new_tokens=3000,
                    max_turns=0, temperature=0.6, top_k=0, top_p=1.0, u=None, compile=None,
                    check_every=16):
    """tandem_generate with fixed shapes (see above). compile: capture the decode step with
    torch.compile (default: on CUDA only)."""
    dev, B, T = next(senior.parameters()).device, len(prompts), max_new_tokens
    compile = dev.type == "cuda" if compile is None else compile
    if junior is None or not junior_writes(schedule, p_senior):
        junior, schedule = None, "solo"
    models = [senior] if junior is None else [senior, junior]
    heads = [m.get_output_embeddings() for m in models]
    eos = torch.tensor(sorted(eos_ids), device=dev)
    word_start = word_start.to(dev) if word_start is not None else None
    step_end = step_end.to(dev) if step_end is not None else None
    coin = lambda: torch.rand(B, device=dev) < p_senior
    if compile and "read" not in STATIC:
        STATIC["read"] = torch.compile(read_token, mode="reduce-overhead", fullgraph=True)
    read = STATIC["read"] if compile else read_token

    ids, attn = left_pad(prompts, pad_id, dev)            # [B, P]
    P = ids.shape[1]
    L = -(-(P + T) // 256) * 256                          # rounded up: fewer shapes to capture
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    caches, L = static_caches(models, B, L, keep=compile)
    # the prompt, not captured: [B, H]
    hid = [last_hidden(m, ids, attn, pos, c) for m, c in zip(models, caches)]
    attn = torch.cat([attn, attn.new_ones(B, L - P)], 1)  # [B, L], the same every step
    pos = pos[:, -1:] + 1                                 # [B, 1]

    tokens = torch.full((B, T), pad_id, dtype=torch.long, device=dev)
    by_senior = torch.zeros(B, T, dtype=torch.bool, device=dev)
    length = torch.full((B,), T, device=dev)
    truncated = torch.ones(B, dtype=torch.bool, device=dev)
    live = torch.ones(B, dtype=torch.bool, device=dev)  # rows still writing their response
    senior_turn = (coin() if schedule in ("word", "token")
                   else torch.ones(B, dtype=torch.bool, device=dev))
    gap = torch.zeros(B, dtype=torch.long, device=dev)
    turns = torch.ones(B, dtype=torch.long, device=dev)
    after_newline = torch.zeros(B, dtype=torch.bool, device=dev)
    for t in range(T):
        # 1. both output layers on every row; each row keeps its author's logits        [B, V]
        logits = heads[0](hid[0])[:, :n_vocab].float()
        if junior is not None:
            logits = torch.where(senior_turn[:, None], logits,
                                 heads[1](hid[1])[:, :n_vocab].float())
        ut = (torch.rand(B, 1, device=dev) if u is None else u[:, t, None]) if temperature else None
        tok = sample(logits, temperature, top_k, top_p, ut)                    # [B]
        tokens[:, t] = torch.where(live, tok, pad_id)
        by_senior[:, t] = senior_turn & live
        # 2. who writes the next token: tandem_generate's rule, on every row
        senior_turn, gap, turns, after_newline = next_author(schedule, tok, senior_turn, gap, turns,
                                                             after_newline, coin, word_start,
                                                             step_end, max_gap)
        # 3. rows that end here stop being recorded (they keep their place in the batch)
        eos_hit = torch.isin(tok, eos) & live
        done = eos_hit | ((turns > max_turns) & live if max_turns else False)
        truncated &= ~eos_hit
        length = torch.where(done, t + 1, length)
        live &= ~done
        if t == T - 1 or ((t + 1) % check_every == 0 and not live.any()):     # the only host sync
            break
        # 4. both models read the token: one graph replay when compiled
        hid = read(models, caches, tok[:, None], attn, pos)
        pos = pos + 1
    mask = torch.arange(T, device=dev)[None] < length[:, None]
    T = int(length.max())
    return dict(tokens=tokens[:, :T].masked_fill(~mask[:, :T], pad_id),
                senior=by_senior[:, :T] & mask[:, :T], mask=mask[:, :T], truncated=truncated)

# --------------------------------------------------------------------------------------------------
# Appendix: more than one GPU (torchrun, FSDP2; not part of the method)
# `torchrun --nproc_per_node N tandem_grpo.py ...` starts N processes (ranks), one a GPU. Each
# step's prompts are dealt to the ranks by whole groups (batch[rank::N]); each rank co-writes and
# grades its own rollouts with its own junior. The token-mean's denominator is summed over the ranks
# before any backward, so the ranks' gradients add up to exactly the gradient of one process holding
# every rollout. With --fsdp (the default on N > 1 ranks) FSDP2 shards the senior's float32 weights,
# gradients and AdamW state over the ranks: each decoder layer is one group, the root (embeddings,
# final norm, output layer) another. In updates a group is gathered for its forward and backward and
# freed after; between updates (rollouts, validation) the whole senior is gathered once and kept, so
# no collective runs per token and the ranks may decode different lengths. Without --fsdp every rank
# holds the whole senior and the gradients are summed by one all-reduce (plain data parallelism).
# One process: none of this runs.
import warnings
from datetime import timedelta
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (FSDPModule, MixedPrecisionPolicy, fully_shard,
                                    register_fsdp_forward_method)
from transformers.utils import logging as hf_logging

# True once FSDP2 runs the senior in bf16 on CUDA by its own policy: autocast() then stays off
FSDP_CASTS = False

def rank():
    return dist.get_rank() if dist.is_initialized() else 0

def world():
    return dist.get_world_size() if dist.is_initialized() else 1

def start_ranks(args):
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl on GPUs, gloo on CPU) with a
    timeout, so a rank that stopped takes the job down instead of hanging it; one GPU a rank; only
    rank 0 prints."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        args.fsdp = False  # one process: nothing to shard
        return
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=args.timeout))
    if args.mini_batch_prompts % world():
        raise UserError(f"--mini-batch-prompts {args.mini_batch_prompts} must be a multiple of the "
                        f"{world()} ranks (each rank takes an equal share of every mini-batch)")
    args.fsdp = True if args.fsdp is None else args.fsdp
    if rank():
        sys.stdout = open(os.devnull, "w")
        hf_logging.disable_progress_bar()

def rank_failed(e):
    """N ranks: one line naming the rank that failed, before its traceback (torchrun then stops the
    other ranks; a rank left waiting for it gives up after --timeout)."""
    if world() > 1:
        waited = " (it waited longer than --timeout for another rank)"
        waited = waited if "timed out" in str(e).lower() else ""
        print(f"error: rank {rank()} of {world()} failed: {type(e).__name__}: "
              f"{str(e).strip().splitlines()[0]}{waited}", file=sys.stderr)

def stop_ranks():
    if dist.is_initialized():
        dist.destroy_process_group()

def all_sum(x):
    """A number summed over the ranks (float64; itself on one process)."""
    if world() == 1:
        return x
    t = torch.tensor(float(x), dtype=torch.float64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.item()

def all_rollouts(rollouts):
    """Every rank's rollouts, in rank order (for metrics: the same numbers one process
    would log)."""
    if world() == 1:
        return rollouts
    out = [None] * world()
    dist.all_gather_object(out, rollouts)
    return [r for part in out for r in part]

def sum_grads(senior):
    """Without FSDP2 on N ranks: add the ranks' gradients up (each is a share of the
    same token-mean)."""
    if world() > 1 and not isinstance(senior, FSDPModule):
        for p in senior.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)

def split_accuracy(model, tok, problems, **kw):
    """solo_accuracy over all ranks: each rank answers every N-th problem, the mean is
    over all of them."""
    update_mode([model], False)  # gathered by every rank, also one left without a problem
    mine = problems[rank()::world()]
    return all_sum(solo_accuracy(model, tok, mine, **kw) * len(mine)
                   if mine else 0.0) / len(problems)

def shard(model, args):
    """FSDP2 in place: one group per decoder layer, then the root. bf16 compute and float32 master
    weights and gradient reduction on CUDA (FSDP2's MixedPrecisionPolicy instead of autocast);
    float32 throughout on CPU, like one process there. Gradients are summed over the ranks, not
    averaged: the token-mean already divides by every rank's tokens."""
    global FSDP_CASTS
    cuda = args.device.startswith("cuda")
    FSDP_CASTS = FSDP_CASTS or cuda
    mesh = init_device_mesh("cuda" if cuda else "cpu", (world(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if cuda else None,
                              reduce_dtype=torch.float32)
    for layer in model.get_decoder().layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    # the story calls these, never model(...): the root's parameters are gathered
    # when they are fetched
    for name in ("get_decoder", "get_output_embeddings"):
        register_fsdp_forward_method(model, name)
    # FSDP2 takes the first module that runs as its root: make that the whole model
    model.get_decoder()
    # the optimizer must be built on the shards; the first forward gathers each group and keeps it
    model.reshard()
    model.set_reshard_after_forward(False)

def distribute(senior, junior, args):
    """N ranks: shard the senior (and with --shard-junior the junior) with --fsdp; then each rank
    draws its own random stream (its own coins and samples)."""
    if world() == 1:
        return
    if args.fsdp:
        shard(senior, args)
        if junior is not None and args.shard_junior:
            shard(junior, args)
    torch.manual_seed(args.seed + 1_000_003 * rank())
    dist.barrier()  # every rank has checked --out before rank 0 writes to it

def update_mode(models, update):
    """FSDP2 has two modes here. Updates: each layer is gathered for its forward and for its
    backward, then freed; the root stays gathered through a micro-batch (its output layer runs chunk
    by chunk) and is freed after the backward. Otherwise: every group gathered once (one all-gather
    a step) and kept until the next update."""
    for model in models:
        if isinstance(model, FSDPModule):
            model.set_reshard_after_forward(update)
            model.set_reshard_after_forward(False, recurse=False)
            for m in model.modules():
                if isinstance(m, FSDPModule):
                    m.reshard() if update else m.unshard()

def sharded_rows(args, n, root, layer, junior_rollout, junior_update):
    """memory_report's first rows for one of N ranks under FSDP2 (bytes; rollout, update). Rollouts
    hold the whole senior gathered in bf16 beside the float32 shards; AdamW is not parked (it is
    1/N). Updates gather the root and two layers (one computing, one prefetched) and hold one
    group's unsharded gradient (bf16, and float32 for the reduce-scatter); the rest is 1/N."""
    N = args.nproc
    junior_update = 2 * n / N * junior_rollout if args.shard_junior else 2 * n * junior_update
    return [(f"senior weights, float32 master copy, 1/{N}", 4 * n / N, 4 * n / N),
            ("senior in bf16: whole (rollout), root + 2 layers (update)", 2 * n,
             2 * (root + 2 * layer)),
            (f"senior gradients, float32, 1/{N} + one group unsharded", 0,
             4 * n / N + 6 * max(root, layer)),
            (f"AdamW moments, float32 (2 a weight), 1/{N}", 8 * n / N, 8 * n / N),
            ("junior weights, bf16" + (f" (1/{N} in updates)" if args.shard_junior else ""),
             2 * n * junior_rollout, junior_update)]

def save_checkpoint_ranks(out, step, senior, tok, opt, keep=1):
    """save_checkpoint on N ranks, the same folder: rank 0 writes the whole weights (gathered to its
    CPU), the tokenizer and trainer.pt (step, rank 0's random state); every rank writes its part of
    AdamW's state to optim/ with torch.distributed.checkpoint, which any number of ranks (one
    included) reads back."""
    update_mode([senior], True)  # state dicts are taken from the shards
    full = get_model_state_dict(senior, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))  # {}: rank>0
    if all_sum(not all(torch.isfinite(v).all() for v in full.values())):
        raise UserError(f"step {step}: the senior has non-finite weights; not writing a checkpoint")
    final, tmp = out / f"step_{step:06d}", out / f"step_{step:06d}.tmp"
    if rank() == 0:
        # a full disk: one line (the others then stop)
        with room_or_stop(out, f"the step-{step} checkpoint", tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            senior.save_pretrained(tmp, state_dict=full)
            tok.save_pretrained(tmp)
            rng = dict(torch=torch.get_rng_state(), python=random.getstate(),
                       cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
            # AdamW: in optim/
            torch.save(dict(step=step, optimizer=None, rng=rng), tmp / "trainer.pt")
    dist.barrier()
    # fsynced by its writer
    dcp.save(get_optimizer_state_dict(senior, opt), checkpoint_id=tmp / "optim")
    dist.barrier()
    if rank() == 0:
        for f in [*tmp.iterdir(), tmp]:
            fsync(f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_atomic(out / "latest", final.name)
        prune(out, keep)  # only the newest `keep` checkpoints keep AdamW (appendix: checkpoints)
    dist.barrier()
    # taking the state dicts resharded the senior: gather it again for rollouts
    update_mode([senior], False)

def load_checkpoint_ranks(folder, senior, opt):
    """load_checkpoint for a checkpoint written by N ranks, or read by them
    (from one rank's checkpoint too)."""
    state = torch.load(folder / "trainer.pt", weights_only=False, mmap=True)
    update_mode([senior], True)  # state dicts are loaded into the shards
    full = (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
            if rank() == 0 else {})
    set_model_state_dict(senior, full, options=StateDictOptions(full_state_dict=True,
                                                                broadcast_from_rank0=world() > 1))
    if state["optimizer"] is None:
        # written by N ranks: each rank reads its part, resharded to this many ranks
        optim = get_optimizer_state_dict(senior, opt)
        # one process reading N ranks' files: DCP would warn it has no group
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(optim, checkpoint_id=folder / "optim", no_dist=world() == 1)
        set_optimizer_state_dict(senior, opt, optim)
    else:
        # written by one process: AdamW's state by parameter index; name the entries,
        # each rank takes its part
        names, optim = [n for n, _ in senior.named_parameters()], state["optimizer"]
        optim = dict(state={names[i]: s for i, s in optim["state"].items()},
                     param_groups=[dict(g, params=[names[i] for i in g["params"]])
                                   for g in optim["param_groups"]])
        set_optimizer_state_dict(senior, opt, optim, options=StateDictOptions(full_state_dict=True))
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    if rank():  # rank 0 continues its random stream; the others draw new ones
        torch.manual_seed(state["step"] * 1_000_003 + rank())
    update_mode([senior], False)
    print(f"resumed from {folder} (step {state['step']})")
    return state["step"]

# --------------------------------------------------------------------------------------------------
# Appendix: data files (.jsonl, .json, .parquet; field names; the authors' verl rows; errors)

# Field names, first match wins. verl rows (the authors' parquet files) are read separately: see
# problem_and_gold.
PROBLEM_KEYS, ANSWER_KEYS = ("problem", "question"), ("answer", "final_answer", "solution")

DATA_FORMATS = (".jsonl", ".json", ".parquet")

def load_problems(path):
    """A .jsonl, .json or .parquet file (local or hf://) -> [{"problem", "answer", "row"}]: the
    answer is a string or a list of accepted ones, row the 0-based position in the file."""
    path = fetch(str(path))
    problems, n_empty = [], 0
    for i, (where, row) in enumerate(read_rows(path)):
        where = f"{path}: {where}"  # every bad row is a UserError naming file and row
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object "
                            f"{{\"problem\": ..., \"answer\": ...}}, got {json_kind(row)}")
        problem, pk, answer, ak = problem_and_gold(row, where)
        if not isinstance(problem, str) or not problem.strip():
            got = "an empty string" if isinstance(problem, str) else f"a {json_kind(problem)}"
            raise UserError(f"{where}: field '{pk}' must be a non-empty string, got {got}")
        gold = gold_answer(answer, f"{where}: field '{ak}'")
        if not gold:  # an empty answer: dropped, as the authors do, and counted
            n_empty += 1
            continue
        problems.append({"problem": problem, "answer": gold, "row": i})
    if n_empty:
        print(f"{path}: dropped {n_empty} row(s) with an empty answer")
    say_text_golds(path, problems)  # golds in words that no formula can match: one line (appendix)
    if not problems:
        why = f" with an answer ({n_empty} empty)" if n_empty else " (empty file)"
        raise UserError(f"{path}: no rows{why}")
    return problems

def check_data_path(path):
    """A --data path that cannot be read -> UserError: not hf://datasets/OWNER/NAME/FILE, a folder,
    a missing file, a format not read. Nothing is fetched."""
    if path.startswith("hf://"):
        parts = path[len("hf://"):].split("/")
        if len(parts) < 4 or parts[0] != "datasets":
            raise UserError(f"--data {path}: expected hf://datasets/OWNER/NAME/FILE")
    elif Path(path).is_dir():
        raise UserError(f"--data {path}: is a folder; expected one file: .jsonl, .json or .parquet")
    elif not Path(path).is_file():
        raise UserError(f"--data {path}: no such file")
    if not path.endswith(DATA_FORMATS):
        raise UserError(f"--data {path}: not a format read here; expected .jsonl, .json or "
                        f".parquet (a local file or hf://datasets/OWNER/NAME/FILE)")

def fetch(path):
    """A local path, or hf://datasets/OWNER/NAME/FILE fetched once with huggingface_hub
    (into its cache)."""
    check_data_path(path)
    if not path.startswith("hf://"):
        return Path(path)
    parts = path[len("hf://"):].split("/")
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download("/".join(parts[1:3]), "/".join(parts[3:]), repo_type="dataset"))
    except OSError as e:
        # no network, no such repository or file (huggingface_hub's errors are OSErrors)
        raise UserError(f"--data {path}: cannot fetch it "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")

def json_kind(v):
    return {"dict": "object", "str": "string", "int": "number", "float": "number",
            "NoneType": "null"}.get(type(v).__name__, type(v).__name__)

def read_rows(path):
    """-> [(where, row)]: .jsonl one JSON value a line ("line N"), .json one list ("row N"; JSON
    lines accepted too), .parquet one table ("row N", needs pyarrow)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{path}: reading .parquet needs pyarrow: "
                            f"pip install pyarrow") from None
        return [(f"row {i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as e:
            # "Extra data": several values, i.e. JSON lines in a .json file
            if e.msg != "Extra data":
                raise UserError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        else:
            if not isinstance(data, list):
                raise UserError(f"{path}: holds a JSON {json_kind(data)}; expected a list of rows "
                                f"[{{...}}, ...] (or one row a line, .jsonl)")
            return [(f"row {i + 1}", r) for i, r in enumerate(data)]
    rows = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append((f"line {i + 1}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {i + 1}: not valid JSON ({e.msg})") from None
    return rows

def gold_answer(value, where):
    """An answer field -> the gold: a string, or a list of accepted strings (OlympiadBench,
    Minerva); GSM8K's worked answers keep what follows the last '####'; '' or [] when empty."""
    if isinstance(value, list) and not any(isinstance(v, (list, dict)) for v in value):
        return [a for a in (gold_answer(v, where) for v in value) if a]
    if value is not None and not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: expected a string, a number or a list of them, "
                        f"got {json_kind(value)}")
    return "" if value is None else str(value).rsplit("####", 1)[-1].strip()

def heldout_rows(problems, n, out):
    """The authors' held-out draw (their data/build_deepscaler.py):
    DataFrame.sample(n=1000, random_state=0) over the rows with an answer, in file order. pandas
    makes it numpy's legacy RandomState(0).choice(rows, n, replace=False), the first n of
    RandomState(0).permutation(rows): a Fisher-Yates shuffle on MT19937 whose stream numpy keeps
    fixed across versions. n None: min(1000, a tenth of the rows). -> the held-out rows' file
    positions, a set; rank 0 writes them in draw order (their heldout.parquet's order) to
    out/heldout.json, so anyone can check the split."""
    import numpy as np  # a dependency of transformers
    said = (f"--val-size {n}" if n is not None
            else "the default --val-size, min(1000, a tenth of the rows)")
    n = min(1000, len(problems) // 10) if n is None else n
    if n >= len(problems):
        raise UserError(f"--val-size {n} leaves none of the {len(problems)} problems for training")
    held = [problems[i]["row"]
            for i in np.random.RandomState(0).choice(len(problems), n, replace=False)]
    if held and rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "heldout.json", json.dumps(held) + "\n")
        print(f"held out {n} of {len(problems)} problems to validate on ({said}); "
              f"their rows: {out}/heldout.json")
    return set(held)

def problem_and_gold(row, where):
    """-> (problem, its field, answer, its field). verl's layout (the authors' files):
    prompt = [{"role": "user", "content": problem + " " + PROMPT_SUFFIX}],
    reward_model = {"ground_truth": answer}; else the first key present."""
    if isinstance(row.get("prompt"), list) and isinstance(row.get("reward_model"), dict):
        user = [m for m in row["prompt"] if isinstance(m, dict) and m.get("role") == "user"]
        if not user or "ground_truth" not in row["reward_model"]:
            raise UserError(f"{where}: verl row without a user message in 'prompt' or "
                            f"'reward_model.ground_truth'")
        return (user[-1].get("content"), "prompt", row["reward_model"]["ground_truth"],
                "reward_model.ground_truth")
    pk = next((k for k in PROBLEM_KEYS if k in row), None)
    ak = next((k for k in ANSWER_KEYS if k in row), None)
    if pk is None or ak is None:
        missing = ("'problem' (or 'question')" if pk is None
                   else "'answer' (or 'final_answer', 'solution')")
        raise UserError(f"{where}: missing field {missing}")
    return row[pk], pk, row[ak], ak

def say_text_golds(path, problems):
    """One line when some golds can be matched only as text (words, such as 'all real values'; see
    text_only): a boxed formula never matches them, only the same words do."""
    text = [p["answer"] for p in problems if text_only(p["answer"])]
    if text:
        # one line, whatever they hold
        eg = [" ".join((a if isinstance(a, str) else a[0]).split()) for a in text[:2]]
        eg = ", ".join(f"'{a[:57]}...'" if len(a) > 60 else f"'{a}'" for a in eg)
        print(f"{path}: {len(text)} of {len(problems)} gold answers are words, matched only as "
              f"text (never by a formula), e.g. {eg}")

# --------------------------------------------------------------------------------------------------
# Appendix: checkpoints and files (files that survive a crash, --resume; not the method)
# A checkpoint is written to a temporary folder, fsynced, then renamed into place (atomic); `latest`
# names the newest.

def save_checkpoint(out, step, senior, tok, opt, keep=1):
    if world() > 1:  # torchrun: the same folder, written by all ranks together (appendix)
        return save_checkpoint_ranks(out, step, senior, tok, opt, keep)
    if not all(torch.isfinite(p).all() for p in senior.parameters()):
        raise UserError(f"step {step}: the senior has non-finite weights; not writing a checkpoint")
    final, tmp = out / f"step_{step:06d}", out / f"step_{step:06d}.tmp"
    # a full disk: one line, `latest` untouched
    with room_or_stop(out, f"the step-{step} checkpoint", tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)
        senior.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        rng = dict(torch=torch.get_rng_state(), python=random.getstate(),
                   cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        torch.save(dict(step=step, optimizer=opt.state_dict(), rng=rng), tmp / "trainer.pt")
        for f in [*tmp.iterdir(), tmp]:
            fsync(f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_atomic(out / "latest", final.name)
    # only the newest `keep` checkpoints keep their resume state; older ones become bf16 weights
    prune(out, keep)

def load_checkpoint(out, senior, opt):
    """Restore the newest checkpoint in `out` (weights, AdamW state, RNG states) -> its step;
    0 when there is none."""
    if not (out / "latest").exists():
        return 0
    folder = out / (out / "latest").read_text().strip()
    if world() > 1 or (folder / "optim").exists():  # read by, or written by, N ranks (appendix)
        return load_checkpoint_ranks(folder, senior, opt)
    state = torch.load(folder / "trainer.pt", weights_only=False)
    try:
        senior.load_state_dict(AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32).state_dict())
    except RuntimeError:  # missing or unexpected keys, other shapes: another --model
        raise UserError(f"{folder}: its weights do not fit --model "
                        f"(was the run started from another model?)") from None
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    print(f"resumed from {folder} (step {state['step']})")
    return state["step"]

# What --resume may change: how the run is carried out (its length, logs, checkpoints, hardware,
# memory knobs), not the method or the data. Every other flag must equal the value the run started
# with, stored in OUT/args.json.
RESUME_MAY_CHANGE = ("steps", "save_every", "val_every", "log_every", "show_every", "threads",
                     "device", "compile", "gen_batch", "micro_batch", "fsdp", "shard_junior",
                     "timeout", "nproc", "out", "resume", "demo", "memory_report")
# of those: other random draws (--gen-batch: each chunk draws its own) or other float sums, so a
# resume that changes one says so
NOT_BIT_EXACT = ("gen_batch", "micro_batch", "compile", "device", "threads", "fsdp", "shard_junior")

def settings(args):
    """The run's flags as stored in OUT/args.json: local paths (model, junior, data)
    made absolute."""
    local = lambda v: str(Path(v).resolve()) if isinstance(v, str) and Path(v).exists() else v
    return {k: local(v) if k in ("model", "junior", "data") else v for k, v in vars(args).items()}

def check_out(args):
    """--out, checked before anything loads (nothing is written) -> its Path. It must be writable; a
    used one (a log or a checkpoint) needs --resume; a checkpoint continues only with the settings
    it started with (OUT/args.json: all but RESUME_MAY_CHANGE equal)."""
    out = Path(args.out)
    # N ranks: all try, none removes
    made = [d for d in (out, *out.parents) if not d.exists()] if world() == 1 else []
    try:  # create it and a file in it, then remove what this made
        out.mkdir(parents=True, exist_ok=True)
        (out / f".probe.{os.getpid()}").touch()
        (out / f".probe.{os.getpid()}").unlink()
    except OSError as e:
        raise UserError(f"--out {out}: cannot create or write it ({e.strerror})") from None
    finally:
        for d in made:  # innermost first
            with suppress(OSError):
                d.rmdir()
    if ((out / "metrics.jsonl").exists() or (out / "latest").exists()) and not args.resume:
        raise UserError(f"--out {out} holds a run already: add --resume to continue it, "
                        f"or choose a new --out")
    if not (out / "latest").exists():
        return out
    if not (out / "args.json").exists():
        print(f"--resume: {out} has no args.json (from an older version): "
              f"its settings cannot be checked")
        return out
    try:
        then = json.loads((out / "args.json").read_text())
    except json.JSONDecodeError:
        raise UserError(f"{out / 'args.json'}: not valid JSON") from None
    diff = {k: f"--{k.replace('_', '-')} {then[k]} -> {v}" for k, v in settings(args).items()
            if then.get(k, v) != v}
    changed = [d for k, d in diff.items() if k not in RESUME_MAY_CHANGE]
    if changed:
        raise UserError(f"--resume: {out} was trained with other settings ({', '.join(changed)}); "
                        f"resume with its values, or start a new --out")
    moved = [d for k, d in diff.items() if k in NOT_BIT_EXACT]
    if moved:
        print(f"--resume: {', '.join(moved)}: allowed, but from here the run's random draws or "
              f"float sums differ from an unbroken run's")
    return out

def store_settings(out, args):
    """Create --out; a run that starts (no checkpoint to continue, or one from an older version
    without args.json) stores its settings in OUT/args.json."""
    out.mkdir(parents=True, exist_ok=True)
    if rank() == 0 and not ((out / "latest").exists() and (out / "args.json").exists()):
        write_atomic(out / "args.json", json.dumps(settings(args), indent=1) + "\n")

def same_vocabulary(tok, senior, junior, junior_tok=None):
    """Token ids pass unchanged between the senior and the junior (a path; None: a copy of the
    senior): one vocabulary, or a one-line error naming both."""
    if junior is not None and tok.get_vocab() != (junior_tok or load_tokenizer(junior)).get_vocab():
        raise UserError(f"{senior}: its tokenizer's vocabulary differs from the junior's "
                        f"({junior}); the junior must share the senior's tokenizer")

def fsync(path):
    """Flush a file (or a folder's entry list) to the disk, so a rename after it cannot
    expose a torn file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

def write_atomic(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)

def metrics_upto(path, step):
    """The lines of metrics.jsonl logged up to `step` (a resumed run redoes the later ones).
    A torn last line (power loss, full disk) is dropped with a note; a broken line elsewhere
    is an error."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = []
    for i, line in enumerate(lines):
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise UserError(f"{path}:{i + 1}: not valid JSON") from None
            print(f"{path}: dropped a torn last line ({len(line)} characters)")
            continue
        if m["step"] <= step:
            kept.append(line + "\n")
    return "".join(kept)

def not_found(path, e):
    """A model path that failed to load -> one line: which path, and why when it is
    a local folder."""
    why = f" ({str(e).splitlines()[0]})" if Path(path).exists() else ""
    return UserError(f"{path}: neither a local model folder nor a reachable hub id{why}")

def load_model(path, device, dtype, trainable):
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    except OSError as e:
        raise not_found(path, e) from None
    model.requires_grad_(trainable)
    return model.eval()

def load_tokenizer(path):
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise not_found(path, e) from None

def stop_hint(run, step):
    """After Ctrl-C or SIGTERM: the step reached, the last checkpoint and the command that resumes;
    exit code 130. After SIGUSR1 (stop_if_warned): the step just saved; exit code 75."""
    run.steps.close()
    out = run.out
    why, code = (("stopped by SIGUSR1 (a scheduler's warning) after step", PREEMPTED)
                 if WARNED["agreed"] else ("interrupted during step", 130))
    last = out / (out / "latest").read_text().strip() if (out / "latest").exists() else "none yet"
    argv = sys.argv[1:] + ([] if "--resume" in sys.argv else ["--resume"])
    # N ranks: one hint (the command resumes on one process; under torchrun, on any number)
    if rank() == 0:
        print(f"\n{why} {step}; last checkpoint: {last}\n"
              f"resume with: {shlex.join([sys.executable, sys.argv[0], *argv])}", file=sys.stderr)
    sys.exit(code)

# --- long runs on a shared cluster: one writer, disk, preemption, --wandb -------------------------
# start_run() runs once, after the data is checked and before any model loads:
#   one writer: rank 0 holds an exclusive flock on --out/.lock for the whole run (the kernel
#       releases it when the process dies, so a crash leaves no stale lock); a second process on the
#       folder is refused, naming the holder. Only rank 0: flock locks one open file, so ranks on
#       one node would lock each other out; the other ranks write only inside rank 0's checkpoint
#       folders, after a barrier rank 0 must reach.
#   disk: a checkpoint that can resume holds float32 weights and AdamW's two moments, 12 bytes a
#       parameter; one kept only for evaluation (older than the newest --keep) holds bf16 weights, 2
#       bytes a parameter. The first save must fit in the free space of --out, or the run is
#       refused; a run whose later saves would not fit is told.
#   signals: SIGUSR1 (SLURM's --signal=USR1@600 sends it 600 s before the time limit) lets the step
#       in progress end, writes a checkpoint and exits with PREEMPTED (75, sysexits' "temporary
#       failure": a batch script requeues on it); warned() sums the flag over the ranks every step,
#       so all ranks stop after the same step. SIGTERM, what a scheduler sends when it stops a job,
#       is Ctrl-C: stop at once and name the last checkpoint (exit 130).
#   --wandb PROJECT (rank 0): every metrics.jsonl line and the shown rollouts (a table), the flags
#       as config; the run id is kept in --out/wandb_id, so a resumed run continues the same wandb
#       run. wandb takes only increasing steps: steps redone after a crash keep their first values
#       there. Files go to --out/wandb (or $WANDB_DIR).
import errno, fcntl, secrets, signal, socket, threading
from contextlib import contextmanager

PREEMPTED = 75
# SIGUSR1 seen by this process / by some rank at the last warned()
WARNED = dict(signal=False, agreed=False)
# the lock's file descriptor; the wandb run (rank 0) and its table rows
LOCK, WANDB, ROWS = None, None, []
# bytes counted for what a checkpoint holds besides weights and AdamW: tokenizer, configs, headers
SLACK = 2**27

def start_run(out, args):
    global LOCK
    out.mkdir(parents=True, exist_ok=True)
    WARNED.update(signal=False, agreed=False)
    # (lab/run.py --jobs 0 runs main() in threads)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, lambda *_: WARNED.update(signal=True))
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C: KeyboardInterrupt
    # main() called again in this process (tests): let go of the last run's folder
    if LOCK is not None:
        os.close(LOCK)
        LOCK = None
    if rank() == 0:
        LOCK = lock_folder(out)
        check_disk(out, args)
        start_wandb(out, args)

def lock_folder(out):
    """-> the descriptor of --out/.lock, locked; a second process is refused with the
    holder written in it."""
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = (os.pread(fd, 200, 0).decode(errors="replace").strip()
                  or "a process that has not written its name")
        os.close(fd)
        raise UserError(f"--out {out} is in use by another run ({holder}): "
                        f"one run writes a folder at a time") from None
    except OSError as e:
        # a file system without flock (Lustre mounted without -o flock): run, but unguarded
        os.close(fd)
        print(f"note: {out} does not support file locks ({e.strerror}): "
              f"a second run there would not be refused")
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd

def checkpoint_bytes(model):
    """-> (resume, eval_only): the bytes of a checkpoint that can resume (float32 weights and AdamW,
    12 bytes a parameter) and of one kept for evaluation (bf16 weights, 2 bytes a parameter), from
    the model's config alone."""
    try:
        config = AutoConfig.from_pretrained(model)
    except OSError as e:
        raise not_found(model, e) from None
    # shapes only, no memory: counts a tied embedding once, as the files do
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return 12 * n + SLACK, 2 * n + SLACK

def check_disk(out, args):
    """Refuse a run whose first checkpoint cannot fit on --out; tell one whose later
    checkpoints would not."""
    start = (int((out / "latest").read_text().strip()[5:])
             if args.resume and (out / "latest").exists() else 0)
    saves = sum(1 for s in range(start + 1, args.steps + 1)
                if (args.save_every and s % args.save_every == 0) or s == args.steps)
    resume, eval_only = checkpoint_bytes(args.model)
    # a new checkpoint is complete before an old one goes
    kept = min(saves, args.keep + 1) if args.keep else saves
    peak, free = kept * resume + (saves - kept) * eval_only, shutil.disk_usage(out).free
    if saves and free < resume:
        raise UserError(f"--out {out}: {free / 1e9:.1f} GB free, the first checkpoint needs "
                        f"{resume / 1e9:.1f} GB (float32 weights and AdamW: 12 bytes a parameter)")
    if free < peak:
        print(f"note: this run's {saves} checkpoints need up to {peak / 1e9:.1f} GB "
              f"(--keep {args.keep}), {free / 1e9:.1f} GB are free on {out}")

@contextmanager
def room_or_stop(out, what, *partial):
    """A write that finds the disk (or the quota) full removes its partial files and stops with one
    line. Nothing older is touched: `latest` and the checkpoint it names stay as they were.
    transformers' own progress bars stay off meanwhile ("Writing model shards" would cut into the
    training bar at every checkpoint)."""
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    except Exception as e:
        # torch.save says "file write failed", safetensors "StorageFull": not always an OSError
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
            s in str(e) for s in ("No space left", "quota", "StorageFull", "file write failed"))
        if not full:
            raise
        last = (out / "latest").read_text().strip() if (out / "latest").exists() else "none yet"
        for p in partial:
            # a checkpoint renamed into place but not yet named by `latest` goes too
            if p.name != last:
                shutil.rmtree(p, ignore_errors=True)
        raise UserError(f"{out}: no space left to write {what}; removed what it wrote; the last "
                        f"checkpoint is still {last}: free some space, then resume") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()

def prune(out, keep):
    """Rank 0, after `latest` names a complete new checkpoint: all but the newest `keep` (0: none)
    lose their resume state (trainer.pt, optim/) and their weights are rewritten in bf16 for
    eval.py: 2 bytes a parameter instead of 12. The bf16 copy is written beside the folder, fsynced,
    then swapped in."""
    last = (out / "latest").read_text().strip()
    # up to `latest`; the newest `keep` of them stay
    resumable = sorted(f.parent for f in out.glob("step_*/trainer.pt")
                       if re.fullmatch(r"step_\d{6}", f.parent.name) and f.parent.name <= last)
    for folder in resumable[:-keep] if keep else []:
        (folder / "trainer.pt").unlink()
        shutil.rmtree(folder / "optim", ignore_errors=True)
        tmp, gone = (folder.with_name(folder.name + ".bf16.tmp"),
                     folder.with_name(folder.name + ".float32.old"))
        with room_or_stop(out, f"the bf16 weights of {folder.name}", tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(tmp)
            # tokenizer files (the weights' files all start with "model")
            for f in folder.iterdir():
                if not f.name.startswith("model") and not (tmp / f.name).exists():
                    shutil.copy2(f, tmp)
            for f in [*tmp.iterdir(), tmp]:
                fsync(f)
        os.replace(folder, gone)
        os.replace(tmp, folder)
        shutil.rmtree(gone)

def warned():
    """True on every rank once any rank has had SIGUSR1 (one all-reduce a step under torchrun)."""
    WARNED["agreed"] = all_sum(float(WARNED["signal"])) > 0
    return WARNED["agreed"]

def stop_if_warned(out, step):
    """After the checkpoint of the step in which SIGUSR1 came: stop as Ctrl-C does (the loop's
    `except`), but stop_hint then names the step saved and exits PREEMPTED."""
    if WARNED["agreed"]:
        if WANDB is not None:
            WANDB.mark_preempting()  # shown as preempted, not failed
        raise KeyboardInterrupt

def start_wandb(out, args):
    global WANDB
    if WANDB is not None:  # main() called again in this process (tests)
        WANDB.finish()
        WANDB = None
    ROWS.clear()
    if not args.wandb:
        return
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install wandb") from None
    run_id = ((out / "wandb_id").read_text().strip() if (out / "wandb_id").exists()
              else secrets.token_hex(4))
    write_atomic(out / "wandb_id", run_id)
    WANDB = wandb.init(project=args.wandb, id=run_id, resume="allow", name=out.name,
                       config=vars(args), dir=os.environ.get("WANDB_DIR", out))

def write_metrics(log, m):
    """Rank 0: the step's metrics as one JSON line, on the disk (fsync) before the next
    step; to --wandb too."""
    if rank() > 0:
        return
    with room_or_stop(Path(log.name).parent, f"metrics.jsonl (step {m['step']})"):
        log.write(json.dumps(m) + "\n")
        log.flush()
        os.fsync(log.fileno())
    if WANDB is not None:
        WANDB.log(m, step=m["step"])

def logged_rollout(step, tok, problem, r, color):
    """show_rollout's text; with --wandb also a row of the `rollouts` table
    (the junior's text in [[brackets]])."""
    if WANDB is not None:
        import wandb
        ROWS.append([step, r["reward"], show_rollout(tok, problem, r, color=False)])
        WANDB.log({"rollouts": wandb.Table(columns=["step", "reward", "rollout"], data=ROWS)},
                  step=step)
    return show_rollout(tok, problem, r, color)

# --------------------------------------------------------------------------------------------------
# Appendix: the answer checker behind reward() (read it last; the story does not depend on it)
# reward(completion, gold) is 1.0 when the final \boxed{} answer of the completion (its last box,
# with the boxes joined to it by separators) means the same as the gold answer (or one of a list of
# them, or one of the answers a gold in words spells out: 'C(10, 5), or equivalently 252'), else
# 0.0. Model text never reaches eval(): a whitelist tokenizer and a small recursive-descent parser
# build sympy objects directly, every size that makes sympy slow is capped before building, and
# equality is decided by exact rationals, sympy's canonical form, and a numeric check at random
# points done by our own bounded mpmath evaluator.
# Policies (percent, units, tolerance, lists vs tuples, spacing, golds in words, ...) are listed in
# docs/checker.md.
# Pipeline: extraction (final_answer) -> normalisation (_normalize) -> parser (_Parser, _parse) ->
# equality (_equal).

MAX_ANSWER = 1000        # longer answers are only compared as plain strings
MAX_BOX_SCAN = 10_000    # a \boxed{ not closed within this many chars is no answer
MAX_BOXES = 50           # boxes joined into one answer
MAX_TERMS = 1000         # a \sum or \prod with numeric bounds is evaluated up to this many terms
MAX_DEPTH = 40           # parser nesting depth
MAX_BITS = 100_000       # largest exact rational we build (~30k digits)
MAX_ROOT_BITS = 512      # sympy factors radicands and function arguments: keep them small
MAX_EXP = 10_000         # largest numeric exponent
MAX_FACTORIAL = 5000
MAX_MAG = 10**6          # numeric values stay within 2^(+-MAX_MAG)
# CPU seconds of the calling thread per comparison, checked inside our own loops
TIME_BUDGET = 0.4
REL_TOL = Fraction(1, 10**4)  # decimal answer vs exact value: ~4-5 significant digits
TIGHT_TOL = 1e-25        # exact vs exact, evaluated with 40 digits

class _Fail(Exception):
    pass

def _check(ok, why="unsupported"):
    if not ok:
        raise _Fail(why)

# thread CPU time, not the wall clock: a busy or paused machine costs no right answer its reward
def _tick(deadline):
    _check(time.thread_time() < deadline, "out of time")

# --- extraction: the last box, with the boxes joined to it only by separators ---------------------
_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BARE = re.compile(r"\\(?:boxed|fbox)[ \t]+([^\s$]+)")
_BRACE = re.compile(r"\\[{}]|[{}]")  # \{ and \} are escaped braces, not grouping
# commas, and/or, \quad, \text{ and }, labels "y_2 ="; the alternatives are disjoint, so matching
# stays linear
_GAP = re.compile(r"(?:\s|[,;.&$]|\\[()\[\]\\,;: !]|\\q?quad|\b(?:and|or)\b"
                  r"|\b(?!and\b|or\b)[a-zA-Z]+\s(?=\s*(?:and|or)\b)"
                  r"|\\text(?:rm|normal)?\s*\{(?:\s|[,;.]|\b(?:and|or|for|parts?)\b|\(\w\))*\}"
                  r"|[a-zA-Z](?:_\{?\w+\}?)?\s*=)*")

def _box_at(text, i):
    """(content, end) of the box starting at text[i]; (None, i) when it is not
    closed within MAX_BOX_SCAN."""
    m = _OPEN.match(text, i)
    if not m:  # "\boxed 5": the next run of non-space characters
        m = _BARE.match(text, i)
        return (m.group(1), m.end()) if m else (None, i)
    depth = 1
    for b in _BRACE.finditer(text, m.end(), m.end() + MAX_BOX_SCAN):
        depth += {"{": 1, "}": -1}.get(b.group(), 0)
        if depth == 0:
            return text[m.end():b.start()], b.end()
    return None, i

def final_answer(text):
    """The last box's content; with earlier boxes joined to it only by separators, all of them
    as a list ('\\boxed{3} and \\boxed{-5}' is '3, -5'). No box, or an unclosed last one
    (truncated), is None."""
    parts, i = [], len(text)
    for j in reversed([m.start() for m in _BOX.finditer(text)][-MAX_BOXES:]):
        c, end = _box_at(text, j)
        if c is None or end > i or (parts and (i - end > 200 or not _GAP.fullmatch(text, end, i))):
            break  # unclosed, nested, or a box from an earlier, separate step
        parts, i = [c] + parts, j
    return ", ".join(parts) if parts else None

# --- normalisation: spellings that do not change the answer -----------------------------------
_UNICODE = {"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ",
            "\u00f7": "\\div ", "\u03c0": "\\pi ", "\u221a": "\\sqrt", "\u221e": "\\infty ",
            "\u2264": "\\le ", "\u2265": "\\ge ", "\u00b0": "", "\u222a": "\\cup ",
            "\u00b1": "\\pm ", "\u20ac": "", "\u2032": "'", "\u00b2": "^2", "\u00b3": "^3"}

def _repeating(m):  # 0.1\overline{6} is (16 - 1) / 90 = 1/6
    whole, fixed, rep = m.groups()
    top = int(whole + fixed + rep) - int(whole + fixed or 0)
    return rf"\frac{{{top}}}{{{10 ** len(fixed) * (10 ** len(rep) - 1)}}}"

_RULES = [(re.compile(p), r) for p, r in [
    (r"(?<=\d)\s*(?:[kcdm]?m|ft|in)[\u00b2\u00b3]$", ""),         # a unit glyph: 1,000.99 m²
    # a doubled backslash: \\dfrac is \dfrac
    (r"\\\\(?=[a-zA-Z{}%$])", r"\\"),
    (r"\\\$|\$", ""),                                             # $...$ and dollar signs
    (r"^\\[(\[]|\\[)\]]$", ""),                                   # \( ... \), \[ ... \]
    (r"^\((\\begin\{([pb]?matrix)\}.*\\end\{\2\})\)$", r"\1"),    # a matrix in parentheses
    (r"\*\*", "^"),                                               # Python's power: 3*s**2
    (r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])|\\(?:display|text)style", ""),
    (r"\\[dtc]frac", r"\\frac"),
    (r"\\[dt]binom(?![a-zA-Z])", r"\\binom"),                     # \dbinom, \tbinom
    (r"\{([^{}]+?)\\choose\s*([^{}]+)\}", r"\\binom{\1}{\2}"),     # {10 \choose 5}
    (r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}"),                 # \frac12
    # a repeating decimal: 0.\overline{3}
    (r"(?<![\d.])(\d*)\.(\d*)\\(?:overline|bar)\s*\{(\d+)\}", _repeating),
    (r"(?<=\d),\\!\s*(?=\d{3}(?!\d))", ""),                       # 11,\!111,\!100 and 20,\!000
    (r"(?<!\\)\\!|\{,\}|(?<=\d)\\,(?=\d{3}(?!\d))", ""),          # \!, 10{,}000, 10\,000
    (r"(?<!\\)\\[,;: ]|\\q?quad|~", " "),                         # spacing
    (r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", ""),             # degrees dropped: 30^\circ == 30
    (r"\^\s*\{?\\prime\}?", "'"),                                 # f^{\prime} is f'
    # percent sign dropped (see _readings)
    (r"\\?%", ""),
    (r"\\emptyset|\\varnothing", r"\\{\\}"),
    (r"\\mathbb\{R\}", r"(-\\infty,\\infty)"),
    (r"(^|,)\s*([a-zA-Z](?:_\{?\w+\}?)?)\s*\\approx", r"\1\2="),   # "x \approx 0.33" is x = 0.33
    # "\frac13 \approx 0.33" is \frac13, per item
    (r"(?<=\S)\s*\\approx[^,]*", ""),
    # a trailing \text{ cm}, \mbox{ square units}^2 ... after a number is a unit
    (r"(?<=[\w})])\s*\\(?:text(?:normal|rm)?|mbox|mathrm)"
     r"\s*\{\s*[a-zA-Z][a-zA-Z\s.]*\}(?:\^\{?[23]\}?)?\s*$", ""),
    # \cdot\mathrm{s}: not \cdots
    (r"(\\[a-zA-Z]+)\s*(?=\\(?:text|mbox|math|boldsymbol|operatorname))", r"\1 "),
    (r"\\(?:text(?:bf|it|rm|normal)?|mbox|math(?:rm|bf|it)|boldsymbol|operatorname)"
     r"\s*\{([^{}]*)\}", r"\1"),
    # "2, 3, and 4" is a list
    (r"(?:\s*,)?\s+(?:and|or)\s+|(?<=[)\]])\s*(?:and|or)\s*(?=[(\[])", ", "),
    (r"(?<![\\a-zA-Z])(sqrt|pi|infty|sin|cos|tan|ln|log|exp)(?![a-zA-Z])", r"\\\1"),
    (r"(?<=[\d})])\s+(?:[a-zA-Z]{2,}\b\.?\s*)+(?:\^\{?[23]\}?)?$", ""),  # "5 square units"
    (r"^\s*=|[\s.,;]+$", ""),                                     # leading '=', trailing period
    (r"\s+", " "),
]]

def _normalize(s):
    s = " ".join(s.split())  # collapse whitespace first: keeps the rules below linear
    for pat, rep in _RULES[:2] if "\\begin" not in s else _RULES[:1]:  # matrix rows end in \\
        s = pat.sub(rep, s)
    for u, r in _UNICODE.items():
        s = s.replace(u, r)
    for _ in range(2):  # twice, for nested \text{\textbf{...}}
        for pat, rep in _RULES[2:]:
            s = pat.sub(rep, s.strip())
    # 10,000 and 10 000; not "32, 349"
    if re.fullmatch(r"-?\d{1,3}(?:([, ])\d{3})(?:\1\d{3})*(?:\.\d+)?", s):
        s = re.sub("[, ]", "", s)
    return s.strip()

_SPACE = re.compile(r"(\\[a-zA-Z]+ (?=[a-zA-Z])|\d (?=\d))| ")

def _squeeze(s):
    """s without the spaces LaTeX ignores (\\cos \\theta is \\cos\\theta, \\frac {a}{b} is
    \\frac{a}{b}); a space that ends a command before a letter (\\alpha b is not \\alphab) or
    separates digits (2 3 is not 23) stays."""
    return _SPACE.sub(r"\1", s)

def _words(s):
    """Text as compared: letters and digits, case ignored; a command stays one token, its case kept
    (\\alpha b is not \\alphab, \\Delta is not \\delta)."""
    return [t if t[0] == "\\" else t.lower() for t in re.findall(r"\\[a-zA-Z]+|[a-zA-Z0-9]", s)]

def _is_text(s):
    """Words (3+ letters, or an all-letter answer like 'no') are text, not a product like x*y*z."""
    s = re.sub(r"\\(?:begin|end)\{\w+\}|_\{\w+\}", "", s)  # S_{MBCN} is a name
    return bool(re.search(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}", s)
                or re.fullmatch(r"[a-zA-Z ]*[a-zA-Z]{2}[a-zA-Z ]*", s))

def _choice(s):
    """Multiple-choice label: '(C) 12' -> ('C', '12'), 'C' -> ('C', ''),
    anything else -> (None, s)."""
    m = re.fullmatch(r"\(([A-E])\)\s*(.*)|([A-E])", s)
    if not m or re.search(r"^,|\([A-E]\)", m.group(2) or ""):  # "(C), (D)" is no single choice
        return None, s
    return m.group(1) or m.group(3), m.group(2) or ""

def _decimals(s):
    """Most digits after a decimal point in s, or None when s has no decimal number."""
    found = re.findall(r"\d*\.(\d+)", s)
    return max(map(len, found)) if found else None

# --- LaTeX -> sympy through a whitelist, with sizes capped before sympy sees them ----------------
_TOKEN = re.compile(r"\s*((?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?|\\[a-zA-Z]+|<=|>=|[a-zA-Z]"
                    r"|[-+*/^_!()\[\]{}|=<>:'])")
_FUNCS = {"sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "cot": sp.cot, "sec": sp.sec, "csc": sp.csc,
          "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan, "sinh": sp.sinh, "cosh": sp.cosh,
          "tanh": sp.tanh, "ln": sp.log, "log": sp.log, "exp": sp.exp}  # \log is the natural log
_INVERSE = {"sin": sp.asin, "cos": sp.acos, "tan": sp.atan}  # \sin^{-1} x is arcsin x
_CONSTS = {"pi": sp.pi, "infty": sp.oo}
_GREEK = set("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta kappa lambda mu "
             "nu xi rho sigma tau phi varphi chi psi omega Gamma Delta Theta Lambda Sigma Phi Psi "
             "Omega".split())
_RELOPS = {"=": "=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "\\lt": "<", "\\gt": ">",
           "\\le": "<=", "\\leq": "<=", "\\leqslant": "<=", "\\ge": ">=", "\\geq": ">=",
           "\\geqslant": ">="}
_STARTS = ("frac", "sqrt", "binom", "lfloor", "lceil", "overline", "bar", "sum", "prod")
# x = .., f(x) = ..
_LONE = re.compile(r"\s*(?:[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-zA-Z, ]*\))?|\\[a-zA-Z]+)\s*=")

def _bits(r):
    return r.p.bit_length() + r.q.bit_length()

def _small(e):
    """Refuse exact numbers too big to keep computing with
    (sympy puts the rational coefficient first)."""
    r = e if e.is_Rational else (e.args[0] if e.args and e.args[0].is_Rational else None)
    _check(r is None or _bits(r) <= MAX_BITS, "number too big")
    return e

def _pow(b, x, parser):
    """b^x, refused when sympy would eagerly build a huge number or factor a big radicand."""
    if x.is_Number:
        _check(abs(x) <= MAX_EXP, "exponent too big")
        if b.is_number and b not in (0, 1, -1):
            bits = sum(_bits(r) for r in b.atoms(sp.Rational))
            _check(abs(x) * bits <= MAX_BITS, "power too big")
            if b.is_Rational and not x.is_Integer:  # roots get factored, products of roots together
                parser.root_bits += bits
                _check(parser.root_bits <= MAX_ROOT_BITS, "radicand too big")
    return _small(sp.Pow(b, x))

def _div(n, d):
    _check(d != 0, "division by zero")
    return _small(n / d)

def _call(f, *args):
    for a in args:  # sympy factors big integer arguments: log(10^30000) never returns
        _check(all(_bits(r) <= MAX_ROOT_BITS for r in a.atoms(sp.Rational)), "argument too big")
    return f(*args)

class _Parser:
    """Recursive descent: relation > sum > product (explicit or implicit) > sign > power > atom."""

    def __init__(self, s, sign, deadline):
        self.toks = _TOKEN.findall(s)
        # anything off the whitelist
        _check("".join(self.toks) == "".join(s.split()), "bad character")
        (self.i, self.sign, self.deadline, self.depth, self.bars,
         self.root_bits) = 0, sign, deadline, 0, 0, 0
        self.bound = {}

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want=None):
        t = self.peek()
        _check(t is not None and want in (None, t), f"expected {want}")
        self.i += 1
        return t

    def accept(self, t):
        return self.peek() == t and bool(self.take())

    def nest(self, d):
        self.depth += d
        _check(self.depth <= MAX_DEPTH, "too deep")
        _tick(self.deadline)

    def sgn(self, op):  # which branch of \pm we are parsing decides \pm and \mp
        return {"+": 1, "-": -1, "\\pm": self.sign, "\\mp": -self.sign}[op]

    def relation(self, lone):
        exprs, ops = [self.ratio()], []
        while self.peek() in _RELOPS:
            ops.append(_RELOPS[self.take()])
            exprs.append(self.ratio())
        _check(self.peek() is None, "trailing input")
        if not ops:
            return ("expr", exprs[0])
        # x = 6/2 = 3 reads as x = 3; AB = 4 and log_6 216 = 3 have a value too
        if set(ops) == {"="}:
            return ("eq", exprs[0], exprs[-1], lone or _named(exprs[0])
                    or not (exprs[0].free_symbols or exprs[-1].free_symbols))
        return _interval(exprs, ops)

    def ratio(self):  # a ratio a:b is the number a/b
        e = self.expr()
        return _div(e, self.expr()) if self.accept(":") else e

    def expr(self):
        self.nest(1)
        e = self.term()
        while self.peek() in ("+", "-", "\\pm", "\\mp"):
            e = _small(e + self.sgn(self.take()) * self.term())
        self.nest(-1)
        return e

    # implicit product: 2x, 3\sqrt{2}, (a+b)(a-b); never "2 3"
    def starts_factor(self, t, funcs=True):
        if t is None or t[0].isdigit() or t[0] == ".":
            return False
        if t[0] == "\\":
            return t[1:] in _STARTS or t[1:] in _CONSTS or t[1:] in _GREEK or (
                funcs and t[1:] in _FUNCS)
        return t.isalpha() or t in ("(", "{") or (t == "|" and self.bars == 0)

    def term(self):
        e = self.unary()
        while True:
            t = self.peek()
            if t in ("*", "\\cdot", "\\times", "/", "\\div"):
                self.take()
                f = self.unary()
                e = _div(e, f) if t in ("/", "\\div") else _small(e * f)
            elif self.starts_factor(t) or (t and t[0].isdigit()
                                           and self.toks[self.i - 1] == ")"):  # (n-2)2^n
                e = _small(e * self.power())
            else:
                return e

    def unary(self):  # -x, --x, \pm x (a loop, so no recursion depth to guard)
        s = 1
        while self.peek() in ("+", "-", "\\pm", "\\mp"):
            s *= self.sgn(self.take())
        return s * self.power()

    def power(self):
        e = self.atom(mixed=True)
        while self.accept("!"):
            _check(not e.is_Integer or 0 <= e <= MAX_FACTORIAL, "factorial too big")
            e = sp.factorial(e)
        return _pow(e, self.exponent(), self) if self.accept("^") else e

    def exponent(self):  # ^2, ^{2n}, and the sloppy ^-1
        return -self.arg() if self.accept("-") else self.arg()

    def group(self, close):
        e = self.expr()
        self.take(close)
        return e

    def arg(self):  # argument of \frac, \sqrt, ^, _: a {group} or a single atom
        return self.group("}") if self.accept("{") else self.atom()

    def atom(self, mixed=False):
        self.nest(0)
        t = self.take()
        if t[0].isdigit() or t[0] == ".":
            if self.accept("_"):  # a number base: 52_8 is the digits 52 in base 8, never a value
                return sp.Symbol(t + "_" + str(self.name_arg()))
            t, x = (t.split("e") + ["0"])[:2]  # e-notation: 4.5e33, 1e-5 (never Euler's e)
            _check(abs(int(x)) <= MAX_EXP, "exponent too big")
            # exact: 0.1 is 1/10
            f, ahead = Fraction(t) * Fraction(10) ** int(x), self.toks[self.i:self.i + 7]
            if mixed and t.isdigit() and ahead[:2] == ["\\frac", "{"] and ahead[3::3] == ["}", "}"]:
                p, q = ahead[2], ahead[5]  # mixed number: 2\frac{1}{4} is 9/4
                if p.isdigit() and q.isdigit() and 0 < int(p) < int(q):
                    f, self.i = f + Fraction(int(p), int(q)), self.i + 7
            return _small(sp.Rational(f.numerator, f.denominator))
        if t.isalpha() or t[1:] in _GREEK:
            return self.name(t.lstrip("\\"))
        if t in ("(", "[", "{"):
            return self.group({"(": ")", "[": "]", "{": "}"}[t])
        if t == "|":
            self.bars += 1
            e = _call(sp.Abs, self.group("|"))
            self.bars -= 1
            return e
        name = t[1:]
        if name in ("lfloor", "lceil"):
            return _call(sp.floor if name == "lfloor" else sp.ceiling, self.group("\\r" + name[1:]))
        if name in ("overline", "bar"):  # \overline{AB}: a name
            return sp.Symbol(f"bar({self.name_arg(letter=True)})")  # never 0.\overline{3}
        if name in ("sum", "prod"):
            return self.big_op(name)
        if name == "frac":
            return _div(self.arg(), self.arg())
        if name == "sqrt":
            n = self.group("]") if self.accept("[") else sp.Integer(2)
            x = self.arg()
            _check(n.is_Integer and n > 0, "bad root index")
            if x.is_Rational and x < 0 and n % 2:  # \sqrt[3]{-8} is -2, the real root
                return -_pow(-x, 1 / n, self)
            return _pow(x, 1 / n, self)
        if name == "binom":  # sympy expands binomial(sqrt(2), 5000): evaluate small integers only
            n, k = self.arg(), self.arg()
            small = all(v.is_Integer and abs(v) <= MAX_FACTORIAL for v in (n, k))
            return sp.binomial(n, k, evaluate=small)
        if name in _FUNCS:
            return self.function(name)
        if name in _CONSTS:
            return _CONSTS[name]
        _check(False, "unknown command " + t)

    # a {group} or one token of letters and digits only, as written
    def name_arg(self, letter=False):
        toks = self.group_tokens() if self.peek() == "{" else [self.take()]
        _check(toks and all(x.isalnum() for x in toks) and (toks[0][0].isalpha() or not letter),
               "bad name")
        return "".join(toks)

    def group_tokens(self):
        self.take("{")
        j = self.toks.index("}", self.i)  # ValueError if unclosed: caught as not equal
        toks, self.i = self.toks[self.i:j], j + 1
        return toks

    def name(self, t):  # x, x_1, a_{n}, \rho_0, f' as one symbol; F_{n-k-1} as F applied to n-k-1
        if self.accept("_"):
            if self.peek() != "{" or all(
                    x.isalnum() for x in self.toks[self.i + 1:self.toks.index("}", self.i)]):
                sub = self.name_arg()
                # a_k in \sum_{k=1}^{3} a_k
                return self.primes(t + "_" + str(self.bound.get(sub, sub)))
            return sp.Function(t)(self.arg())
        if t in self.bound:  # the index of an enclosing \sum with numeric bounds
            return self.bound[t]
        return self.primes(t) if self.peek() == "'" or t not in "ei" else {"e": sp.E, "i": sp.I}[t]

    def primes(self, t):
        while self.accept("'"):
            t += "'"
        return sp.Symbol(t)

    # \sum_{k=1}^{n} body: summed when the bounds are small numbers, else kept as written
    def big_op(self, name):
        self.take("_")
        self.take("{")
        k = sp.Symbol(self.take())
        _check(k.name.isalpha(), "bad index")
        self.take("=")
        lo = self.group("}")
        self.take("^")
        hi, start = self.arg(), self.i
        if not (lo.is_Integer and hi.is_Integer and hi - lo < MAX_TERMS):
            return (sp.Sum if name == "sum" else sp.Product)(self.term(), (k, lo, hi))
        e = sp.Integer(name == "prod")
        # the body parsed again with k = v: every size cap still applies
        for v in range(int(lo), int(hi) + 1):
            self.i, self.bound[k.name] = start, sp.Integer(v)
            e = _small(e + self.term() if name == "sum" else e * self.term())
        self.bound.pop(k.name, None)
        if lo > hi:  # an empty range: skip its body
            self.term()
        return e

    def function(self, name):
        f, p = _FUNCS[name], (self.exponent() if self.accept("^") else None)  # \sin^2 x
        if p == -1 and name in _INVERSE:
            f, p = _INVERSE[name], None
        base = self.arg() if name == "log" and self.accept("_") else None  # \log_2 8
        if self.peek() in ("(", "{"):
            x = self.atom()
        else:  # \sin 2x is sin(2x); \sin x \cos x is sin(x)cos(x)
            x = self.power()
            while self.starts_factor(self.peek(), funcs=False):
                x = x * self.power()
        y = _call(f, x) if base is None else _call(sp.log, x, base)
        return y if p is None else _pow(y, p, self)

def _named(e):
    """A quantity named by letters: x, AB, NO/BO, |AB|; its equation 'AB = 4' gives the value 4."""
    if e.is_Pow:
        return e.exp == -1 and _named(e.base)
    return e.is_Symbol or (e.func in (sp.Mul, sp.Abs) and all(_named(x) for x in e.args))

def _interval(exprs, ops):
    """x > 3 -> (3, oo); -1 <= x < 2 -> [-1, 2)."""
    if all(o[0] == ">" for o in ops):
        exprs, ops = exprs[::-1], [o.replace(">", "<") for o in ops[::-1]]
    _check(all(o[0] == "<" for o in ops) and len(exprs) in (2, 3), "not an interval")
    if len(exprs) == 2:
        exprs, ops = (([-sp.oo] + exprs, ["<"] + ops) if exprs[0].is_Symbol
                      else (exprs + [sp.oo], ops + ["<"]))
    _check(bool(exprs[1].free_symbols), "not an interval")  # x, or f(x) in 0 < f(x) < 1
    brackets = ("[" if ops[0] == "<=" else "(") + ("]" if ops[1] == "<=" else ")")
    return ("tuple", brackets, [("expr", exprs[0]), ("expr", exprs[2])])

# --- answer structure ---------------------------------------------------------------------------
# A parsed answer is ("expr", e) | ("eq", lhs, rhs, lhs_is_a_name) | ("tuple", brackets, items)
# | ("set", items) | ("mat", shape, items). Bare lists, \{...\}, \cup and \pm make sets.
def _split(s, sep):
    """Split s at top-level occurrences of sep, ignoring anything inside brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        depth += (s[i] in "([{") - (s[i] in ")]}")
        if depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i].strip())
            start = i = i + len(sep)
        else:
            i += 1
    return parts + [s[start:].strip()]

def _wrapped(s):
    """True when the bracket opening s closes at its last character: '(1,2)' but not '(1)(2)'."""
    depth = 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0:
            return i == len(s) - 1
    return False

def _items(parts, deadline, depth):
    """Parse list items; an item with \\pm gives both values: "1 \\pm 2, 5" is {3, -1, 5}."""
    vals = [_parse(p, deadline, depth + 1) for p in parts]
    return [x for v in vals for x in (v[1] if v[0] == "set" else [v])]

def _parse(s, deadline, depth=0):
    _check(depth < 8, "too deep")
    _tick(deadline)
    m = re.match(r"(?:[a-zA-Z]|\([a-zA-Z, ]+\))\s*(?:\\in|=)\s*(?=[(\[]|\\\{)", s)  # x \in [1,2)
    if m:
        v = _parse(s[m.end():], deadline, depth + 1)
        if v[0] != "expr":
            return v
    parts = _split(s, ";")
    if len(parts) > 1:  # -12; -11; -10 and p=5, q=2; p=7, q=2
        return ("set", [_parse(p, deadline, depth + 1) for p in parts])
    parts = _split(s, ",")
    parts = parts if len(parts) > 1 else _split(s, "\\cup")
    if len(parts) > 1:  # a bare list is unordered: "enter all the solutions"
        return ("set", _items(parts, deadline, depth))
    b = 2 if s.startswith("\\{") and s.endswith("\\}") else 1 if s[:1] + s[-1:] == "{}" else 0
    # \{1, 2\} and {1, 2}
    if b and _wrapped(s[b - 1:]) and (b == 2 or len(_split(s[1:-1], ",")) > 1):
        inner = s[b:-b].strip()
        return ("set", _items(_split(inner, ","), deadline, depth) if inner else [])
    if s[:1] in ("(", "[") and s[-1:] in (")", "]") and _wrapped(s):
        items = _split(s[1:-1], ",")
        items = items if len(items) > 1 else _split(s[1:-1], ";")  # (0; -2; 6) is (0, -2, 6)
        if len(items) > 1:  # ordered pair or interval: the brackets matter
            return ("tuple", s[0] + s[-1], [_parse(p, deadline, depth + 1) for p in items])
    m = re.fullmatch(r"\\begin\{([pb]?matrix)\}(.*)\\end\{\1\}", s, re.S)
    if m:
        rows = [r.split("&") for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        _check(rows and all(len(r) == len(rows[0]) for r in rows), "ragged matrix")
        return ("mat", (len(rows), len(rows[0])),
                [_parse(c.strip(), deadline, depth + 1) for r in rows for c in r])
    signs = (1, -1) if re.search(r"\\(?:pm|mp)(?![a-zA-Z])", s) else (1,)
    vals = [_Parser(s, sign, deadline).relation(bool(_LONE.match(s))) for sign in signs]
    return vals[0] if len(vals) == 1 else ("set", vals)

# --- equality -----------------------------------------------------------------------------------
_MPFUNCS = {sp.sin: "sin", sp.cos: "cos", sp.tan: "tan", sp.cot: "cot", sp.sec: "sec",
            sp.csc: "csc", sp.asin: "asin", sp.acos: "acos", sp.atan: "atan", sp.sinh: "sinh",
            sp.cosh: "cosh", sp.tanh: "tanh", sp.exp: "exp", sp.log: "log", sp.Abs: "fabs",
            sp.factorial: "factorial", sp.binomial: "binomial", sp.floor: "floor",
            sp.ceiling: "ceil"}
_MPCONSTS = {sp.pi: "pi", sp.E: "e", sp.I: "j"}

def _eval(e, env, ctx, deadline):
    """Numeric value of a sympy tree at fixed precision; values beyond 2^MAX_MAG are refused."""
    _tick(deadline)
    if e.is_Symbol:
        return env[e]
    if e.is_Rational:
        return ctx.mpf(e.p) / e.q
    if e in _MPCONSTS:
        return getattr(ctx, _MPCONSTS[e])
    args = [_eval(a, env, ctx, deadline) for a in e.args]
    if e.is_Add:
        v = ctx.fsum(args)
    elif e.is_Mul:
        v = ctx.fprod(args)
    elif e.is_Pow:
        b, x = args
        _check(b == 0 or abs(x) * abs(ctx.log(abs(b), 2)) <= MAX_MAG, "too big")
        v = ctx.power(b, x)
    else:
        name = _MPFUNCS.get(e.func)
        _check(name is not None, "no numeric value")
        _check(name in ("log", "fabs") or all(abs(a) <= 10**5 for a in args), "argument too big")
        v = getattr(ctx, name)(*args)
    _check(ctx.isfinite(v) and (v == 0 or abs(ctx.mag(v)) <= MAX_MAG), "not finite")
    return v

def _samples(f, g, deadline, want=3):
    """(f, g) values at `want` random points (one if constant); [] if they cannot be evaluated."""
    ctx = mpmath.MPContext()  # a private context: mpmath changes precision while it works
    ctx.dps = 40
    syms = sorted(f.free_symbols | g.free_symbols, key=str)
    want, rng, out = (want if syms else 1), random.Random(0), []
    for _ in range(3 * want):
        _tick(deadline)
        env = {s: ctx.mpf(rng.choice((-1, 1)) * rng.randint(30, 300)) / 97 for s in syms}
        try:
            out.append((_eval(f, env, ctx, deadline), _eval(g, env, ctx, deadline)))
        except Exception:  # undefined or too big at this point: try another one
            continue
        if len(out) == want:
            return out
    return []

def _close(x, y, tol):  # relative, never absolute: 1/2004! is not 1/2006!
    return abs(x - y) <= tol * max(abs(x), abs(y))

def _same_expr(a, b, k, deadline):
    if a == b:  # sympy's canonical forms agree
        return True
    if a.is_Rational and b.is_Rational:  # exact, except a decimal against a fraction it rounds
        fa, fb = Fraction(a.p, a.q), Fraction(b.p, b.q)
        exact = k is None or ((fa * 10**k).denominator == 1 and (fb * 10**k).denominator == 1)
        return not exact and abs(fa - fb) <= REL_TOL * max(abs(fa), abs(fb))
    if (a - b).is_Rational:  # sympy cancelled all but a nonzero number: sqrt(N) + 1 vs sqrt(N)
        return False
    tol = TIGHT_TOL if k is None else float(REL_TOL)
    pts = _samples(a, b, deadline)
    return bool(pts) and all(_close(x, y, tol) for x, y in pts)

def _labels(v):
    """The values, in order, of a list of name = value items with distinct names ('k = 45, n = 2');
    else None."""
    items = v[1] if v[0] == "set" else []
    names = {x[1] for x in items if x[0] == "eq" and x[3]}
    return [("expr", x[2]) for x in items] if len(items) > 1 and len(names) == len(items) else None

def _distinct(items):  # a list names each item once: "1, 2, 2" is {1, 2}
    return [x for i, x in enumerate(items) if x not in items[:i]]

def _equal(a, b, k, deadline):
    _tick(deadline)
    if _labels(a) is None:
        a, b = b, a
    # labelled parts vs bare values: the values, in order
    if _labels(a) is not None and _labels(b) is None:
        ys = b[2] if b[0] == "tuple" and b[1] == "()" else b[1] if b[0] == "set" else []
        return len(ys) == len(a[1]) and all(y[0] != "eq" and _equal(x, y, k, deadline)
                                            for x, y in zip(_labels(a), ys))
    if a[0] == "eq" and b[0] != "eq":
        a, b = b, a
    if b[0] == "eq" and a[0] != "eq":  # "x = 3" vs "3": the value of the named unknown
        return b[3] and _equal(a, ("expr", b[2]), k, deadline)
    if "set" in (a[0], b[0]):  # unordered sets: each distinct item matched once
        xs, ys = (_distinct(v[1] if v[0] == "set" else [v]) for v in (a, b))
        if len(xs) != len(ys):
            return False
        ys = list(ys)
        for x in xs:  # an identical item if there is one (cheap), else any equal one
            j = next((j for j, y in enumerate(ys) if y == x), None)
            j = (next((j for j, y in enumerate(ys) if _equal(x, y, k, deadline)), None)
                 if j is None else j)
            if j is None:
                return False
            ys.pop(j)
        return True
    if a[0] != b[0] or (a[0] in ("tuple", "mat") and a[1] != b[1]):
        return False  # different kinds, brackets or shapes
    if a[0] == "expr":
        return _same_expr(a[1], b[1], k, deadline)
    if a[0] in ("tuple", "mat"):
        return len(a[2]) == len(b[2]) and all(_equal(x, y, k, deadline) for x, y in zip(a[2], b[2]))
    if a[3] and b[3] and a[1] == b[1]:  # y = 2x+3 vs y = 3+2x
        return _same_expr(a[2], b[2], k, deadline)
    # log_6 216 = 3
    if not (a[1].free_symbols | a[2].free_symbols | b[1].free_symbols | b[2].free_symbols):
        return any(_same_expr(a[1], x, k, deadline) and _same_expr(a[2], y, k, deadline)
                   for x, y in ((b[1], b[2]), (b[2], b[1])))
    # other equations: L1 - R1 = c (L2 - R2) for a constant c != 0 (scaled, sides swapped)
    pts = _samples(a[1] - a[2], b[1] - b[2], deadline)
    ratios = [x / y for x, y in pts if y != 0]
    tol = TIGHT_TOL if k is None else float(REL_TOL)
    return (len(pts) == len(ratios) > 1 and ratios[0] != 0
            and all(_close(r, ratios[0], tol) for r in ratios))

def _readings(v, percent):  # 25\% may be written 25 or 0.25
    return [v, ("expr", v[1] / 100)] if percent and v[0] == "expr" else [v]

_EQUIV = re.compile(r"\s*(?:[,;]\s*|(\()\s*)?(?:or\s+)?(?<![a-zA-Z])"
                    r"(?:equivalently|i\.\s?e\.),?\s*")
_APPROX = re.compile(r"(?<=\S)\s*[,(]?\s*(?:or\s+)?(?<![\\a-zA-Z])"
                     r"(?:approx(?:imately|\.)?|roughly|about|\u2248)\s*"
                     r"(?=[-+$\\\d.]).*", re.S)

def _alternatives(gold):
    """The answers a gold in words spells out, each accepted: 'X, or equivalently Y' and
    'X (i.e., Y)' are X and Y. An approximation after a formula is dropped, never accepted:
    '5/14, or approximately 35.7%' is 5/14."""
    # nearly every gold: one regex
    if not re.search(r"equivalently|i\.\s?e\.|approx|roughly|about|\u2248", gold):
        return [gold]
    parts, alts = _EQUIV.split(gold), []
    for paren, alt in zip([None] + parts[1::2], parts[::2]):
        alt = alt[:-1] if paren and alt.endswith(")") else alt  # the ')' closing '(i.e., Y)'
        exact = _APPROX.sub("", alt)
        # words stay whole
        alts.append(exact if exact != alt and not _is_text(_normalize(exact)) else alt)
    return [a for a in alts if a.strip()]

_NOT_WORDS = re.compile(r"\\[a-zA-Z]+|[^a-zA-Z]")  # what it leaves are the letters outside commands

def text_only(gold):
    """True when every answer a gold (a string or a list) accepts can be matched only as text: its
    box's content if it has one, each alternative, is words after normalisation (or longer than
    MAX_ANSWER)."""
    golds = [gold] if isinstance(gold, str) else gold
    # most golds: no words, fast
    if all(len(g) <= MAX_ANSWER and len(_NOT_WORDS.sub("", g)) < 2 for g in golds):
        return False
    alts = [a for g in golds for a in _alternatives(final_answer(g) or g)]
    return all(len(a) > MAX_ANSWER or _is_text(_choice(_normalize(a))[1]) for a in alts)

def answers_equal(pred, gold):
    """True when the answer string pred means the same as the answer string gold, or as one of the
    answers the gold spells out in words (_alternatives; the gold only: pred is never split)."""
    try:
        return any(_answer_equal(pred, g) for g in _alternatives(gold))
    except Exception:
        return False

def _answer_equal(pred, gold):
    try:
        if len(pred) > MAX_ANSWER or len(gold) > MAX_ANSWER:
            return pred.strip() == gold.strip()
        pct = [bool(re.search(r"%|percent", x)) for x in (pred, gold)]
        p, g = _normalize(pred), _normalize(gold)
        if _squeeze(p) == _squeeze(g):  # the same LaTeX up to spacing
            return bool(p)
        (pl, pv), (gl, gv) = _choice(p), _choice(g)
        if pl and gl:  # both name a choice: compare the letters
            return pl == gl
        p, g = (pv if pl else p), (gv if gl else g)  # "(C) 12" vs "12": compare the values
        if not p or not g:
            return False
        if _is_text(p) or _is_text(g):  # case, spaces and punctuation do not matter
            return _words(p) == _words(g)
        dp, dg = _decimals(p), _decimals(g)  # a tolerance only for a decimal against an exact value
        k = max(dp or 0, dg or 0) if (dp is None) != (dg is None) else None
        deadline, gc_was_on = time.thread_time() + TIME_BUDGET, gc.isenabled()
        # a full collection of a training process's heap (0.1-1 s) must not spend the budget
        gc.disable()
        try:
            pv, gv = (_readings(_parse(x, deadline), q) for x, q in ((p, pct[0]), (g, pct[1])))
            return any(_equal(x, y, k, deadline) for x in pv for y in gv)
        finally:
            if gc_was_on:
                gc.enable()
    except Exception:  # unparseable, too big or too slow: simply not equal
        return False

if __name__ == "__main__":
    cli()
