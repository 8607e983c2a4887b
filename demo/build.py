"""Build the bundled CPU demo assets for tandem-grpo (deterministic).

    python demo/build.py          # from the repo root

Run time: about 6-7 minutes on 2 idle CPU cores (SFT is 625 steps of 64 examples at
~0.56 s/step); 30-60 minutes when the 2 cores are shared with other jobs.

Writes
  demo/model/       a tiny Qwen3ForCausalLM (float32 safetensors) + its Qwen3-style
                    byte-level BPE tokenizer (ChatML template, eos <|im_end|>,
                    pad <|endoftext|>), loadable offline with AutoModelForCausalLM /
                    AutoTokenizer.from_pretrained("demo/model").
  demo/train.jsonl  RL training problems   {"problem": ..., "answer": ...}
  demo/test.jsonl   200 held-out problems  (never in the pretraining data or train.jsonl)

The task: "What is 457 + 3890?" (3-4 digit addition), solved column by column with
one step per paragraph ("\n\n"-separated) and a final "The answer is \\boxed{N}.".
The SFT (pretraining) data is deliberately noisy: whenever a column receives a
carry, the solution "forgets" it with probability CARRY_DROP_P ("5+8+0=13" instead of
"5+8+1=14") and the rest of the chain follows consistently from the mistake. The model
therefore learns a real probability of erring at a few decision tokens (the carry
digit in "a+b+c"), which gives the base model mid-range accuracy and groups of mixed
rewards, and which GRPO can sharpen quickly. See demo/README.md.
"""

import json
import os
import random
import re
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "model")
sys.path.insert(0, os.path.dirname(HERE))
from tandem_grpo import PROMPT_SUFFIX, prompt_ids  # noqa: E402  the trainer's own prompt: SFT and RL cannot disagree

SEED = 1234

N_TEST = 200
N_TRAIN = 4000
N_PRETRAIN = 40000          # SFT examples (distinct problems, disjoint from test)
N_TOKENIZER_DOCS = 4000     # examples the BPE tokenizer is trained on
BPE_VOCAB = 1000            # upper bound; the trainer stops when no pair is left to merge

CARRY_DROP_P = 0.42         # P(forget an incoming carry) in the SFT solutions
# Keep-probability of a sampled problem by its number of incoming carries (favours
# problems with 2-3 decision points; applied to every split alike).
CARRY_COUNT_KEEP = {0: 0.25, 1: 0.6, 2: 1.0, 3: 1.0}

COLUMN_NAMES = ["Ones", "Tens", "Hundreds", "Thousands"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MODEL_CONFIG = dict(
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=48,
    max_position_embeddings=512,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
TRAIN = dict(batch_size=64, lr=2e-3, min_lr=1e-4, warmup=100, weight_decay=0.01, grad_clip=1.0)


# --------------------------------------------------------------------------- task
def digits(n, width):
    return [n // 10**i % 10 for i in range(width)]  # least significant first


def n_carries(a, b):
    width = max(len(str(a)), len(str(b)))
    da, db, carry, k = digits(a, width), digits(b, width), 0, 0
    for x, y in zip(da, db):
        k += carry
        carry = int(x + y + carry >= 10)
    return k


def sample_pair(rng):
    while True:
        a = rng.randint(100, 999) if rng.random() < 0.5 else rng.randint(1000, 9999)
        b = rng.randint(100, 999) if rng.random() < 0.5 else rng.randint(1000, 9999)
        if rng.random() < CARRY_COUNT_KEEP[n_carries(a, b)]:
            return a, b


def problem_text(a, b):
    return f"What is {a} + {b}?"


def solution_text(a, b, rng=None, drop_p=0.0):
    """Column-by-column worked solution. With probability drop_p each incoming carry is
    forgotten; everything after that follows consistently. Returns (text, final_value)."""
    width = max(len(str(a)), len(str(b)))
    da, db = digits(a, width), digits(b, width)
    steps, out, carry = [], [], 0
    for i, (x, y) in enumerate(zip(da, db)):
        c = carry
        if c and rng is not None and rng.random() < drop_p:
            c = 0  # the typical mistake: the carry is dropped
        s = x + y + c
        carry = s // 10
        out.append(s % 10)
        # No period before "\n\n", so the step separator is the standalone "ĊĊ" token.
        steps.append(f"{COLUMN_NAMES[i]}: {x}+{y}+{c}={s}, carry {carry}")
    value = int("".join(map(str, reversed(out))))
    if carry:
        value += carry * 10**width
    steps.append(f"The answer is \\boxed{{{value}}}.")
    return "\n\n".join(steps), value


def make_splits():
    """Test (200), RL train, and SFT problems; test problems (in either operand order)
    never appear in the other two."""
    rng = random.Random(SEED)
    test, seen = [], set()
    while len(test) < N_TEST:
        a, b = sample_pair(rng)
        if (a, b) not in seen:
            seen.update({(a, b), (b, a)})
            test.append((a, b))
    test_keys = set(seen)
    train, train_seen = [], set()
    while len(train) < N_TRAIN:
        a, b = sample_pair(rng)
        if (a, b) not in test_keys and (a, b) not in train_seen:
            train_seen.add((a, b))
            train.append((a, b))
    sft, sft_seen = [], set()
    while len(sft) < N_PRETRAIN:
        a, b = sample_pair(rng)
        if (a, b) not in test_keys and (a, b) not in sft_seen:
            sft_seen.add((a, b))
            sft.append((a, b))
    return test, train, sft


def write_jsonl(path, pairs):
    with open(path, "w") as f:
        for a, b in pairs:
            f.write(json.dumps({"problem": problem_text(a, b), "answer": str(a + b)}) + "\n")


# ---------------------------------------------------------------------- tokenizer
def chat_prompt(problem):
    # The text the tokenizer is trained on; main() asserts it decodes from the trainer's prompt_ids exactly.
    return f"<|im_start|>user\n{problem} {PROMPT_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"


def build_tokenizer(texts):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import AddedToken

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    # Train on the text between special tokens (as it is tokenized at run time).
    split = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    segments = [s for t in texts for s in split.split(t) if s]
    tok.train_from_iterator(segments, trainer=trainer)
    # Special tokens go after the BPE vocabulary, as in Qwen (151643, 151644, 151645).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def wrap_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False, split_special_tokens=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


# -------------------------------------------------------------------------- model
def model_vocab_size(n_tokens):
    # Strictly wider than the tokenizer, like Qwen3 (151,936 > 151,669); extra ids unused.
    return (n_tokens // 64 + 1) * 64


def build_model(tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=model_vocab_size(len(tokenizer)),
        bos_token_id=tokenizer.pad_token_id,  # Qwen3 convention (<|endoftext|>), never added
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="silu",
        attention_bias=False,
        attention_dropout=0.0,
        use_cache=True,
        initializer_range=0.02,
        dtype="float32",
        **MODEL_CONFIG,
    )
    torch.manual_seed(SEED)
    return Qwen3ForCausalLM(cfg)


def encode_examples(tokenizer, pairs, rng):
    """SFT examples: (input_ids, n_prompt_tokens); the response ends with <|im_end|>."""
    p_ids = [prompt_ids(tokenizer, problem_text(a, b)) for a, b in pairs]  # exactly what the trainer feeds
    responses = [solution_text(a, b, rng, CARRY_DROP_P)[0] for a, b in pairs]
    r_ids = tokenizer(responses, add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    return [(p + r + [eos], len(p)) for p, r in zip(p_ids, r_ids)]


def collate(batch, pad_id):
    L = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), L), -100, dtype=torch.long)
    attn = torch.zeros((len(batch), L), dtype=torch.long)
    for i, (ids, n_p) in enumerate(batch):
        t = torch.tensor(ids)
        input_ids[i, : len(ids)] = t
        attn[i, : len(ids)] = 1
        labels[i, n_p : len(ids)] = t[n_p:]  # loss on response tokens (incl. EOS) only
    return input_ids, attn, labels


def pretrain(model, examples, pad_id, log=print):
    import math

    cfg = TRAIN
    bs = cfg["batch_size"]
    steps = len(examples) // bs
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-8,
    )

    def lr_at(step):
        if step < cfg["warmup"]:
            return cfg["lr"] * (step + 1) / cfg["warmup"]
        t = (step - cfg["warmup"]) / max(1, steps - cfg["warmup"])
        return cfg["min_lr"] + 0.5 * (cfg["lr"] - cfg["min_lr"]) * (1 + math.cos(math.pi * t))

    model.train()
    t0, run = time.time(), None
    for step in range(steps):
        input_ids, attn, labels = collate(examples[step * bs : (step + 1) * bs], pad_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        run = loss.item() if run is None else 0.95 * run + 0.05 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            log(f"  step {step:5d}/{steps}  loss {run:.4f}  lr {lr_at(step):.2e}  {time.time() - t0:6.1f}s")
    model.eval()
    return model


# --------------------------------------------------------------------------- main
def main():
    t_start = time.time()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(SEED)
    random.seed(SEED)

    test, train, sft = make_splits()
    write_jsonl(os.path.join(HERE, "test.jsonl"), test)
    write_jsonl(os.path.join(HERE, "train.jsonl"), train)
    print(f"problems: test {len(test)}, RL train {len(train)}, SFT {len(sft)}")

    rng = random.Random(SEED + 1)
    tok_texts = [
        chat_prompt(problem_text(a, b)) + solution_text(a, b, rng, CARRY_DROP_P)[0] + "<|im_end|>\n"
        for a, b in sft[:N_TOKENIZER_DOCS]
    ]
    tokenizer = wrap_tokenizer(build_tokenizer(tok_texts))
    sample = tok_texts[0] + "\n\nHello, world! Über 42 \t tabs\n"
    assert tokenizer.decode(tokenizer(sample, add_special_tokens=False).input_ids) == sample
    assert tokenizer.convert_ids_to_tokens(tokenizer("\n\n", add_special_tokens=False).input_ids) == ["ĊĊ"]
    sol = tokenizer.convert_ids_to_tokens(tokenizer(solution_text(457, 3890)[0], add_special_tokens=False).input_ids)
    assert sol.count("ĊĊ") == 4 and "boxed" in sol, sol  # steps split by "ĊĊ"
    assert tokenizer.decode(prompt_ids(tokenizer, problem_text(457, 3890))) == chat_prompt(problem_text(457, 3890))
    print(f"tokenizer: {len(tokenizer)} tokens")

    model = build_model(tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: vocab_size {model.config.vocab_size}, {n_params:,} parameters")

    examples = encode_examples(tokenizer, sft, random.Random(SEED + 2))
    pretrain(model, examples, tokenizer.pad_token_id)

    os.makedirs(MODEL_DIR, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.pad_token_id
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    tokenizer.save_pretrained(MODEL_DIR)
    print(f"done in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
