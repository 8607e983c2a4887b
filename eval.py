"""
eval.py: the paper's three claims, measured. Each senior on each data file, side by side, with 95% intervals.

What it computes, in order, for every senior on every file (--n samples a problem under each schedule):
  1. solo   the senior alone, budget min(max_new_tokens, 4096 - prompt)                          -> solo pass@k
  2. step   handoff on text (the authors' protocol): the senior writes the first turn, then the two alternate; each
            turn reads the prompt + text so far re-tokenized and ends after its text's first blank line (kept), at
            most --max-turns turns (the authors' 150 rounds of two), one budget of sampled tokens shared,
            min(max_new_tokens, 4096 - prompt - 8)              -> step pass@k, step/solo at pass@4 (or @n if n < 4)
  3. word   handoff under the training coin (p_senior, redrawn after a word-start token or max_gap) -> word pass@k
  4. both models teacher-forced over the senior's solo chains (end-of-turn token excluded; prompt + chain of 4,088
     tokens or more left out, counted): legibility (junior's cross-entropy), self-CE (senior's), drift (KL(p || q))
  5. pass@k unbiased per problem, k = 1, 2, 4, .., n; means per set, then macro over sets; 95% bootstrap intervals;
     every senior minus the first, paired by problem
A response cut at its budget or its turns is graded as it is (the authors' rule; --truncated-reward zero scores it 0).
The table goes to stdout; everything (settings, metrics, every sample's text and author mask) to --out as JSON.
docs/evaluation.md defines every metric.

Run it:
    python eval.py --demo                               # the bundled tiny model, before and after tandem_grpo --demo
    python eval.py --senior runs/grpo/step_000200 --senior runs/trl/step_000120 --junior Qwen/Qwen3-4B-Instruct-2507 \\
        --data amc.jsonl aime=aime24.jsonl,aime25.jsonl minerva.jsonl --out runs/eval.json  # NAME=...: files pooled
"""
import argparse, json, math, os, sys, time
from pathlib import Path

import torch
from tqdm import tqdm

from tandem_grpo import (DEMO_DIR, LOGITS_CHUNK, HelpFormatter, UserError, autocast, check_data_path, eos_ids,
                         load_model, load_problems, load_tokenizer, pack, prompt_ids, response_hidden, reward,
                         same_vocabulary, step_end_mask, tandem_generate, word_start_mask)

# ------------------------------------------------------------------------------------------------------------------
# Settings (the paper's evaluation sampling is the default)

CONTEXT = 4096          # the authors' window: prompt + response (+ 8 spare tokens in their handoff loop)
LEGIBILITY_MAX = 4088   # the authors leave a prompt + chain of this many tokens or more (4096 - 8) out of legibility
N_BOOT = 2000           # bootstrap resamples
SCHEDULES = ("solo", "step", "word")

def demo_seniors():
    """The demo base model, and the senior `python tandem_grpo.py --demo` trained (runs/demo/latest in the working
    folder, else next to this script), if it exists."""
    for runs in (Path("runs/demo"), Path(__file__).resolve().parent / "runs" / "demo"):
        if (runs / "latest").exists():
            return [str(DEMO_DIR / "model"), newest_checkpoint(str(runs))]
    return [str(DEMO_DIR / "model")]

def newest_checkpoint(path):
    """A training run's --out folder, or its `latest` file -> the checkpoint `latest` names; any other path as given."""
    p = Path(path).expanduser()
    latest = p / "latest" if p.is_dir() else p
    if latest.name == "latest" and latest.is_file():
        return str(latest.parent / latest.read_text().strip())
    return path

# --demo swaps in these defaults (flags on the command line still win): all 200 held-out problems, 90-125 s on 2 cores.
DEMO = dict(junior=str(DEMO_DIR / "model"), data=[str(DEMO_DIR / "test.jsonl")], n=4, max_new_tokens=96, batch=128,
            tf_batch=64, threads=1, out="runs/demo/eval.json")

def looks_local(path):
    """A path that cannot be a hub id (OWNER/NAME): it must exist here."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path

def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)  # docstring as written + defaults
    a = p.add_argument
    a("--senior", action="append", help="model to evaluate: hub id, local folder, or a training run's --out folder "
      "or its `latest` file (its newest checkpoint); repeat the flag for several (--demo: the demo model and the "
      "senior its training wrote)")
    a("--junior", default="Qwen/Qwen3-4B-Instruct-2507", help="the frozen junior (same vocabulary as every senior)")
    a("--data", nargs="+", help="problem sets (the macro averages over them): a file (.jsonl, .json, .parquet with "
                                "pyarrow, hf://datasets/OWNER/NAME/FILE), or NAME=FILE,FILE,...: files pooled as NAME")
    a("--limit", type=int, default=0, help="evaluate the first N problems of each file (0: all), pooled ones too")
    a("--n", type=int, default=8, help="samples per problem, for every schedule")
    a("--temperature", type=float, default=0.7, help="sampling temperature, every schedule (0: greedy)")
    a("--top-p", type=float, default=0.8, help="nucleus sampling: keep the smallest set of ids with this much mass")
    a("--top-k", type=int, default=20, help="sample among the k most likely ids (0: all)")
    a("--max-new-tokens", type=int, default=3000,
      help=f"response budget; also capped by the {CONTEXT}-token window: {CONTEXT} - prompt (- 8 for step)")
    a("--max-turns", type=int, default=300, help="step schedule: at most this many turns (150 rounds of two)")
    a("--truncated-reward", default="grade", choices=["grade", "zero"],
      help="a response cut at its budget or turns: grade its text as it is (the authors), or score it 0")
    a("--p-senior", type=float, default=0.5, help="word schedule: probability the coin picks the senior")
    a("--max-gap", type=int, default=32, help="word schedule: redraw after this many tokens without a word start")
    a("--batch", type=int, default=64, help="rows generated at once (memory knob: both KV caches)")
    a("--tf-batch", type=int, default=8, help="responses teacher-forced at once (memory knob)")
    a("--seed", type=int, default=0, help="every (senior, file, schedule) samples from this seed")
    a("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default, all cores; --demo: 1)")
    a("--out", default="eval.json", help="JSON file: settings, metrics, per-problem results, sampled texts")
    a("--demo", action="store_true", help="evaluate the bundled demo model (and its trained senior) on a CPU")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    argv = sys.argv[1:] if argv is None else argv
    if "--demo" in argv:
        p.set_defaults(**DEMO)
    args = p.parse_args(argv)
    args.senior = args.senior or (demo_seniors() if args.demo else None)  # not a default: append would add to it
    args.senior = [newest_checkpoint(m) for m in args.senior or []]
    if not args.senior or not args.data:
        p.error("--senior and --data are required (or --demo)")
    for flag in ("n", "max_new_tokens", "max_turns", "max_gap", "batch", "tf_batch"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("limit", "top_k", "threads", "temperature"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0")
    if not 0 <= args.p_senior <= 1:
        p.error("--p-senior must be in [0, 1]")
    if not 0 < args.top_p <= 1:
        p.error("--top-p must be in (0, 1]")
    names = [name for name, _ in data_sets(args.data) if name]
    for entry in args.data:
        name, files = data_sets([entry])[0]
        if name is not None and (not name or not all(files)):
            p.error(f"--data {entry}: write NAME=FILE,FILE,... (a name, then files separated by commas)")
        if name and names.count(name) > 1:
            p.error(f"--data {entry}: the set name {name} is given twice")
        for f in files:
            try:
                check_data_path(f)  # a folder, a format not read, a missing file
            except UserError as e:
                p.error(str(e) + (f" (in --data {entry})" if name is not None else ""))
    for m in args.senior + [args.junior]:
        if looks_local(m) and not Path(m).expanduser().is_dir():
            p.error(f"{m}: no such model folder")
    return args

# ------------------------------------------------------------------------------------------------------------------
# Statistics: unbiased pass@k, bootstrap intervals over problems

def pass_at_k(n, c, k):
    """P(at least one of k samples drawn without replacement from n, c of them correct, is correct)
    = 1 - C(n-c, k) / C(n, k)  (Chen et al. 2021); exact integers, C(n-c, k) = 0 when k > n-c."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)

def ks_for(n):
    """k = 1, 2, 4, ... up to n, and n itself."""
    return sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})

def bootstrap_ci(groups, n_boot=N_BOOT, seed=0):
    """groups: one tensor of per-problem values per data file. -> (lo, hi): the 95% percentile interval of the macro
    mean (mean over files of the mean over problems), problems resampled with replacement within each file."""
    g = torch.Generator().manual_seed(seed)
    stat = torch.zeros(n_boot, dtype=torch.float64)
    for v in groups:
        idx = torch.randint(len(v), (n_boot, len(v)), generator=g)       # [B, n_f]
        stat += v.double()[idx].mean(1) / len(groups)                   # [B]
    lo, hi = torch.quantile(stat, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi

# ------------------------------------------------------------------------------------------------------------------
# Sampling: n responses per problem under one schedule

def budget(n_prompt, max_new_tokens, schedule):
    """A row's response budget: min(max_new_tokens, 4096 - prompt), and 8 tokens fewer in the authors' handoff loop."""
    return max(0, min(max_new_tokens, CONTEXT - n_prompt - 8 * (schedule == "step")))

def generate(senior, junior, tok, prompts, budgets, schedule, args, word_start, eos):
    """tandem_generate (solo or word) with one token budget per row: rows run to the largest budget, then each is cut
    to its own (the tokens before the cut are distributed exactly as in a run that stopped there). A row cut at its
    budget is truncated. -> tandem_generate's dict, tokens [B, T] etc."""
    kw = dict(word_start=word_start, p_senior=args.p_senior, max_gap=args.max_gap) if schedule == "word" else {}
    with autocast(next(senior.parameters()).device):
        gen = tandem_generate(senior, None if schedule == "solo" else junior, prompts, eos_ids=eos,
                              pad_id=tok.pad_token_id, n_vocab=len(tok), schedule=schedule,
                              max_new_tokens=max(1, max(budgets)), temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, **kw)
    budget = torch.tensor(budgets, device=gen["mask"].device)[:, None]           # [B, 1]
    keep = torch.arange(gen["mask"].shape[1], device=budget.device)[None] < budget  # [B, T]
    gen["truncated"] = gen["truncated"] | (gen["mask"] & ~keep).any(1)
    gen["mask"], gen["senior"] = gen["mask"] & keep, gen["senior"] & keep
    gen["tokens"] = gen["tokens"].masked_fill(~keep, tok.pad_token_id)
    return gen

def turn_text(text):
    """A turn's text -> (its text up to and including its first blank line, True), or (text, False) when it has none.
    As vLLM's stop=["\\n\\n"] with the stop string kept: a token holding a blank line and more ('.\\n\\nThe')
    loses the rest."""
    cut = text.find("\n\n")
    return (text, False) if cut < 0 else (text[:cut + 2], True)

def step_handoff(senior, junior, tok, prompt_texts, budgets, args, step_end, eos):
    """The authors' step handoff, on text: the senior writes the first turn, then the two alternate. Each turn is
    sampled from the prompt + the text so far, re-tokenized (a fresh prefill: the ids are not the ones sampled), until
    its text holds a blank line (cut after it, handed over), EOS (the chain ends) or the budget (ends, truncated).
    Budget: the tokens both models sampled, those a cut dropped included (the authors' count). A chain still running
    after max_turns turns (150 rounds of two) ends truncated. Rows of a turn run as one batch.
    -> one dict per row: text, turns (their texts, the senior's first), authors (who sampled each token), truncated."""
    rows = [dict(text="", turns=[], authors="", truncated=True) for _ in prompt_texts]
    running = list(range(len(rows)))
    for t in range(args.max_turns):
        if not running:
            break
        ids = [tok(prompt_texts[i] + rows[i]["text"], add_special_tokens=False).input_ids for i in running]
        left = [max(1, budgets[i] - len(rows[i]["authors"])) for i in running]  # a turn samples at least one token
        model = (senior, junior)[t % 2]
        with autocast(next(model.parameters()).device):  # one model, stopped at its first blank line (max_turns=1)
            g = tandem_generate(model, None, ids, eos_ids=eos, pad_id=tok.pad_token_id, n_vocab=len(tok),
                                schedule="step", step_end=step_end, max_turns=1, max_new_tokens=max(left),
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        still = []
        for j, i in enumerate(running):
            new = g["tokens"][j][g["mask"][j]].tolist()[:left[j]]     # rows run to the longest; each cut to its own
            text, handoff = turn_text(tok.decode(new, skip_special_tokens=True))  # byte-level BPE: context-free
            r = rows[i]
            r["text"], r["authors"] = r["text"] + text, r["authors"] + "sj"[t % 2] * len(new)
            r["turns"].append(text)
            if new[-1] in eos and not handoff:
                r["truncated"] = False
            elif handoff and len(r["authors"]) < budgets[i]:
                still.append(i)
        running = still
    return rows

def sample_responses(senior, junior, tok, problems, schedule, args, word_start, step_end, eos, desc=""):
    """args.n responses per problem (each prompt repeated n times in the batch), prompts from the senior's tokenizer
    `tok` -> one list of n samples per problem: text, reward, truncated, length, senior_tokens and authors (one
    character per sampled token: s = senior, j = junior); step samples also keep their turns' texts, solo samples
    their prompt and response ids."""
    torch.manual_seed(args.seed)  # the same stream for every senior: paired comparisons get common random numbers
    jobs = []
    for i, p in enumerate(problems):
        text = prompt_ids(tok, p["problem"], as_text=True)  # templated once, repeated n times
        jobs += [(i, tok(text, add_special_tokens=False).input_ids, text)] * args.n
    out = [[] for _ in problems]
    for s in tqdm(range(0, len(jobs), args.batch), desc=desc, leave=False):
        chunk = jobs[s:s + args.batch]
        budgets = [budget(len(p), args.max_new_tokens, schedule) for _, p, _ in chunk]
        if schedule == "step":  # on text, every turn re-tokenized (the authors' protocol)
            xs = step_handoff(senior, junior, tok, [t for *_, t in chunk], budgets, args, step_end, eos)
        else:
            gen, xs = generate(senior, junior, tok, [p for _, p, _ in chunk], budgets, schedule, args, word_start,
                               eos), []
            for j, (_, p, _) in enumerate(chunk):
                resp = gen["tokens"][j][gen["mask"][j]].tolist()
                xs.append(dict(text=tok.decode(resp, skip_special_tokens=True), truncated=bool(gen["truncated"][j]),
                               authors="".join("sj"[not a] for a in gen["senior"][j][gen["mask"][j]].tolist())))
                if schedule == "solo":
                    xs[-1].update(prompt_ids=p, response_ids=resp)
        for (i, _, _), x in zip(chunk, xs):
            graded = not (x["truncated"] and args.truncated_reward == "zero")
            out[i].append(dict(x, reward=reward(x["text"], problems[i]["answer"]) if graded else 0.0,
                               length=len(x["authors"]), senior_tokens=x["authors"].count("s")))
    return out

# ------------------------------------------------------------------------------------------------------------------
# Legibility and drift: both models teacher-forced over the senior's solo chains, temperature 1; bf16 matmuls on
# CUDA (the authors score with bf16 weights in vLLM), float32 on CPU

def next_token_stats(senior, junior, h_s, h_j, y, n_vocab):
    """Final hidden states h_s, h_j [N, H] of the two models before each target y [N] -> [N, 3]:
        -log q(y) (the junior's cross-entropy),  -log p(y) (the senior's),
        KL(p || q) = sum_v p(v) (log p(v) - log q(v))
    with p the senior's and q the junior's next-token distribution over the tokenizer's ids (the output layer is wider),
    LOGITS_CHUNK rows at a time: never N x V."""
    out = []
    for hs, hj, t in zip(h_s.split(LOGITS_CHUNK), h_j.split(LOGITS_CHUNK), y.split(LOGITS_CHUNK)):
        logp = senior.get_output_embeddings()(hs)[:, :n_vocab].float().log_softmax(-1)  # [c, V]
        logq = junior.get_output_embeddings()(hj)[:, :n_vocab].float().log_softmax(-1)  # [c, V]
        kl = (logp.exp() * (logp - logq)).sum(-1)                                      # [c]
        out.append(torch.stack([-logq.gather(1, t[:, None])[:, 0], -logp.gather(1, t[:, None])[:, 0], kl], 1))
    return torch.cat(out)

@torch.no_grad()
def teacher_forced(senior, junior, pairs, n_vocab, pad_id, batch, desc=""):
    """(prompt ids, chain ids) pairs: both models read the same chat prefix and the chain, no sampling.
    -> one (legibility, self-CE, drift) tuple per chain: per-token values averaged over every token of the chain."""
    dev, out = next(senior.parameters()).device, []
    for s in tqdm(range(0, len(pairs), batch), desc=desc, leave=False):
        rows = [dict(prompt=p, response=r, senior=[True] * len(r)) for p, r in pairs[s:s + batch]]
        ids, attn, P, sel = pack(rows, pad_id, dev)            # [b, P+T], [b, P+T], P, sel [b, T]: every chain token
        with autocast(dev):                                     # logits in bf16 on CUDA, log-softmax in float32
            h_s = response_hidden(senior, ids, attn, P, sel)    # [N, H]
            h_j = response_hidden(junior, ids, attn, P, sel)    # [N, H]
            stats = next_token_stats(senior, junior, h_s, h_j, ids[:, P:][sel], n_vocab)  # [N, 3]
        out += [tuple(x.mean(0).tolist()) for x in stats.split(sel.sum(1).tolist())]
    return out

def chain_of_thought(n_prompt, response_ids, truncated):
    """The chain the junior reads: the response without its end-of-turn token (a truncated one has none), or None
    when it is left out: empty, or prompt + chain LEGIBILITY_MAX tokens or more (as the authors)."""
    chain = response_ids if truncated else response_ids[:-1]
    return chain if chain and n_prompt + len(chain) < LEGIBILITY_MAX else None

# ------------------------------------------------------------------------------------------------------------------
# One senior on one file, then the metrics of any set of files (one file, or the macro average)

def evaluate(senior, junior, tok, problems, args, word_start, step_end, eos, name=""):
    """-> {schedule: per-problem lists of n samples}; solo samples also carry legibility, self_ce and drift (None for
    a chain left out)."""
    res = {s: sample_responses(senior, junior, tok, problems, s, args, word_start, step_end, eos, f"{name} {s}")
           for s in SCHEDULES}
    solo = [x for per_problem in res["solo"] for x in per_problem]
    chains = []  # (prompt ids, chain ids or None when left out), one per solo sample
    for x in solo:
        p = x.pop("prompt_ids")
        chains.append((p, chain_of_thought(len(p), x.pop("response_ids"), x["truncated"])))
    kept = [i for i, (_, c) in enumerate(chains) if c is not None]
    tf = teacher_forced(senior, junior, [chains[i] for i in kept], len(tok), tok.pad_token_id, args.tf_batch,
                        f"{name} teacher-forced")
    for x in solo:
        x.update(legibility=None, self_ce=None, drift=None)
    for i, (legibility, self_ce, drift) in zip(kept, tf):
        solo[i].update(legibility=legibility, self_ce=self_ce, drift=drift)
    return res

def per_problem_pass(samples, k):
    """[P] lists of n samples -> pass@k of each problem [P] (correct: reward 1)."""
    return torch.tensor([pass_at_k(len(s), sum(x["reward"] == 1 for x in s), k) for s in samples], dtype=torch.float64)

def mean(xs):
    return sum(xs) / len(xs) if xs else None

def metrics(files, args):
    """files: one evaluate() result per data file -> metrics of their macro average (of one file: that file's).
    pass@k: [estimate, lo, hi], estimate = mean over files of the mean over problems; the rest: per response, per file,
    then over files (legibility, self-CE, drift: over the chains not left out; None when there is none)."""
    m = {}
    responses = lambda f, sch: [x for s in f[sch] for x in s]
    for sch in SCHEDULES:
        for k in ks_for(args.n):
            v = [per_problem_pass(f[sch], k) for f in files]
            m[f"{sch} pass@{k}"] = [mean([x.mean().item() for x in v]), *bootstrap_ci(v, seed=args.seed)]
        m[f"{sch} share"] = mean([sum(x["senior_tokens"] for x in responses(f, sch)) /
                                  max(1, sum(x["length"] for x in responses(f, sch))) for f in files])
        for key in ("length", "truncated"):
            m[f"{sch} {key}"] = mean([mean([float(x[key]) for x in responses(f, sch)]) for f in files])
    kr = min(4, args.n)
    solo = m[f"solo pass@{kr}"][0]
    m[f"step/solo pass@{kr}"] = m[f"step pass@{kr}"][0] / solo if solo else None
    for key in ("legibility", "self_ce", "drift"):
        per_file = [mean([x[key] for x in responses(f, "solo") if x[key] is not None]) for f in files]
        m[key] = mean([v for v in per_file if v is not None])
    m["left out"] = sum(x["legibility"] is None for f in files for x in responses(f, "solo"))  # chains, all files
    return m

def paired(files_b, files_a, args):
    """Senior b minus senior a, paired by problem: {schedule pass@k: [difference, lo, hi]} (macro over the files)."""
    d = {}
    for sch in SCHEDULES:
        for k in ks_for(args.n):
            v = [per_problem_pass(fb[sch], k) - per_problem_pass(fa[sch], k) for fb, fa in zip(files_b, files_a)]
            d[f"{sch} pass@{k}"] = [sum(x.mean().item() for x in v) / len(v), *bootstrap_ci(v, seed=args.seed)]
    return d

# ------------------------------------------------------------------------------------------------------------------
# The table: rows are seniors (per file, then the macro average); pass@k in percent with its 95% interval

def pct(v, sign=""):
    """[estimate, lo, hi] -> 'estimate [lo,hi]' in percent."""
    return f"{100 * v[0]:{sign}.1f} [{100 * v[1]:{sign}.1f},{100 * v[2]:{sign}.1f}]"

def render(rows):
    """Rows of strings -> aligned text: the first two columns to the left, the numbers to the right."""
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)

def num(v, fmt=".3f"):
    return "-" if v is None else f"{v:{fmt}}"

def table(report):
    """Rows: seniors, per file then the macro average; then each senior minus the first, paired by problem."""
    st = report["settings"]
    kr = min(4, st["n"])
    cols = [("solo@1", lambda m: pct(m["solo pass@1"])), (f"solo@{kr}", lambda m: pct(m[f"solo pass@{kr}"])),
            (f"step@{kr}", lambda m: pct(m[f"step pass@{kr}"])),
            (f"step/solo@{kr}", lambda m: "-" if m[f"step/solo pass@{kr}"] is None else  # solo 0: no ratio
             f"{100 * m[f'step/solo pass@{kr}']:.1f}%"),
            (f"word@{kr}", lambda m: pct(m[f"word pass@{kr}"])),
            ("legib", lambda m: num(m["legibility"])), ("drift", lambda m: num(m["drift"])),
            ("self-CE", lambda m: num(m["self_ce"])), ("left out", lambda m: str(m["left out"])),
            ("share step/word", lambda m: f"{100 * m['step share']:.0f}%/{100 * m['word share']:.0f}%"),
            ("len solo/step/word", lambda m: "/".join(f"{m[s + ' length']:.0f}" for s in SCHEDULES)),
            ("cut solo/step/word", lambda m: "/".join(f"{100 * m[s + ' truncated']:.0f}%" for s in SCHEDULES))]
    dcols = [(f"d {h}", lambda d, k=k: pct(d[k], "+")) for h, k in [("solo@1", "solo pass@1"),
             (f"solo@{kr}", f"solo pass@{kr}"), (f"step@{kr}", f"step pass@{kr}"), (f"word@{kr}", f"word pass@{kr}")]]
    scopes = report["files"] + (["macro"] if len(report["files"]) > 1 else [])
    rows = [["data", "senior"] + [h for h, _ in cols]]
    rows += [[s, name] + [f(r["macro"] if s == "macro" else r["files"][s]["metrics"]) for _, f in cols]
             for s in scopes for name, r in report["seniors"].items()]
    rule = {"grade": "graded as cut (the authors' rule)", "zero": "scored 0 (--truncated-reward zero)"}
    out = render(rows) + (
        f"\npass@k in % [95% bootstrap interval over problems], {st['n']} samples a problem; step: handoff alternating "
        f"at blank lines, at most {st['max_turns']} turns; word: handoff under the training coin (p_senior "
        f"{st['p_senior']}); cut: responses stopped by the budget or the turns, {rule[st['truncated_reward']]}"
        f"\nlegib, drift, self-CE: nats per token over the solo chains without the end-of-turn token; left out: "
        f"chains empty or with prompt + chain >= {LEGIBILITY_MAX} tokens")
    if report["paired"]:
        rows = [["data", "paired by problem"] + [h for h, _ in dcols]]
        rows += [[s, pair] + [f(d[s]) for _, f in dcols] for s in scopes for pair, d in report["paired"].items()]
        out += "\n\n" + render(rows)
    return out

# ------------------------------------------------------------------------------------------------------------------
# Main: every senior on every file, the table, the JSON

def data_sets(entries):
    """--data entries -> [(name, files)]: NAME=F1,F2,... pools files into one set (name NAME; a name has no '/');
    a plain file is a set of its own (name None: main names it by its path)."""
    pooled = lambda e: "=" in e and "/" not in e.split("=", 1)[0]
    return [(e.split("=", 1)[0], e.split("=", 1)[1].split(",")) if pooled(e) else (None, [e]) for e in entries]

def unique_names(paths, min_parts):
    """Display names: the shortest tail of each path (at least min_parts parts; a local path taken relative to the
    working folder) that no other path shares, so that data/eval/aime24/test.parquet is aime24/test.parquet next to
    data/eval/amc23_25/test.parquet; the same path twice gets ' #2'."""
    parts = [Path(os.path.relpath(p) if Path(p).exists() else p).parts for p in paths]
    tail = lambda i, k: "/".join(parts[i][-k:])
    names = []
    for i in range(len(paths)):
        k = min_parts
        while k < len(parts[i]) and any(tail(j, k) == tail(i, k) for j in range(len(paths)) if parts[j] != parts[i]):
            k += 1
        name, n = tail(i, k), 1
        while name in names:
            n += 1
            name = f"{tail(i, k)} #{n}"
        names.append(name)
    return names

def check_writable(out):
    """Fail now, not after hours of sampling, if --out cannot be written (a folder, a read-only place)."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        existed = out.exists()
        with open(out, "a"):
            pass
        if not existed:
            out.unlink()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write it ({e.strerror}: {e.filename})") from None

def main(args):
    t0 = time.time()
    check_writable(args.out)
    if args.threads:  # the demo's tiny model: 2 threads gain ~20% on 2 idle cores and cost 5-10x on 2 busy ones
        torch.set_num_threads(args.threads)
    sets = data_sets(args.data)
    tails = iter(unique_names([files[0] for name, files in sets if name is None], 1))
    data = {name or next(tails): [p for f in files for p in load_problems(f)[:args.limit or None]]  # pooled in order
            for name, files in sets}  # validated before models load
    dev = torch.device(args.device)
    jtok = load_tokenizer(args.junior)
    toks = {}  # each senior's own tokenizer builds its prompts; ids pass unchanged, so the vocabularies must agree
    for path in args.senior:
        toks[path] = load_tokenizer(path)
        same_vocabulary(toks[path], path, args.junior, jtok)
    word_start, step_end = word_start_mask(jtok), step_end_mask(jtok)
    junior = load_model(args.junior, dev, torch.float32, trainable=False)
    report = dict(settings=dict(vars(args), context=CONTEXT, legibility_max=LEGIBILITY_MAX, n_boot=N_BOOT,
                                ks=ks_for(args.n)), files=list(data), seniors={}, paired={})
    results = {}  # senior name -> one evaluate() result per file
    for path, name in zip(args.senior, unique_names(args.senior, 2)):
        senior = junior if path == args.junior else load_model(path, dev, torch.float32, trainable=False)
        tok, eos = toks[path], eos_ids(toks[path], senior) | eos_ids(jtok, junior)
        res = results[name] = [evaluate(senior, junior, tok, p, args, word_start, step_end, eos, f"{name} {f}")
                               for f, p in data.items()]
        del senior
        report["seniors"][name] = dict(path=path, macro=metrics(res, args), files={f: dict(
            metrics=metrics([r], args),
            problems=[dict(p, **{sch: dict(correct=sum(x["reward"] == 1 for x in r[sch][i]), samples=r[sch][i])
                                 for sch in SCHEDULES}) for i, p in enumerate(data[f])])
            for f, r in zip(data, res)})
    first, *others = results
    for name in others:  # every senior minus the first, paired by problem
        d = {f: paired([b], [a], args) for f, b, a in zip(data, results[name], results[first])}
        report["paired"][f"{name} - {first}"] = dict(d, macro=paired(results[name], results[first], args))
    print(table(report))
    report["settings"]["wall_s"] = round(time.time() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return report

if __name__ == "__main__":
    try:
        main(get_args())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
