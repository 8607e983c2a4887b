"""
lab/run.py: what TRL buys over vanilla GRPO, side by side, on 2 CPU cores in about 15 minutes (lab/README.md).

For each seed, the same base (lab/model), data, steps and budgets train two seniors that differ only in the schedule:
  grpo  --schedule solo                       vanilla GRPO: the senior writes every token
  trl   --schedule word --p-senior 0.5        TRL: a self-paired frozen junior writes about half of the tokens
Both arms run at once (one CPU thread each), then eval.py measures base, grpo and trl on the held-out problems:
solo pass@k, step-handoff pass@k (and step/solo), word-handoff pass@k, legibility and drift, and the paired
differences trl - grpo, and the solo reward under the training objective (obj). Seeds are added while they fit
--budget-s (at least 2). Prints the table, then each seed's rows and which property held on which seed, writes one
JSON file, draws a figure if matplotlib is installed (pip install matplotlib), and ends with one summary line.

    python lab/run.py                                  # the default lab
    python lab/run.py --p-senior 0.25                  # an exercise: any trl-arm flag below (see lab/README.md)
"""
import argparse, contextlib, json, os, platform, re, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "lab"
sys.path.insert(0, str(ROOT))
import eval as ev  # noqa: E402

def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--seeds", type=int, default=0, help="training seeds (0: as many as fit --budget-s, at least 2)")
    a("--budget-s", type=float, default=840, help="with --seeds 0: start another seed only if it should end by then")
    a("--max-seeds", type=int, default=5, help="with --seeds 0: at most this many")
    a("--steps", type=int, default=40, help="training steps per arm")
    a("--prompts-per-step", type=int, default=8, help="prompts per step (x --group-size rollouts)")
    a("--group-size", type=int, default=8, help="rollouts per prompt")
    a("--lr", type=float, default=1e-4, help="AdamW learning rate")
    a("--length-penalty", type=float, default=1.0, help="reward x (1 - this x tokens / --max-new-tokens), both arms")
    a("--max-new-tokens", type=int, default=112, help="token budget of a response, training and eval")
    a("--temperature", type=float, default=1.0, help="rollout temperature in training")
    a("--schedule", default="word", choices=["word", "token", "step", "solo"], help="the trl arm's schedule")
    a("--p-senior", type=float, default=0.5, help="the trl arm's p_senior")
    a("--kl-coef", type=float, default=0.0, help="the trl arm's k3 KL toward the junior")
    a("--junior-token-weight", type=float, default=0.0, help="the trl arm's weight of junior tokens in the loss")
    a("--junior", default=str(LAB / "model"), help="the frozen junior, training (trl arm) and eval")
    a("--model", default=str(LAB / "model"), help="the base both arms start from")
    a("--data", default=str(LAB / "train.jsonl"), help="training problems")
    a("--test", default=str(LAB / "test.jsonl"), help="held-out problems")
    a("--limit", type=int, default=200, help="evaluate the first N held-out problems")
    a("--n", type=int, default=4, help="eval samples per problem and schedule")
    a("--jobs", type=int, default=2, help="processes at once, one CPU thread each (0: all in this process)")
    a("--out", default="runs/lab", help="output folder (must not hold a lab run already)")
    args = p.parse_args(argv)
    if (Path(args.out) / "lab.json").exists():
        p.error(f"--out {args.out} holds a lab run already: choose a new --out")
    return args

# ------------------------------------------------------------------------------------------------------------------
# The two arms and the evaluation: the same flags, spelled out, except the schedule (and the trl-arm exercise flags)

def train_argv(args, arm, seed, out):
    shared = ["--model", args.model, "--data", args.data, "--group-size", str(args.group_size),
              "--prompts-per-step", str(args.prompts_per_step), "--mini-batch-prompts", str(args.prompts_per_step // 2),
              "--micro-batch", "64", "--gen-batch", "64", "--lr", str(args.lr), "--weight-decay", "0.01",
              "--clip-low", "0.2", "--clip-high", "0.2", "--clip-c", "3.0", "--grad-clip", "1.0",
              "--temperature", str(args.temperature), "--max-prompt-tokens", "1024",
              "--max-new-tokens", str(args.max_new_tokens), "--truncated-reward", "grade",
              "--length-penalty", str(args.length_penalty), "--steps", str(args.steps), "--save-every", "0",
              "--val-size", "0", "--val-every", "0", "--log-every", "0", "--show-every", "0", "--seed", str(seed),
              "--device", "cpu", "--threads", "1", "--out", str(out), "--max-gap", "32", "--junior", args.junior,
              "--p-senior", str(args.p_senior)]
    if arm == "grpo":  # vanilla GRPO: the senior writes every token (p-senior and junior unused)
        return shared + ["--schedule", "solo", "--kl-coef", "0.0", "--junior-token-weight", "0.0"]
    return shared + ["--schedule", args.schedule, "--kl-coef", str(args.kl_coef),
                     "--junior-token-weight", str(args.junior_token_weight)]

def eval_argv(args, seniors, seed, out):
    return (sum([["--senior", s] for s in seniors], []) +
            ["--junior", args.junior, "--data", args.test, "--limit", str(args.limit), "--n", str(args.n),
             "--temperature", "0.7", "--top-p", "0.8", "--top-k", "20", "--max-new-tokens", str(args.max_new_tokens),
             "--max-turns", "300", "--truncated-reward", "grade", "--p-senior", "0.5", "--max-gap", "32",
             "--batch", "128", "--tf-batch", "64", "--seed", str(seed), "--device", "cpu", "--threads", "1",
             "--out", str(out)])

IN_PROCESS = threading.Lock()  # one in-process run at a time: sys.stdout is redirected for the whole process

def run(script, argv, log, jobs=1):
    """One CPU thread per process: two processes fill the two cores; a tiny model gains nothing from a second.
    jobs 0: in this process instead (tests; no parallelism)."""
    if jobs == 0:
        import tandem_grpo as tg
        mod = dict(zip(("tandem_grpo.py", "eval.py"), (tg, ev)))[script]
        with IN_PROCESS, open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            mod.main(mod.get_args(argv))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, str(ROOT / script), *argv], stdout=f, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT).returncode
    if rc:
        sys.exit(f"lab: {script} failed (exit {rc}); its log: {log}\n" + Path(log).read_text()[-2000:])

def run_seed(args, seed, out, pool, then=None):
    """Train both arms of one seed in parallel, then evaluate them (paired: trl - grpo) -> (eval report, metrics).
    then: a function called once both trainings are queued (the base's evaluation takes the first free core)."""
    d = out / f"seed{seed}"
    arms = {arm: d / arm for arm in ("grpo", "trl")}
    d.mkdir(parents=True, exist_ok=True)
    jobs = [pool.submit(run, "tandem_grpo.py", train_argv(args, arm, seed, f), d / f"train_{arm}.log", args.jobs)
            for arm, f in arms.items()]
    if then:
        then()
    [j.result() for j in jobs]
    final = lambda f: str(f / (f / "latest").read_text().strip())
    run("eval.py", eval_argv(args, [final(arms["grpo"]), final(arms["trl"])], seed, d / "eval.json"), d / "eval.log",
        args.jobs)
    train = {arm: [json.loads(l) for l in (f / "metrics.jsonl").read_text().splitlines()] for arm, f in arms.items()}
    return json.loads((d / "eval.json").read_text()), train

# ------------------------------------------------------------------------------------------------------------------
# What the seniors write: the share of column steps without their ", carry N" annotation (the compact notation)

STEP = re.compile(r"^\w+: \d\+\d\+\d=\d+(, carry \d)?$", re.M)

def compact_share(texts):
    """Share of the column steps ("Tens: 5+8+1=14") written without ", carry N", over all the texts."""
    steps = [m.group(1) for t in texts for m in STEP.finditer(t)]
    return sum(s is None for s in steps) / max(1, len(steps))

# ------------------------------------------------------------------------------------------------------------------
# Statistics over seeds: the mean, the spread, and a two-level bootstrap (seeds, then problems within a seed)

def per_problem(report, name, sch, k):
    """[P] pass@k of each problem for one senior of one eval report (one data file)."""
    problems = report["seniors"][name]["files"][report["files"][0]]["problems"]
    return torch.tensor([ev.pass_at_k(len(p[sch]["samples"]), p[sch]["correct"], k) for p in problems],
                        dtype=torch.float64)

def objective(samples, lam, budget):
    """[P] lists of samples -> [P] mean solo reward under the training objective, per problem: the length-penalised
    reward both arms maximise, reward x (1 - lam x response tokens / budget) (eval.py's reward and length)."""
    return torch.tensor([sum(x["reward"] * (1 - lam * x["length"] / budget) for x in s) / len(s) for s in samples],
                        dtype=torch.float64)

def per_problem_objective(report, name, lam, budget):
    """[P] obj of each problem for one senior of one eval report (its solo samples)."""
    problems = report["seniors"][name]["files"][report["files"][0]]["problems"]
    return objective([p["solo"]["samples"] for p in problems], lam, budget)

def seed_bootstrap(vectors, n_boot=2000, seed=0):
    """vectors: one [P] tensor of per-problem values per seed -> (mean, lo, hi): the 95% interval of the mean over
    seeds of the mean over problems, resampling seeds and then problems within each seed, with replacement."""
    g, S = torch.Generator().manual_seed(seed), len(vectors)
    v = torch.stack(vectors)                                            # [S, P]
    pick = torch.randint(S, (n_boot, S), generator=g)                   # [B, S] seeds drawn
    idx = torch.randint(v.shape[1], (n_boot, S, v.shape[1]), generator=g)  # [B, S, P] problems drawn
    stat = v[pick[:, :, None], idx].mean((1, 2))                        # [B]
    lo, hi = torch.quantile(stat, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [v.mean().item(), lo, hi]

def summarize(reports, names, kr, lam, budget):
    """reports: one eval report per seed; names: {model: senior name in the reports, per seed} -> table numbers.
    lam, budget: the training objective's length cost (obj: the solo reward under it, as in training)."""
    out = {}
    keys = [("solo", 1), ("solo", kr), ("step", 1), ("step", kr), ("word", kr)]
    vectors = lambda r, n: {**{f"{s}@{k}": per_problem(r, n, s, k) for s, k in keys},
                            "obj": per_problem_objective(r, n, lam, budget)}
    for model, per_seed in names.items():
        vs = [vectors(r, n) for r, n in zip(reports, per_seed)]
        vec = {key: [v[key] for v in vs] for key in vs[0]}
        m = {key: seed_bootstrap(v) for key, v in vec.items()}
        for key, v in vec.items():
            m[key + " seeds"] = [x.mean().item() for x in v]
        for key in ("legibility", "drift", "self_ce", "step share", "word share", "solo length"):
            m[key + " seeds"] = [r["seniors"][n]["macro"][key] for r, n in zip(reports, per_seed)]
            m[key] = sum(m[key + " seeds"]) / len(reports)
        f = reports[0]["files"][0]
        m["compact seeds"] = [compact_share([x["text"] for p in r["seniors"][n]["files"][f]["problems"]
                                             for x in p["solo"]["samples"]]) for r, n in zip(reports, per_seed)]
        m["compact"] = sum(m["compact seeds"]) / len(reports)
        m["step/solo"] = m[f"step@{kr}"][0] / m[f"solo@{kr}"][0] if m[f"solo@{kr}"][0] else float("nan")
        out[model] = m
    if "grpo" in names and "trl" in names:
        d, vg, vt = {}, *[[vectors(r, n) for r, n in zip(reports, names[arm])] for arm in ("grpo", "trl")]
        for key in vg[0]:
            diff = [t[key] - g[key] for g, t in zip(vg, vt)]
            d[key] = seed_bootstrap(diff)
            d[key + " seeds"] = [x.mean().item() for x in diff]
            d[key + " seeds ci"] = [seed_bootstrap([x]) for x in diff]  # per seed: bootstrap over its problems
        for key in ("legibility", "drift", "compact"):
            d[key] = out["trl"][key] - out["grpo"][key]
        out["trl - grpo"] = d
    return out

# ------------------------------------------------------------------------------------------------------------------
# The table, the summary line, the figure

def spread(xs, scale=1.0, fmt=".1f"):
    return f"{scale * sum(xs) / len(xs):{fmt}}" + (f" ±{scale * (max(xs) - min(xs)) / 2:{fmt}}" if len(xs) > 1 else "")

def table(s, kr, n_seeds):
    pc = lambda v, sign="": f"{100 * v[0]:{sign}.1f} [{100 * v[1]:{sign}.1f},{100 * v[2]:{sign}.1f}]"
    rows = [["model", "solo@1", f"solo@{kr}", "obj", "step@1", f"step@{kr}", "step/solo", f"word@{kr}", "legib",
             "drift", "compact", "len"]]
    for model in ("base", "grpo", "trl"):
        m = s[model]
        rows.append([model, pc(m["solo@1"]), pc(m[f"solo@{kr}"]), spread(m["obj seeds"], fmt=".3f"), pc(m["step@1"]),
                     pc(m[f"step@{kr}"]),
                     f"{100 * m['step/solo']:.1f}%",
                     pc(m[f"word@{kr}"]), spread(m["legibility seeds"], fmt=".3f"), spread(m["drift seeds"], fmt=".3f"),
                     spread(m["compact seeds"], 100, ".0f") + "%", spread(m["solo length seeds"], fmt=".0f")])
    d = s["trl - grpo"]
    rows.append(["trl - grpo", pc(d["solo@1"], "+"), pc(d[f"solo@{kr}"], "+"),
                 f"{d['obj'][0]:+.3f} [{d['obj'][1]:+.3f},{d['obj'][2]:+.3f}]", pc(d["step@1"], "+"),
                 pc(d[f"step@{kr}"], "+"), "",
                 pc(d[f"word@{kr}"], "+"), f"{d['legibility']:+.3f}", f"{d['drift']:+.3f}",
                 f"{100 * d['compact']:+.0f}%", ""])
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)
    return text + (f"\npass@k in % [95% interval: bootstrap over the {n_seeds} seeds, then problems]; obj: the solo "
                   f"reward under the training objective, right x (1 - length cost x tokens / budget); "
                   f"step: handoff alternating at \\n\\n; word: handoff under the training coin; legib: the junior's "
                   f"cross-entropy, drift: KL(senior || junior), nats per token (mean ±half-range over seeds); "
                   f"compact: "
                   f"column steps without ', carry N'; len: solo tokens. base: eval seed 0 only")

def verdicts(s, kr):
    """The lab's criteria, seed by seed -> {property: [held on seed 0, seed 1, ...]}. parity: the solo@1 difference's
    interval (bootstrap over that seed's problems) contains 0, or it is within 3 points; handoff: the step@kr
    difference's interval is above 0 (handoff@1: step@1's); drift, legib: trl lower; mechanism: grpo more compact
    than the base, trl less."""
    g, t, d, base = s["grpo"], s["trl"], s["trl - grpo"], s["base"]["compact"]
    return {"parity": [c[1] <= 0 <= c[2] or abs(c[0]) <= 0.03 for c in d["solo@1 seeds ci"]],
            "handoff": [c[1] > 0 for c in d[f"step@{kr} seeds ci"]],
            "handoff@1": [c[1] > 0 for c in d["step@1 seeds ci"]],
            "drift": [a < b for a, b in zip(t["drift seeds"], g["drift seeds"])],
            "legib": [a < b for a, b in zip(t["legibility seeds"], g["legibility seeds"])],
            "mechanism": [a > base > b for a, b in zip(g["compact seeds"], t["compact seeds"])]}

def seed_table(s, v, kr):
    """One row per seed and arm (each seed's own numbers), then which property held on which seed."""
    cols = ["solo@1", f"solo@{kr}", "obj", "step@1", f"step@{kr}", "legib", "drift", "compact", "len"]
    keys = ["solo@1", f"solo@{kr}", "obj", "step@1", f"step@{kr}", "legibility", "drift", "compact", "solo length"]
    fmt = [".1f", ".1f", ".3f", ".1f", ".1f", ".3f", ".3f", ".0f", ".0f"]
    scale = [100, 100, 1, 100, 100, 1, 1, 100, 1]
    rows = [["seed", "arm"] + cols]
    for i in range(len(s["grpo"]["drift seeds"])):
        rows += [[str(i), arm] + [f"{c * s[arm][k + ' seeds'][i]:{f}}" + "%" * (k == "compact")
                                  for k, f, c in zip(keys, fmt, scale)] for arm in ("grpo", "trl")]
    rows += [["held", p] + ["".join("y" if x else "n" for x in held), f"{sum(held)}/{len(held)}"] + [""] * 7
             for p, held in v.items()]
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)

def summary_line(s, v, kr, n_seeds, wall):
    g, t, d = s["grpo"], s["trl"], s["trl - grpo"]
    acc = lambda key: (f"{key} grpo {100 * g[key][0]:.1f} trl {100 * t[key][0]:.1f} (d {100 * d[key][0]:+.1f} "
                       f"[{100 * d[key][1]:+.1f},{100 * d[key][2]:+.1f}])")
    return (f"lab: {acc('solo@1')}; {acc(f'step@{kr}')}; drift grpo {g['drift']:.3f} trl {t['drift']:.3f}; "
            f"legib grpo {g['legibility']:.3f} trl {t['legibility']:.3f}; held on seeds: "
            + " ".join(f"{p} {sum(h)}/{len(h)}" for p, h in v.items()) + f" (seeds {n_seeds}, {wall:.0f} s)")

def figure(result, path, kr):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("lab: no figure (pip install matplotlib to draw one)")
        return None
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.6))
    for arm, color in (("grpo", "tab:red"), ("trl", "tab:blue")):
        runs = [seed["train"][arm] for seed in result["per_seed"].values()]
        steps = [m["step"] for m in runs[0]]
        for i, key in enumerate(("reward", "senior_share", "resp_len")):
            ys = [[m[key] for m in r] for r in runs]
            ax[i].plot(steps, [sum(v) / len(v) for v in zip(*ys)], color=color, label=arm)
            for y in ys:
                ax[i].plot(steps, y, color=color, alpha=0.25, lw=0.8)
            ax[i].set(xlabel="step", title={"reward": "training reward (team, length-penalised)",
                                           "senior_share": "senior share of tokens",
                                           "resp_len": "response length (tokens)"}[key])
    ax[0].legend()
    keys, s = ["solo@1", "step@1", f"solo@{kr}", f"step@{kr}", f"word@{kr}"], result["summary"]
    for j, (model, color) in enumerate((("base", "tab:gray"), ("grpo", "tab:red"), ("trl", "tab:blue"))):
        v = [s[model][k] for k in keys] + [[s[model]["compact"]] * 3]  # the compact share has no interval
        x = [i + (j - 1) * 0.27 for i in range(len(v))]
        ax[3].bar(x, [100 * a[0] for a in v], 0.27, color=color, label=model,
                  yerr=[[100 * (a[0] - a[1]) for a in v], [100 * (a[2] - a[0]) for a in v]], capsize=2)
    ax[3].set(xticks=range(len(keys) + 1), xticklabels=keys + ["compact"], ylim=(0, 105),
              title="held-out: pass@k (95% CI), compact, %")
    ax[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)

# ------------------------------------------------------------------------------------------------------------------

def machine():
    """What a run's float sums depend on: the same code and seeds repeat digit for digit only on the same torch and
    CPU kernels; elsewhere rounding differs in the 5th digit from the first step and each seed's trajectory with it."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), platform.machine())
    return dict(cpu=cpu, torch=torch.__version__, kernels=torch.backends.cpu.get_cpu_capability())

def main(args):
    t0, out = time.time(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kr = min(4, args.n)
    rel = lambda x: os.path.relpath(x, ROOT) if isinstance(x, str) and x.startswith(str(ROOT) + os.sep) else x
    result = dict(settings={k: rel(v) for k, v in vars(args).items()}, machine=machine(), per_seed={},  # repo paths
                  arms={arm: [rel(x) for x in train_argv(args, arm, "SEED", "OUT")] for arm in ("grpo", "trl")})
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        base = []  # the base model, evaluated once (eval seed 0), on the core the first seed's grpo arm frees first
        evaluate_base = lambda: base.append(pool.submit(run, "eval.py", eval_argv(args, [args.model], 0,
                                                        out / "base_eval.json"), out / "base.log", args.jobs))
        reports, seed, t_seed = [], 0, 0.0
        while seed < (args.seeds or args.max_seeds):
            if not args.seeds and seed >= 2 and time.time() - t0 + t_seed > args.budget_s:
                break
            t1 = time.time()
            report, train = run_seed(args, seed, out, pool, evaluate_base if seed == 0 else None)
            names = list(report["seniors"])
            reports.append(report)
            result["per_seed"][str(seed)] = dict(train=train, seniors=dict(grpo=names[0], trl=names[1]),
                                                 eval=dict(macro={n: report["seniors"][n]["macro"] for n in names},
                                                           paired=report["paired"]))
            t_seed = time.time() - t1
            print(f"lab: seed {seed} done in {t_seed:.0f} s", flush=True)
            seed += 1
        base[0].result()
    base_report = json.loads((out / "base_eval.json").read_text())
    arms = {arm: [v["seniors"][arm] for v in result["per_seed"].values()] for arm in ("grpo", "trl")}
    s = summarize(reports, arms, kr, args.length_penalty, args.max_new_tokens)
    s["base"] = summarize([base_report], dict(base=list(base_report["seniors"])), kr, args.length_penalty,
                          args.max_new_tokens)["base"]
    result["summary"], v = s, verdicts(s, kr)
    n_seeds = len(reports)
    text, seeds_text = table(s, kr, n_seeds), seed_table(s, v, kr)
    result["figure"] = figure(result, out / "lab.png", kr)
    line = summary_line(s, v, kr, n_seeds, time.time() - t0)
    result.update(table=text, seed_table=seeds_text, verdicts=v, summary_line=line, wall_s=round(time.time() - t0, 1))
    (out / "lab.json").write_text(json.dumps(result, indent=1))
    print(text)
    print(seeds_text)
    print(f"wrote {out / 'lab.json'}" + (f" and {result['figure']}" if result["figure"] else ""))
    print(line)
    return result

if __name__ == "__main__":
    main(get_args())
