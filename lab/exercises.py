"""
lab/exercises.py: Part 0 of the lab (lab/README.md): write the core of tandem_grpo.py yourself, and have it graded.

    python lab/exercises.py make mine        # mine/tandem_grpo.py with six bodies to write, and mine/demo/ to run it
    python lab/exercises.py check mine       # grades mine/tandem_grpo.py, exercise by exercise
    python lab/exercises.py check .          # the reference (the repository's own tandem_grpo.py) passes all six
    python lab/exercises.py grade hand-ins   # instructor: hand-ins/STUDENT/tandem_grpo.py -> student, exercise, passed

The student copy is tandem_grpo.py with the body of six pieces replaced by raise NotImplementedError("exercise N:
..."), signature and docstring kept, and nothing else changed. The pieces are found by parsing the original (a
function's lines after its docstring; for the word rule, the body of next_author's `if schedule == "word":`), so the
original carries no markers. The checker imports DIR/tandem_grpo.py from its path and runs hand-computed cases on
each piece (tiny models built from a config, no download). A failure is one line: the case, what was expected, what
came back. The last line is `exercises: K of 6 passed`; the exit status is 0 only when all six pass.
"""
import argparse, ast, importlib.util, re, shutil, subprocess, sys, traceback, uuid
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO_FILES = ("model", "train.jsonl", "test.jsonl")  # what `tandem_grpo.py --demo` reads from demo/ next to itself

# number, what it asks, where: a function (its body), or (function, "word") for its `if schedule == "word":` block
EXERCISES = [
    (1, "which ids start a word", "word_start_mask"),
    (2, "the word rule (redraw after a word-start token or max_gap tokens)", ("next_author", "word")),
    (3, "group-relative advantages", "group_advantages"),
    (4, "the clipped GRPO loss (clip, dual clip, token-mean)", "grpo_loss"),
    (5, "the shift (the state at t-1 predicts token t)", "response_hidden"),
    (6, "which tokens the loss counts (senior 1, junior w_junior, padding 0)", "loss_weights"),
]

def short(n):
    """Exercise n as a table cell: '2 next_author (word)'."""
    where = EXERCISES[n - 1][2]
    return f"{n} {where}" if isinstance(where, str) else f"{n} {where[0]} ({where[1]})"

class Failed(Exception):
    """A case came out wrong: one line, the case, what was expected and what came back."""

# ------------------------------------------------------------------------------------------------------------------
# make: the student copy

def is_word_test(test):
    """Is this the test `schedule == "word"`?"""
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "schedule" and
            isinstance(test.ops[0], ast.Eq) and isinstance(test.comparators[0], ast.Constant) and
            test.comparators[0].value == "word")

def blank_spans(source):
    """-> [(first line, last line, indent, n, what)], 1-based and inclusive: the lines each exercise replaces."""
    funcs = {f.name: f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef)}
    spans = []
    for n, what, where in EXERCISES:
        name = where if isinstance(where, str) else where[0]
        if name not in funcs:
            raise SystemExit(f"tandem_grpo.py has no function {name}() (exercise {n}): lab/exercises.py needs updating")
        f = funcs[name]
        if isinstance(where, str):  # the whole body after the docstring (comments included: they may give it away)
            doc = isinstance(f.body[0], ast.Expr) and isinstance(f.body[0].value, ast.Constant)
            first = f.body[0].end_lineno + 1 if doc else f.body[0].lineno
            spans.append((first, f.end_lineno, f.body[0].col_offset, n, what))
        else:
            branch = next((s for s in ast.walk(f) if isinstance(s, ast.If) and is_word_test(s.test)), None)
            if branch is None:
                raise SystemExit(f"tandem_grpo.py: {name}() has no `if schedule == \"word\":` (exercise {n}): "
                                 "lab/exercises.py needs updating")
            spans.append((branch.body[0].lineno, branch.body[-1].end_lineno, branch.body[0].col_offset, n, what))
    return spans

def student_source(source):
    """tandem_grpo.py's text -> the student copy's: six bodies replaced by raise NotImplementedError, nothing else."""
    lines = source.splitlines(keepends=True)
    for first, last, indent, n, what in sorted(blank_spans(source), reverse=True):
        lines[first - 1:last] = [" " * indent + f'raise NotImplementedError("exercise {n}: {what}")\n']
    return "".join(lines)

def make(folder):
    folder = Path(folder)
    target = folder / "tandem_grpo.py"
    if target.exists():  # never overwrite a student's work
        raise SystemExit(f"{target} exists already: choose a new folder (the work in that one is left as it is)")
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(student_source((ROOT / "tandem_grpo.py").read_text()))
    for name in DEMO_FILES:  # the copy finds its demo next to itself (DEMO_DIR is relative to the script's file)
        src, dst = ROOT / "demo" / name, folder / "demo" / name
        if not dst.exists():
            dst.parent.mkdir(exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    print(f"wrote {target} (exercises 1-6: search it for NotImplementedError) and {folder / 'demo'}/")
    print(f"write the six bodies, then grade them with: python lab/exercises.py check {folder}")

# ------------------------------------------------------------------------------------------------------------------
# check: hand-computed cases for each exercise, on the module loaded from DIR/tandem_grpo.py

def show(x, digits=4):
    """A tensor or list as a short readable list."""
    x = x.tolist() if torch.is_tensor(x) else x
    if isinstance(x, list):
        return "[" + ", ".join(show(v, digits) for v in x) + "]"
    return str(x) if isinstance(x, (bool, int)) else f"{x:.{digits}f}"

def close(got, want, atol=1e-4):
    return torch.is_tensor(got) and got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=atol)

class FakeTokenizer:
    """What word_start_mask may ask of a Hugging Face tokenizer: its vocabulary (piece -> id, not in id order), its
    length, its special ids, the piece of an id, the text of ids."""
    def __init__(self, pieces, special):
        self.vocab = dict(pieces)
        self.piece = {i: p for p, i in pieces}
        self.all_special_tokens, self.all_special_ids = list(special), [self.vocab[s] for s in special]
    def __len__(self):
        return len(self.vocab)
    def get_vocab(self):
        return dict(self.vocab)
    def convert_ids_to_tokens(self, ids):
        ids = ids.tolist() if torch.is_tensor(ids) else ids
        return self.piece[ids] if isinstance(ids, int) else [self.piece[i] for i in ids]
    def decode(self, ids, skip_special_tokens=False, **kw):
        ids = [ids] if isinstance(ids, int) else list(ids)
        return "".join("" if skip_special_tokens and i in self.all_special_ids else
                       re.sub("[Ġ▁]", " ", self.piece[i]).replace("Ċ", "\n") for i in ids)

def check_word_start_mask(m):
    pieces = [("ĊĊ", 5), ("Ġthe", 1), ("<|im_end|>", 12), ("the", 2), ("Ġ46", 3), ("answer▁", 11), ("4", 4),
              ("Ċ", 6), ("▁answer", 10), (".", 7), ("<|endoftext|>", 0), ("Ġ", 8), ("▁<pad>", 13), ("ĠĠ", 9),
              ("\\boxed", 14), ("Ġ\\", 15)]
    tok = FakeTokenizer(pieces, ["<|endoftext|>", "<|im_end|>", "▁<pad>"])
    want = torch.zeros(16, dtype=torch.bool)
    want[[1, 3, 8, 9, 10, 15]] = True  # Ġthe Ġ46 Ġ ĠĠ ▁answer Ġ\ ; not: ĊĊ Ċ . answer▁ and the special ▁<pad>
    try:
        got = m.word_start_mask(tok)
    except AttributeError as e:
        raise Failed("the checker's tokenizer offers len(), get_vocab(), all_special_ids, all_special_tokens, "
                     f"convert_ids_to_tokens() and decode(): expected one of those, got AttributeError: {e}")
    if not (torch.is_tensor(got) and got.dtype == torch.bool and got.shape == (16,)):
        raise Failed(f"a vocabulary of 16 ids: expected a BoolTensor of shape [16], got "
                     f"{type(got).__name__} {getattr(got, 'dtype', '')} {tuple(getattr(got, 'shape', ()))}")
    wrong = [i for i in range(16) if got[i] != want[i]]
    if wrong:
        raise Failed("a vocabulary of 16 ids (pieces listed out of id order): " + "; ".join(
            f"id {i} {tok.piece[i]!r}{' (special)' if i in tok.all_special_ids else ''}: expected {bool(want[i])}, "
            f"got {bool(got[i])}" for i in wrong[:4]) + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else ""))

def authors(x):
    """Who wrote each token, as a string: S the senior, J the junior."""
    return "".join("S" if v else "J" for v in x)

def check_word_rule(m):
    B = lambda *v: torch.tensor(v, dtype=torch.bool)
    L = lambda *v: torch.tensor(v, dtype=torch.long)
    # one step, six rows (K = 4; ids 1 and 4 start a word): the state after each row wrote `tok`
    ws = B(False, True, False, False, True, False)
    tok, senior, gap = L(1, 2, 2, 3, 4, 0), B(True, True, False, False, True, False), L(0, 1, 2, 3, 3, 0)
    turns, after_nl = L(1, 2, 3, 4, 5, 6), B(False, True, False, True, False, True)
    coin = B(False, False, True, True, True, True)
    want_s, want_g = B(False, True, False, True, True, False), L(0, 2, 3, 0, 0, 1)
    why = ["a word start: redraw", "not a word start, the 2nd token since the redraw: keep",
           "the 3rd token since the redraw: keep", "the 4th token since the redraw, K 4: redraw",
           "a word start, the coin draws the same author: redraw", "not a word start: keep"]
    out = m.next_author("word", tok, senior.clone(), gap.clone(), turns.clone(), after_nl.clone(), lambda: coin.clone(),
                        ws, None, 4)
    if not (isinstance(out, tuple) and len(out) == 4):
        raise Failed(f"one step: expected a tuple (senior_turn, gap, turns, after_newline), got {type(out).__name__}")
    s, g, t, a = out
    if not (torch.is_tensor(s) and s.dtype == torch.bool and s.shape == (6,)):
        raise Failed(f"one step of 6 rows: expected senior_turn a BoolTensor [6], got {getattr(s, 'dtype', type(s))}")
    for r in range(6):
        if bool(s[r]) != bool(want_s[r]) or int(g[r]) != int(want_g[r]):
            raise Failed(f"one step (K 4), row {r}: token {int(tok[r])} ({why[r]}) with senior_turn {bool(senior[r])}, "
                         f"gap {int(gap[r])}, coin {bool(coin[r])}: expected senior_turn {bool(want_s[r])} and gap "
                         f"{int(want_g[r])}, got {bool(s[r])} and {int(g[r])}")
    if not (torch.equal(t, turns) and torch.equal(a, after_nl)):
        raise Failed("one step: expected turns and after_newline back unchanged (the word schedule does not use them), "
                     f"got {show(t)} and {show(a)}")
    # two rows through a whole response, as tandem_generate calls it (K 3, id 1 starts a word), one coin per step
    toks = L([0, 1, 0, 0, 0, 0, 1, 1, 0, 1], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    coins = B([False, True], [False, False], [True, True], [False, False], [True, True], [False, False],
              [True, True], [False, False], [True, True], [True, False])
    senior, gap, turns, after_nl = B(True, False), L(0, 0), L(1, 1), B(False, False)
    ws, seen = B(False, True), []
    for t in range(10):
        seen.append(senior.clone())
        senior, gap, turns, after_nl = m.next_author("word", toks[:, t], senior, gap, turns, after_nl,
                                                     lambda c=coins[t]: c.clone(), ws, None, 3)
    want = [("SSJJJSSSJJ", "S"), ("JSJJJSSSJJ", "J")]
    for r in range(2):
        got = (authors(x[r] for x in seen), authors([senior[r]]))
        if got != want[r]:
            toks_s = " ".join(f"{int(x)}*" if x == 1 else str(int(x)) for x in toks[r])
            raise Failed(f"a response of 10 tokens [{toks_s}] (* word start, K 3, coins per step "
                         f"{authors(coins[:, r])}): expected authors {want[r][0]} then {want[r][1]} after the last "
                         f"token, got {got[0]} then {got[1]}")
    # the rule inside tandem_generate: who wrote each token is recorded, and changes only where the rule allows
    check_tandem_generate(m)

class OnlyIds(torch.nn.Module):
    """An output layer that can write only some ids (the others get -1e9): so every token shows who wrote it."""
    def __init__(self, head, allowed):
        super().__init__()
        self.head, self.off = head, ~allowed
    def forward(self, h):
        return self.head(h).masked_fill(self.off, -1e9)

def tiny_model(vocab, seed):
    """A 1-layer Qwen3 built from a config (no download)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
                      pad_token_id=0, eos_token_id=vocab - 1, bos_token_id=None, tie_word_embeddings=False)
    return Qwen3ForCausalLM(cfg).eval()

def check_tandem_generate(m):
    V, K, T = 16, 5, 30
    ids = torch.arange(V)
    ws = torch.isin(ids, torch.tensor([2, 3, 6, 7]))              # word starts, two for each author
    senior, junior = tiny_model(V, 0), tiny_model(V, 1)
    senior.lm_head = OnlyIds(senior.lm_head, (ids % 2 == 0))      # the senior writes even ids
    junior.lm_head = OnlyIds(junior.lm_head, (ids % 2 == 1) & (ids != V - 1))  # the junior odd ones, never EOS 15
    torch.manual_seed(0)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]] * 2
    g = m.tandem_generate(senior, junior, prompts, eos_ids={V - 1}, pad_id=0, n_vocab=V, word_start=ws,
                          schedule="word", p_senior=0.5, max_gap=K, max_new_tokens=T, temperature=1.0)
    changes = 0
    for r in range(len(prompts)):
        tok, rec = g["tokens"][r], g["senior"][r]
        wrote = tok % 2 == 0
        for t in range(T):
            if bool(rec[t]) != bool(wrote[t]):
                what, who = ", a word start" if ws[tok[t]] else "", lambda x: "senior" if x else "junior"
                raise Failed(f"tandem_generate (the senior writes even ids, the junior odd ones; K {K}), row {r}, "
                             f"token {t} (id {int(tok[t])}{what}): expected it recorded as the {who(wrote[t])}'s, got "
                             f"the {who(rec[t])}'s (the author is redrawn after a word-start token, not before it)")
        gap = 0
        for t in range(1, T):
            gap += 1
            if ws[tok[t - 1]] or gap >= K:
                gap, changes = 0, changes + bool(wrote[t] != wrote[t - 1])
            elif wrote[t] != wrote[t - 1]:
                raise Failed(f"tandem_generate (K {K}), row {r}, token {t}, after id {int(tok[t - 1])} (not a word "
                             f"start, {gap} token(s) since the last redraw): expected the author of token {t - 1}, "
                             "got the other one")
    if not changes:
        raise Failed(f"tandem_generate, 8 rows of {T} tokens: expected the author to change after some word starts, "
                     "got no change at all")

def check_group_advantages(m):
    r2 = 1 / 2 ** 0.5
    cases = [("rewards [1, 0, 0, 0 | 1, 1, 1, 1], groups of 4 (the second all equal)", [1, 0, 0, 0, 1, 1, 1, 1], 4,
              [1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0]),
             ("rewards [1, 0], a group of two", [1, 0], 2, [r2, -r2]),
             ("rewards [0.5, 0.25, 0.75], a group of three", [0.5, 0.25, 0.75], 3, [0, -1, 1]),
             ("rewards [1, 0 | 0, 0], two groups of two (a group's rollouts are adjacent)", [1, 0, 0, 0], 2,
              [r2, -r2, 0, 0])]
    for what, rewards, G, want in cases:
        r, want = torch.tensor(rewards, dtype=torch.float32), torch.tensor(want)
        got = m.group_advantages(r, G)
        if not close(got, want):
            x = r.view(-1, G)
            pop = ((x - x.mean(1, keepdim=True)) / (x.std(1, correction=0, keepdim=True) + 1e-6)).view(-1)
            hint = " (that is the std without Bessel's correction)" if close(got, pop) else ""
            raise Failed(f"{what}: expected A = {show(want)}, got {show(got)}{hint}")

def check_grpo_loss(m):
    def loss(ratios, adv, n_tokens, **kw):  # old log-probs are not 0, so exp(logp) alone is not the ratio
        old = torch.tensor([-1.0, -2.0, -0.5, -3.0][:len(ratios)])
        return m.grpo_loss(old + torch.tensor(ratios).log(), old, torch.tensor(adv), n_tokens, **kw)
    cases = [
        ("ratios 1.5, 0.5, 1.1, 0.7 with A +1, -1, -2, +2 (clip 0.2), n_tokens 4",
         ([1.5, 0.5, 1.1, 0.7], [1.0, -1.0, -2.0, 2.0], 4), {}, (-1.2 + 0.8 + 2.2 - 1.4) / 4),
        ("ratio 1.5 with A +1, clip_high 0.28", ([1.5], [1.0], 1), dict(clip_high=0.28), -1.28),
        ("ratio 0.5 with A -1, clip_low 0.3", ([0.5], [-1.0], 1), dict(clip_low=0.3), 0.7),
        ("ratio 10 with A +2 (far above the clip)", ([10.0], [2.0], 1), {}, -2.4),
        ("ratio 0.01 with A -1 (far below the clip)", ([0.01], [-1.0], 1), {}, 0.8),
        ("ratio 0.01 with A +1 (below the clip, A > 0: unclipped)", ([0.01], [1.0], 1), {}, -0.01),
        ("ratio 5 with A -1 (dual clip: at most -A clip_c = 3)", ([5.0], [-1.0], 1), {}, 3.0),
        ("ratio 10000 with A -0.5 (a huge ratio, dual clip)", ([1e4], [-0.5], 1), {}, 1.5),
        ("ratio 5 with A -1, clip_c 0 (dual clip off)", ([5.0], [-1.0], 1), dict(clip_c=0.0), 5.0),
        ("ratio 5 with A +1 (dual clip only where A < 0)", ([5.0], [1.0], 1), {}, -1.2),
        ("ratios 1.5, 0.5 with A +1, -1, weights 1, 0.5, n_tokens 1.5", ([1.5, 0.5], [1.0, -1.0], 1.5),
         dict(weight=torch.tensor([1.0, 0.5])), (-1.2 + 0.4) / 1.5),
        ("2 tokens (ratio 1, A +1) of a mini-batch of 5 response tokens: n_tokens 5", ([1.0, 1.0], [1.0, 1.0], 5), {},
         -0.4),
        ("k3 KL: kl_coef 0.5, ref_logp - logp = log 2, ratio 1, A 0", ([1.0], [0.0], 1),
         dict(ref_logp=torch.tensor([-1.0 + 0.6931471805599453]), kl_coef=0.5), 0.5 * (1 - 0.6931471805599453)),
        ("k3 KL: kl_coef 1, ref_logp - logp = 5 (k3 142.4, clamped to 10)", ([1.0], [0.0], 1),
         dict(ref_logp=torch.tensor([4.0]), kl_coef=1.0), 10.0)]
    for what, args, kw, want in cases:
        got = loss(*args, **kw)
        if not (torch.is_tensor(got) and got.numel() == 1 and abs(got.item() - want) < 1e-5):
            raise Failed(f"{what}: expected loss {want:.4f}, got {show(got) if torch.is_tensor(got) else got}")
    # token-mean over micro-batches: rows of 3 and 1 tokens, one call each, n_tokens = 4 (the mini-batch's count)
    got = loss([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 4) + m.grpo_loss(torch.zeros(1), torch.zeros(1), torch.ones(1) * -1, 4)
    if abs(got.item() - (-0.5)) > 1e-5:
        raise Failed("rows of 3 and 1 tokens (ratio 1; A +1 and -1), one call a row, n_tokens 4: expected the two "
                     f"losses to add up to the token-mean -0.5000, got {got.item():.4f}")
    # gradients: -A ratio / n_tokens where the unclipped branch wins, 0 where the clipped one (a constant) wins
    for what, ratios, adv, want in (("ratios 1.5, 0.5, 1.1, 0.7 with A +1, -1, -2, +2", [1.5, 0.5, 1.1, 0.7],
                                     [1.0, -1.0, -2.0, 2.0], [0, 0, 2.2 / 4, -1.4 / 4]),
                                    ("ratio 5 with A -1 (dual-clipped)", [5.0], [-1.0], [0.0])):
        lp = torch.tensor(ratios).log().requires_grad_()
        m.grpo_loss(lp, torch.zeros(len(ratios)), torch.tensor(adv), len(ratios)).backward()
        if not close(lp.grad, torch.tensor(want, dtype=torch.float32), 1e-5):
            raise Failed(f"{what}: expected d loss / d logp = {show(want)}, got {show(lp.grad)}")

def check_shift(m):
    V, n_vocab, temp, P = 40, 36, 0.7, 5
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14]]
    responses = [[20, 21, 22, 23], [24], [25, 26, 27, 28, 29, 30]]
    T = max(map(len, responses))
    ids = torch.tensor([[0] * (P - len(p)) + p + r + [0] * (T - len(r)) for p, r in zip(prompts, responses)])
    attn = torch.tensor([[0] * (P - len(p)) + [1] * (len(p) + len(r)) + [0] * (T - len(r))
                         for p, r in zip(prompts, responses)])
    real = attn[:, P:].bool()
    some = real & torch.tensor([[1, 0, 1, 0, 1, 1], [1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 1]]).bool()
    model = tiny_model(V, 0)
    with torch.no_grad():
        want, shifted = [], []
        for p, r in zip(prompts, responses):  # each row alone, unpadded: logits at position i predict token i + 1
            lp = (model(input_ids=torch.tensor([p + r])).logits[0, :, :n_vocab] / temp).log_softmax(-1)
            want.append(lp[len(p) - 1:-1].gather(1, torch.tensor(r)[:, None]).squeeze(1))
            shifted.append(lp[len(p):].gather(1, torch.tensor(r)[:, None]).squeeze(1))
        for name, sel in (("every response token", real), ("some response tokens (a select mask)", some)):
            h = m.response_hidden(model, ids, attn, P, sel)
            n = int(sel.sum())
            if not (torch.is_tensor(h) and h.shape == (n, model.config.hidden_size)):
                raise Failed(f"3 rows, {name}: expected hidden states of shape [{n}, {model.config.hidden_size}] "
                             f"(one per selected token), got {tuple(getattr(h, 'shape', ()))}")
            got = m.response_logprobs(model, ids, attn, P, sel, n_vocab, temp)
            w = torch.cat([x[s[:len(x)]] for x, s in zip(want, sel)])
            if not close(got, w):
                hint = (" (that is the state at t predicting token t: off by one)"
                        if close(got, torch.cat([x[s[:len(x)]] for x, s in zip(shifted, sel)])) else "")
                raise Failed(f"3 rows (prompts of 3, 5, 2 tokens, left-padded; responses of 4, 1, 6, right-padded), "
                             f"{name}: expected log-probs {show(w[:4])}..., got {show(got[:4])}...{hint}")

def check_loss_weights(m):
    by_senior = torch.tensor([[True, False, True, False], [False, True, False, False]])
    attn = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 1 ends after 2 tokens: padding
    for w in (0.0, 0.5, 1.0):
        want = torch.tensor([[1, w, 1, w], [w, 1, 0, 0]])
        got = m.loss_weights(by_senior, attn, w)
        if not (close(got, want) and got.is_floating_point()):
            raise Failed(f"by_senior {authors(by_senior[0])}/{authors(by_senior[1])}, row 1 padded after 2 tokens, "
                         f"w_junior {w}: expected float weights {show(want, 1)}, got "
                         f"{show(got, 1) if torch.is_tensor(got) else got}")

CHECKS = {1: check_word_start_mask, 2: check_word_rule, 3: check_group_advantages, 4: check_grpo_loss,
          5: check_shift, 6: check_loss_weights}

def load(path):
    """DIR/tandem_grpo.py as a module of its own (its own globals), imported from its path."""
    spec = importlib.util.spec_from_file_location(f"submission_{uuid.uuid4().hex[:8]}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

def grade_file(path, tracebacks=False):
    """-> [(n, what, passed, one line)] for DIR/tandem_grpo.py. Nothing escapes: a crash is a failed exercise."""
    try:
        mod = load(path)
    except (Exception, SystemExit) as e:
        if tracebacks:
            traceback.print_exc()
        line = f"the file does not import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return [(n, what, False, line) for n, what, _ in EXERCISES]
    out = []
    for n, what, _ in EXERCISES:
        with torch.random.fork_rng():  # the checks seed their own models; the caller's random stream is left alone
            try:
                CHECKS[n](mod)
                out.append((n, what, True, ""))
            except Failed as e:
                out.append((n, what, False, str(e)))
            except NotImplementedError as e:
                out.append((n, what, False, "not written yet (it raises NotImplementedError)"))
            except (Exception, SystemExit) as e:
                if tracebacks:
                    traceback.print_exc()
                first = str(e).splitlines()[0] if str(e) else ""
                out.append((n, what, False, f"raised {type(e).__name__}: {first[:200]}" +
                            ("" if tracebacks else " (--traceback shows where)")))
    return out

def check(folder, tracebacks=False):
    path = Path(folder) / "tandem_grpo.py"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (make a copy with: python lab/exercises.py make {folder})")
    results = grade_file(path, tracebacks)
    for n, what, ok, line in results:
        print(f"exercise {n} {'passed' if ok else 'failed'}  {what}")
        if not ok:
            print(f"    {line}")
    k = sum(ok for *_, ok, _ in results)
    if k == len(EXERCISES):
        here = Path(folder).resolve() == Path.cwd().resolve()
        demo = "" if (Path(folder) / "demo" / "model").is_dir() else \
            f" (first copy the repository's demo/ folder into {folder}/: --demo reads it from next to the script)"
        print(f"all six pass: now train with your own code: {'' if here else f'cd {folder} && '}python tandem_grpo.py "
              f"--demo{demo} (minutes on 2 cores); it ends with 'demo: solo accuracy before X% after Y%': Y above X "
              "means your code learns")
    print(f"exercises: {k} of {len(EXERCISES)} passed")
    return k == len(EXERCISES)

# ------------------------------------------------------------------------------------------------------------------
# grade: the instructor's table over a folder of hand-ins, one subfolder a student

def grade(folder, timeout=600):
    """Runs `check` on each FOLDER/STUDENT/ in its own process (one student's code cannot upset another's grade)."""
    students = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    if not students:
        raise SystemExit(f"{folder}: no subfolders (expected one a student, each holding tandem_grpo.py)")
    rows = []
    for s in students:
        if not (s / "tandem_grpo.py").is_file():
            rows += [(s.name, short(n), "no", "no tandem_grpo.py handed in") for n, *_ in EXERCISES]
            continue
        try:
            out = subprocess.run([sys.executable, __file__, "check", str(s)], capture_output=True, text=True,
                                 timeout=timeout).stdout.splitlines()
        except subprocess.TimeoutExpired:
            rows += [(s.name, short(n), "no", f"the check ran past {timeout} s") for n, *_ in EXERCISES]
            continue
        for n, what, _ in EXERCISES:
            i = next((i for i, line in enumerate(out) if line.startswith(f"exercise {n} ")), None)
            ok = i is not None and out[i].startswith(f"exercise {n} passed")
            why = "" if ok else out[i + 1].strip() if i is not None and i + 1 < len(out) else "no result (crashed?)"
            rows.append((s.name, short(n), "yes" if ok else "no", why))
    w = max(len("student"), *(len(r[0]) for r in rows))
    print(f"{'student':<{w}}  {'exercise':<22}  passed  why")
    for student, ex, ok, why in rows:
        print(f"{student:<{w}}  {ex:<22}  {ok:<6}  {why}".rstrip())
    for s in students:
        k = sum(r[2] == "yes" for r in rows if r[0] == s.name)
        print(f"{s.name}: {k} of {len(EXERCISES)} passed")
    return rows

def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make", help="write DIR/tandem_grpo.py with six bodies to write (and DIR/demo/)").add_argument("dir")
    c = sub.add_parser("check", help="grade DIR/tandem_grpo.py (check . grades the reference)")
    c.add_argument("dir")
    c.add_argument("--traceback", action="store_true", help="print the traceback of a check that raised")
    sub.add_parser("grade", help="instructor: grade FOLDER/STUDENT/tandem_grpo.py for every STUDENT").add_argument(
        "folder")
    return p.parse_args(argv)

if __name__ == "__main__":
    args = get_args()
    if args.cmd == "make":
        make(args.dir)
    elif args.cmd == "check":
        sys.exit(0 if check(args.dir, args.traceback) else 1)
    else:
        grade(args.folder)
