"""
eval.py: the paper's three claims, measured. Each senior on each data file, side by side, with 95% intervals.

  solo pass@k     the senior alone: n samples a problem, unbiased pass@k = 1 - C(n-c, k) / C(n, k), k = 1, 2, 4, .., n
  step pass@k     handoff: the senior writes the first reasoning step, then senior and junior strictly alternate at
                  every \\n\\n, one shared token budget min(max_new_tokens, 4096 - prompt - 8), at most 150 turns;
                  also as step/solo, the ratio of handoff pass@4 to solo pass@4
  word pass@k     handoff under the training schedule: the author redrawn by a coin (p_senior 0.5) after every
                  word-start token or 32 tokens without one
  legibility      the junior's mean per-token cross-entropy (nats) over the senior's own solo responses
  drift           mean per-token KL(senior || junior) over those responses, from the full next-token distributions,
                  next to the senior's own cross-entropy on them (self-CE)
  share, length   the senior's share of the tokens and the mean response length (tokens) under each schedule
Every pass@k carries a 95% bootstrap interval over problems, and so does the difference between two seniors, paired
by problem. A truncated response (no EOS within its budget or its turns) scores 0. Averages: per problem (pass@k) or
per response (the rest), then per file, then the macro average over files. Definitions: ../shared/SPEC.md, section 4.

Run it:
    python eval.py --demo                               # the bundled tiny model, before and after tandem_grpo --demo
    python eval.py --senior runs/grpo/step_000200 --senior runs/trl/step_000120 --junior Qwen/Qwen3-4B-Instruct-2507 \\
        --data aime.jsonl amc.jsonl minerva.jsonl olympiad.jsonl --out runs/eval.json
Everything (settings, every metric, per-problem results, the sampled texts) also goes to --out as JSON.
"""
import argparse, json, math, sys, time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from tandem_grpo import (DEMO_DIR, LOGITS_CHUNK, autocast, eos_ids, load_model, load_problems, pack, prompt_ids,
                         response_hidden, reward, step_end_mask, tandem_generate, word_start_mask)

# ------------------------------------------------------------------------------------------------------------------
# Settings (the paper's evaluation sampling is the default)

HANDOFF_CONTEXT = 4096  # the authors' handoff runs: prompt + response + 8 must fit a 4096-token window
N_BOOT = 2000           # bootstrap resamples
SCHEDULES = ("solo", "step", "word")

def demo_seniors():
    """The demo base model, and the senior `python tandem_grpo.py --demo` trained, if it exists (runs/demo/latest)."""
    latest = Path("runs/demo/latest")
    trained = [str(latest.parent / latest.read_text().strip())] if latest.exists() else []
    return [str(DEMO_DIR / "model")] + trained

# --demo swaps in these defaults (flags on the command line still win): all 200 held-out problems, ~90 s on 2 cores.
DEMO = dict(junior=str(DEMO_DIR / "model"), data=[str(DEMO_DIR / "test.jsonl")], n=4, max_new_tokens=96, batch=128,
            tf_batch=64, out="runs/demo/eval.json")

def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--senior", action="append", help="model to evaluate, hub id or local folder; repeat the flag for several")
    a("--junior", default="Qwen/Qwen3-4B-Instruct-2507", help="the frozen junior (same tokenizer as every senior)")
    a("--data", nargs="+", help="problem files (.jsonl/.json, or hf://datasets/OWNER/NAME/FILE)")
    a("--limit", type=int, default=0, help="evaluate the first N problems of each file (0: all)")
    a("--n", type=int, default=8, help="samples per problem, for every schedule")
    a("--temperature", type=float, default=0.7)
    a("--top-p", type=float, default=0.8)
    a("--top-k", type=int, default=20)
    a("--max-new-tokens", type=int, default=3000, help="solo budget; handoff: min(this, 4096 - prompt - 8)")
    a("--max-turns", type=int, default=150, help="step schedule: at most this many turns")
    a("--p-senior", type=float, default=0.5, help="word schedule: probability the coin picks the senior")
    a("--max-gap", type=int, default=32, help="word schedule: redraw after this many tokens without a word start")
    a("--batch", type=int, default=64, help="rows generated at once (memory knob: both KV caches)")
    a("--tf-batch", type=int, default=8, help="responses teacher-forced at once (memory knob)")
    a("--seed", type=int, default=0, help="every (senior, file, schedule) samples from this seed")
    a("--out", default="eval.json", help="JSON file: settings, metrics, per-problem results, sampled texts")
    a("--demo", action="store_true", help="evaluate the bundled demo model (and its trained senior) on 2 CPU cores")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    argv = sys.argv[1:] if argv is None else argv
    if "--demo" in argv:
        p.set_defaults(**DEMO)
    args = p.parse_args(argv)
    args.senior = args.senior or (demo_seniors() if args.demo else None)  # not a default: append would add to it
    if not args.senior or not args.data:
        p.error("--senior and --data are required (or --demo)")
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

def handoff_budget(n_prompt, max_new_tokens):
    """Tokens the senior and junior share: min(max_new_tokens, 4096 - prompt length - 8), as the authors ran it."""
    return max(0, min(max_new_tokens, HANDOFF_CONTEXT - n_prompt - 8))

def generate(senior, junior, tok, prompts, budgets, schedule, args, ws, se):
    """tandem_generate with one token budget per row: rows run to the largest budget, then each is cut to its own
    (the tokens before the cut are distributed exactly as in a run that stopped there). A row cut at its budget, or
    stopped without EOS (e.g. after max_turns), is truncated. -> tandem_generate's dict, tokens [B, T] etc."""
    kw = dict(solo=dict(), step=dict(step_end=se, max_turns=args.max_turns),
              word=dict(word_start=ws, p_senior=args.p_senior, max_gap=args.max_gap))[schedule]
    with autocast(next(senior.parameters()).device):
        g = tandem_generate(senior, None if schedule == "solo" else junior, prompts, eos_ids=eos_ids(tok, senior),
                            pad_id=tok.pad_token_id, n_vocab=len(tok), schedule=schedule,
                            max_new_tokens=max(1, max(budgets)), temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, **kw)
    budget = torch.tensor(budgets, device=g["mask"].device)[:, None]           # [B, 1]
    keep = torch.arange(g["mask"].shape[1], device=budget.device)[None] < budget  # [B, T]
    g["truncated"] = g["truncated"] | (g["mask"] & ~keep).any(1)
    g["mask"], g["senior"] = g["mask"] & keep, g["senior"] & keep
    g["tokens"] = g["tokens"].masked_fill(~keep, tok.pad_token_id)
    return g

def sample_responses(senior, junior, tok, problems, schedule, args, ws, se, desc=""):
    """args.n responses per problem (each prompt repeated n times in the batch) -> one list of n samples per problem:
    text, reward (0 if truncated), truncated, length and senior_tokens; solo samples keep prompt and response ids."""
    torch.manual_seed(args.seed)  # the same stream for every senior: paired comparisons get common random numbers
    jobs = [(i, ids) for i, p in enumerate(problems) for ids in [prompt_ids(tok, p["problem"])] for _ in range(args.n)]
    out = [[] for _ in problems]
    for s in tqdm(range(0, len(jobs), args.batch), desc=desc, leave=False):
        chunk = jobs[s:s + args.batch]
        budgets = [args.max_new_tokens if schedule == "solo" else handoff_budget(len(p), args.max_new_tokens)
                   for _, p in chunk]
        g = generate(senior, junior, tok, [p for _, p in chunk], budgets, schedule, args, ws, se)
        for j, (i, p) in enumerate(chunk):
            resp = g["tokens"][j][g["mask"][j]].tolist()
            text, truncated = tok.decode(resp, skip_special_tokens=True), bool(g["truncated"][j])
            out[i].append(dict(text=text, reward=0.0 if truncated else reward(text, problems[i]["answer"]),
                               truncated=truncated, length=len(resp), senior_tokens=int(g["senior"][j].sum())))
            if schedule == "solo":
                out[i][-1].update(prompt_ids=p, response_ids=resp)
    return out

# ------------------------------------------------------------------------------------------------------------------
# Legibility and drift: both models teacher-forced over the senior's solo responses, float32, temperature 1

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
    """(prompt ids, response ids) pairs: both models read the same chat prefix and the response, no sampling.
    -> one (legibility, self-CE, drift) tuple per response: per-token values averaged over its tokens (EOS included)."""
    dev, out = next(senior.parameters()).device, []
    for s in tqdm(range(0, len(pairs), batch), desc=desc, leave=False):
        rows = [dict(prompt=p, response=r, senior=[True] * len(r)) for p, r in pairs[s:s + batch]]
        ids, attn, P, sel = pack(rows, pad_id, dev)            # [b, P+T], [b, P+T], P, sel [b, T]: every response token
        h_s = response_hidden(senior, ids, attn, P, sel)        # [N, H] float32 (no autocast)
        h_j = response_hidden(junior, ids, attn, P, sel)        # [N, H]
        stats = next_token_stats(senior, junior, h_s, h_j, ids[:, P:][sel], n_vocab)  # [N, 3]
        out += [tuple(x.mean(0).tolist()) for x in stats.split(sel.sum(1).tolist())]
    return out

# ------------------------------------------------------------------------------------------------------------------
# One senior on one file, then the metrics of any set of files (one file, or the macro average)

def evaluate(senior, junior, tok, problems, args, ws, se, name=""):
    """-> {schedule: per-problem lists of n samples}; solo samples also carry legibility, self_ce and drift."""
    res = {s: sample_responses(senior, junior, tok, problems, s, args, ws, se, f"{name} {s}") for s in SCHEDULES}
    solo = [x for per_problem in res["solo"] for x in per_problem]
    tf = teacher_forced(senior, junior, [(x.pop("prompt_ids"), x.pop("response_ids")) for x in solo], len(tok),
                        tok.pad_token_id, args.tf_batch, f"{name} teacher-forced")
    for x, (legibility, self_ce, drift) in zip(solo, tf):
        x.update(legibility=legibility, self_ce=self_ce, drift=drift)
    return res

def per_problem_pass(samples, k):
    """[P] lists of n samples -> pass@k of each problem [P] (correct: reward 1)."""
    return torch.tensor([pass_at_k(len(s), sum(x["reward"] == 1 for x in s), k) for s in samples], dtype=torch.float64)

def metrics(files, args):
    """files: one evaluate() result per data file -> metrics of their macro average (of one file: that file's).
    pass@k: [estimate, lo, hi], estimate = mean over files of the mean over problems; the rest: per response, per file,
    then over files."""
    m, mean = {}, lambda xs: sum(xs) / len(xs)
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
    m[f"step/solo pass@{kr}"] = m[f"step pass@{kr}"][0] / solo if solo else float("nan")
    for key in ("legibility", "self_ce", "drift"):
        m[key] = mean([mean([x[key] for x in responses(f, "solo")]) for f in files])
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

def table(report, n):
    """Rows: seniors, per file then the macro average; then each senior minus the first, paired by problem."""
    kr = min(4, n)
    cols = [("solo@1", lambda m: pct(m["solo pass@1"])), (f"solo@{kr}", lambda m: pct(m[f"solo pass@{kr}"])),
            (f"step@{kr}", lambda m: pct(m[f"step pass@{kr}"])),
            ("step/solo", lambda m: f"{100 * m[f'step/solo pass@{kr}']:.1f}%"),
            (f"word@{kr}", lambda m: pct(m[f"word pass@{kr}"])),
            ("legib", lambda m: f"{m['legibility']:.3f}"), ("drift", lambda m: f"{m['drift']:.3f}"),
            ("self-CE", lambda m: f"{m['self_ce']:.3f}"),
            ("share step/word", lambda m: f"{100 * m['step share']:.0f}%/{100 * m['word share']:.0f}%"),
            ("len solo/step/word", lambda m: "/".join(f"{m[s + ' length']:.0f}" for s in SCHEDULES))]
    dcols = [(f"d {h}", lambda d, k=k: pct(d[k], "+")) for h, k in [("solo@1", "solo pass@1"),
             (f"solo@{kr}", f"solo pass@{kr}"), (f"step@{kr}", f"step pass@{kr}"), (f"word@{kr}", f"word pass@{kr}")]]
    scopes = report["files"] + (["macro"] if len(report["files"]) > 1 else [])
    rows = [["data", "senior"] + [h for h, _ in cols]]
    rows += [[s, name] + [f(r["macro"] if s == "macro" else r["files"][s]["metrics"]) for _, f in cols]
             for s in scopes for name, r in report["seniors"].items()]
    out = render(rows) + ("\npass@k in % [95% bootstrap interval over problems]; step: handoff alternating at \\n\\n; "
                          "word: handoff under the training coin; legib, drift, self-CE in nats per token")
    if report["paired"]:
        rows = [["data", "paired by problem"] + [h for h, _ in dcols]]
        rows += [[s, pair] + [f(d[s]) for _, f in dcols] for s in scopes for pair, d in report["paired"].items()]
        out += "\n\n" + render(rows)
    return out

# ------------------------------------------------------------------------------------------------------------------
# Main: every senior on every file, the table, the JSON

def main(args):
    t0 = time.time()
    if args.demo:  # a tiny model: a second thread gains ~20% on an idle 2-core machine and costs 5-10x on a busy one
        torch.set_num_threads(1)
    data = {Path(f).name: load_problems(f)[:args.limit or None] for f in args.data}  # validated before models load
    dev = torch.device(args.device)
    tok = AutoTokenizer.from_pretrained(args.junior)
    for path in args.senior:  # token ids pass unchanged between the two models
        if AutoTokenizer.from_pretrained(path).get_vocab() != tok.get_vocab():
            sys.exit(f"{path}: its tokenizer differs from the junior's ({args.junior})")
    ws, se = word_start_mask(tok), step_end_mask(tok)
    junior = load_model(args.junior, dev, torch.float32, trainable=False)
    report = dict(settings=dict(vars(args), handoff_context=HANDOFF_CONTEXT, n_boot=N_BOOT, ks=ks_for(args.n)),
                  files=list(data), seniors={}, paired={})
    results = {}  # senior name -> one evaluate() result per file
    for path in args.senior:
        name = "/".join(Path(path).parts[-2:])
        senior = junior if path == args.junior else load_model(path, dev, torch.float32, trainable=False)
        res = results[name] = [evaluate(senior, junior, tok, p, args, ws, se, f"{name} {f}") for f, p in data.items()]
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
    print(table(report, args.n))
    report["settings"]["wall_s"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return report

if __name__ == "__main__":
    main(get_args())
