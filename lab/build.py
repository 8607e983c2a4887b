"""Build the lab's assets (deterministic): a tiny Qwen3 that adds numbers column by column, its data.

    python lab/build.py           # from the repo root; 480 pretraining steps, 1,512 s measured on 2 shared, busy cores

Writes
  lab/model/        a tiny Qwen3ForCausalLM (float32 safetensors) + its Qwen3-style byte-level BPE tokenizer
  lab/train.jsonl   RL training problems   {"problem": ..., "answer": ...}
  lab/test.jsonl    200 held-out problems  (never in the pretraining data or train.jsonl, in either operand order)

The task: "What is 4815 + 9386?", solved column by column, one step per paragraph:

    Ones: 5+6+0=11, carry 1          <- the annotation ", carry 1" states the carry out of this column
    Tens: 1+8+1=10, carry 1
    Hundreds: 8+3+1=12, carry 1
    Thousands: 4+9+1=14, carry 1
    The answer is \\boxed{14201}.

The pretraining writer leaves out the ", carry N" annotation with probability OMIT_P (the compact notation: 4 tokens
shorter). The annotation is redundant (the carry is the tens digit of the sum just written), but after a column whose
annotation was left out and whose carry was 1, the writer forgets that carry with probability FORGET_P in the next
column ("5+8+0=13" instead of "5+8+1=14"); everything after follows consistently, so the answer is wrong.
After a written annotation it never forgets. So the base model writes the compact form sometimes, and then errs.
This is the lab's mechanism (lab/README.md): solo RL with a length cost can learn to write compactly *and* infer the
carry itself; a junior (the frozen base) that takes over after a compact step still forgets it.
"""
import json, math, os, random, re, sys, time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import tandem_grpo as tg  # noqa: E402  the trainer's prompt (tg.prompt_ids), so the model matches it exactly

MODEL_DIR = os.path.join(HERE, "model")
SEED = 2026
N_TEST, N_TRAIN, N_PRETRAIN = 200, 2000, 30720
OMIT_P = 0.3                # P(leave out the ", carry N" annotation of a column)
FORGET_P = 0.5              # P(forget an incoming carry of 1 whose annotation was left out)
CARRY_COUNT_KEEP = {0: 0.05, 1: 0.15, 2: 0.5, 3: 1.0, 4: 1.0}  # favour problems with many carries
COLUMN_NAMES = ["Ones", "Tens", "Hundreds", "Thousands"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN2_SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                     r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
CHAT_TEMPLATE = ("{%- for message in messages %}"
                 "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
                 "{%- endfor %}"
                 "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
MODEL_CONFIG = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=48, max_position_embeddings=512, rope_theta=10000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=True)
TRAIN = dict(batch_size=64, lr=3e-3, min_lr=1e-4, warmup=60, weight_decay=0.01, grad_clip=1.0)

# ------------------------------------------------------------------------------------------------------------------
# task

def digits(n, width):
    return [n // 10 ** i % 10 for i in range(width)]  # least significant first

def n_carries(a, b):
    width, carry, k = max(len(str(a)), len(str(b))), 0, 0
    for x, y in zip(digits(a, width), digits(b, width)):
        carry = int(x + y + carry >= 10)
        k += carry
    return k

def sample_pair(rng):
    while True:
        a, b = (rng.randint(1000, 9999) if rng.random() < 0.8 else rng.randint(100, 999) for _ in range(2))
        if rng.random() < CARRY_COUNT_KEEP[n_carries(a, b)]:  # mostly 4 columns, 3-4 carries
            return a, b

def problem_text(a, b):
    return f"What is {a} + {b}?"

def solution_text(a, b, rng=None):
    """Column by column. With rng, the noisy writer: annotations left out with OMIT_P, and after a left-out carry of 1
    that carry forgotten with FORGET_P (the rest consistent). Without rng: the clean, fully annotated solution."""
    width = max(len(str(a)), len(str(b)))
    steps, out, carry, hidden = [], [], 0, False
    for i, (x, y) in enumerate(zip(digits(a, width), digits(b, width))):
        c = 0 if (carry and hidden and rng.random() < FORGET_P) else carry
        s = x + y + c
        carry, hidden = s // 10, rng is not None and rng.random() < OMIT_P
        out.append(s % 10)
        steps.append(f"{COLUMN_NAMES[i]}: {x}+{y}+{c}={s}" + ("" if hidden else f", carry {carry}"))
    value = int("".join(map(str, reversed(out)))) + carry * 10 ** width
    steps.append(f"The answer is \\boxed{{{value}}}.")
    return "\n\n".join(steps), value

def make_splits():
    rng, test, seen = random.Random(SEED), [], set()
    while len(test) < N_TEST:
        a, b = sample_pair(rng)
        if (a, b) not in seen:
            seen.update({(a, b), (b, a)})
            test.append((a, b))
    splits = []
    for n in (N_TRAIN, N_PRETRAIN):
        out, used = [], set()
        while len(out) < n:
            a, b = sample_pair(rng)
            if (a, b) not in seen and (a, b) not in used:
                used.add((a, b))
                out.append((a, b))
        splits.append(out)
    return test, *splits

def write_jsonl(path, pairs):
    with open(path, "w") as f:
        f.writelines(json.dumps({"problem": problem_text(a, b), "answer": str(a + b)}) + "\n" for a, b in pairs)

# ------------------------------------------------------------------------------------------------------------------
# tokenizer: Qwen3's conventions (Qwen2 split regex, byte-level BPE, specials after the vocabulary, ChatML)

def build_tokenizer(texts):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    split = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    tok.train_from_iterator([s for t in texts for s in split.split(t) if s], trainer=trainers.BpeTrainer(
        vocab_size=1000, min_frequency=2, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[]))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 unk_token=None, bos_token=None,
                                 model_max_length=MODEL_CONFIG["max_position_embeddings"],
                                 clean_up_tokenization_spaces=False, split_special_tokens=False)
    hf.chat_template = CHAT_TEMPLATE
    return hf

def chat_text(problem):  # what tg.prompt_ids renders, as text (for training the tokenizer)
    return f"<|im_start|>user\n{problem} {tg.PROMPT_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"

# ------------------------------------------------------------------------------------------------------------------
# model and pretraining (supervised, loss on the response tokens and <|im_end|>)

def build_model(tok):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=(len(tok) // 64 + 1) * 64, bos_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, hidden_act="silu", attention_bias=False, use_cache=True,
                      initializer_range=0.02, dtype="float32", **MODEL_CONFIG)
    torch.manual_seed(SEED)
    return Qwen3ForCausalLM(cfg)

def pretrain(model, tok, pairs, rng):
    cfg, bs, eos, pad = TRAIN, TRAIN["batch_size"], tok.eos_token_id, tok.pad_token_id
    steps = len(pairs) // bs
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": 0.01},
                             {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=(0.9, 0.98))
    lr_at = lambda s: cfg["lr"] * (s + 1) / cfg["warmup"] if s < cfg["warmup"] else cfg["min_lr"] + 0.5 * (
        cfg["lr"] - cfg["min_lr"]) * (1 + math.cos(math.pi * (s - cfg["warmup"]) / max(1, steps - cfg["warmup"])))
    model.train()
    t0, run = time.time(), None
    for step in range(steps):
        rows = []
        for a, b in pairs[step * bs:(step + 1) * bs]:
            p = tg.prompt_ids(tok, problem_text(a, b))
            rows.append((p, tok(solution_text(a, b, rng)[0], add_special_tokens=False).input_ids + [eos]))
        L = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((bs, L), pad, dtype=torch.long)
        labels = torch.full((bs, L), -100, dtype=torch.long)
        attn = torch.zeros((bs, L), dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            ids[i, :len(p) + len(r)] = torch.tensor(p + r)
            labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
            attn[i, :len(p) + len(r)] = 1
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        run = loss.item() if run is None else 0.95 * run + 0.05 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step:4d}/{steps}  loss {run:.4f}  {time.time() - t0:5.0f}s", flush=True)
    return model.eval()

def main():
    t0 = time.time()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two on a busy 2-core machine
    torch.manual_seed(SEED)
    test, train, sft = make_splits()
    write_jsonl(os.path.join(HERE, "test.jsonl"), test)
    write_jsonl(os.path.join(HERE, "train.jsonl"), train)
    rng = random.Random(SEED + 1)
    tok = build_tokenizer([chat_text(problem_text(a, b)) + solution_text(a, b, rng)[0] + "<|im_end|>\n"
                           for a, b in sft[:4000]])
    text = solution_text(4815, 9386)[0]
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert tok.convert_ids_to_tokens(tok("\n\n", add_special_tokens=False).input_ids) == ["ĊĊ"]
    model = build_model(tok)
    print(f"problems: test {len(test)}, train {len(train)}, pretrain {len(sft)}; tokenizer {len(tok)} tokens; "
          f"model {sum(p.numel() for p in model.parameters()):,} parameters")
    pretrain(model, tok, sft, random.Random(SEED + 2))
    for k in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(model.generation_config, k, tok.eos_token_id if k == "eos_token_id" else tok.pad_token_id)
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    tok.save_pretrained(MODEL_DIR)
    print(f"done in {time.time() - t0:.0f}s")

if __name__ == "__main__":
    main()
