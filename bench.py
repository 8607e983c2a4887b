"""
bench.py: measured speed (and, on a GPU, memory) of tandem_grpo.py. Prints figures; asserts nothing about time.

    python bench.py            # CPU: tiny Qwen3 with Qwen3's real 151,936-entry vocabulary, batch 16,
                               # 128-token prompts, 256 new tokens; median of --repeats runs; ends with 4 ratios
    python bench.py --decode   # CPU: only decode ms/step, eager (tandem_generate) vs static (static_generate)
    python bench.py --reward   # the answer checker: median and max ms per call over the test table and a stress set
    python bench.py --paper    # GPU: a Qwen3-4B-shaped model with random weights (configs/qwen3-4b), one slice of
                               # the paper's step: peak memory per phase, tandem vs solo tokens/s, step breakdown,
                               # decode ms/step eager vs compiled (--compile), the estimated paper step for both
"""
import argparse, copy, json, statistics, sys, time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

import tandem_grpo as tg

def timed(fn, repeats):
    """Median wall time of fn() over `repeats` runs (after one warm-up), and fn's last result."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out

def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()

def fake_vocab(n_vocab, seed=0):
    """What a tokenizer would give: word-start ids (Qwen3's share, 53,021 of 151,669) and an EOS id."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_vocab, generator=g) < 53021 / 151669, {n_vocab - 1}

def gen(senior, junior, prompts, n_vocab, ws, eos, static=False, **kw):
    """tandem_generate, or with static=True static_generate (--compile: captured as CUDA graphs on a GPU)."""
    kw = dict(dict(eos_ids=eos, pad_id=0, n_vocab=n_vocab, word_start=ws, temperature=0.6), **kw)
    with tg.autocast(next(senior.parameters()).device):
        return (tg.static_generate if static else tg.tandem_generate)(senior, junior, prompts, **kw)

class FakeTok:
    """What train_step reads of a tokenizer: its length (the real ids; the output layer may be wider) and the pad id."""
    def __init__(self, n_vocab):
        self.n_vocab, self.pad_token_id = n_vocab, 0
    def __len__(self):
        return self.n_vocab

def args_for(**kw):
    a = tg.get_args(["--data", "none"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a

# ------------------------------------------------------------------------------------------------------------------
def cpu_bench(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    V = 151936  # Qwen3's output layer; here the tokenizer is taken to be as wide, so no ids are masked
    cfg = Qwen3Config(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=True)
    senior = Qwen3ForCausalLM(cfg).eval()
    junior = copy.deepcopy(senior)  # self-paired
    ws, eos = fake_vocab(V)
    prompts = torch.randint(1, V - 1, (a.batch, a.prompt_len)).tolist()
    ids = torch.tensor(prompts)
    n = a.new_tokens
    rows = []

    def hf(sample):
        kw = dict(do_sample=True, temperature=0.6, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
        return senior.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               pad_token_id=0, eos_token_id=V - 1, **kw)[:, a.prompt_len:]
    ours = lambda T, **kw: gen(senior, junior, prompts, V, ws, eos, max_new_tokens=n, temperature=T, **kw)
    # eager (tandem_generate) vs static (static_generate, uncompiled on CPU) decode, solo and tandem, all rows to n
    def seeded(**kw):
        torch.manual_seed(1)
        return ours(0.6, **kw)
    ms = {}
    for path in ("eager", "static"):
        for sched in ("solo", "word"):
            t, out = timed(lambda: seeded(schedule=sched, static=path == "static"), a.repeats)
            ms[path, sched] = (1e3 * t / n, out)
    # rows whose tokens and authors are identical on both paths (float32 logits differ in the last bits, ~3e-7, so
    # over 151,936 ids a sampled token flips now and then, and the row diverges from there)
    same = lambda s: sum(all(torch.equal(ms["eager", s][1][k][b], ms["static", s][1][k][b])
                             for k in ("tokens", "senior")) for b in range(a.batch))
    print(f"bench: decode ms/step, CPU, {torch.get_num_threads()} threads, batch {a.batch}, prompt {a.prompt_len}, "
          f"{n} new tokens, vocab {V}, median of {a.repeats}")
    for sched, name in (("solo", "solo"), ("word", "tandem")):
        print(f"  {name:7s} eager {ms['eager', sched][0]:7.2f}   static {ms['static', sched][0]:7.2f}   "
              f"static/eager {ms['static', sched][0] / ms['eager', sched][0]:.2f}   "
              f"rows identical {same(sched)}/{a.batch}")
    if a.decode:
        return
    with torch.no_grad():
        t_hf_greedy, ref = timed(lambda: hf(False), a.repeats)
        t_solo_greedy, out = timed(lambda: ours(0, schedule="solo"), a.repeats)
        same = torch.equal(out["tokens"], ref)
        t_hf, _ = timed(lambda: hf(True), a.repeats)
        t_solo, _ = timed(lambda: ours(0.6, schedule="solo"), a.repeats)
        t_tandem, out = timed(lambda: ours(0.6, schedule="word"), a.repeats)
        share = (out["senior"].sum() / out["mask"].sum()).item()
        # mixed lengths: rows 0..7 get EOS forced at their 32nd token (the sampler is wrapped; the loop is not)
        real_sample = tg.sample
        def forced(logits, *args, **kw):
            forced.calls += 1
            tok = real_sample(logits, *args, **kw)
            if forced.calls == 32:
                tok[: a.batch // 2] = V - 1
            return tok
        def mixed():
            forced.calls = 0
            tg.sample = forced
            try:
                return ours(0.6, schedule="word")
            finally:
                tg.sample = real_sample
        t_mixed, out = timed(mixed, a.repeats)
        lengths = out["mask"].sum(1).tolist()
    rows += [("hf_generate greedy", t_hf_greedy), ("solo_decode greedy (same tokens: %s)" % same, t_solo_greedy),
             ("hf_generate sampled T=0.6", t_hf), ("solo_decode sampled T=0.6", t_solo),
             (f"tandem_decode word, p=0.5 (senior share {share:.2f})", t_tandem),
             (f"tandem_decode, mixed lengths {sorted(set(lengths))}", t_mixed)]

    # one full training step (rollouts + old log-probs + 2 updates) on 2 prompts x 8 rollouts
    def step(schedule):
        s = copy.deepcopy(senior).requires_grad_(True)
        opt = torch.optim.AdamW(s.parameters(), lr=1e-6)
        args = args_for(schedule=schedule, prompts_per_step=2, mini_batch_prompts=1, group_size=8, micro_batch=8,
                        max_new_tokens=n)
        def run():
            with torch.no_grad():
                g = gen(s, junior, prompts, V, ws, eos, schedule=schedule, max_new_tokens=n)
            ro = [dict(prompt=prompts[i], response=g["tokens"][i][g["mask"][i]].tolist(),
                       senior=g["senior"][i][g["mask"][i]].tolist(), reward=float(i % 3 == 0), truncated=True)
                  for i in range(len(prompts))]
            return tg.train_step(s, junior, FakeTok(V), opt, ro, args)
        return timed(run, a.repeats)[0]
    t_grpo, t_trl = step("solo"), step("word")
    rows += [("grpo_step (solo schedule)", t_grpo), ("trl_step (word schedule)", t_trl)]

    print(f"bench: CPU, {torch.get_num_threads()} threads, batch {a.batch}, prompt {a.prompt_len}, "
          f"{n} new tokens, vocab {V}, median of {a.repeats}")
    for name, t in rows:
        print(f"  {name:58s} {t:8.3f} s  {a.batch * n / t:8.0f} tok/s")
    print(f"bench: solo_decode/hf_generate {t_solo / t_hf:.2f}      "
          f"# sampled; greedy: {t_solo_greedy / t_hf_greedy:.2f}")
    print(f"bench: tandem_decode/solo_decode {t_tandem / t_solo:.2f}")
    print(f"bench: mixed_lengths/full_lengths {t_mixed / t_tandem:.2f}")
    print(f"bench: trl_step/grpo_step {t_trl / t_grpo:.2f}")

# ------------------------------------------------------------------------------------------------------------------
def reward_bench(a):
    """reward() over the test table (CASES) and a stress set: pathological inputs, long completions (joined boxes,
    list and solution golds), injections."""
    from test_tandem import CASES, INJECTIONS, PATHOLOGICAL
    step = (r"Let $a_n = \frac{n(n+1)}{2}$, so $a_{n+1} - a_n = n + 1$ and $\sum_{k=1}^{n} k^2 = "
            r"\frac{n(n+1)(2n+1)}{6}$. Checking $n = 3$: $1 + 4 + 9 = 14$. ")
    long = [(step * 40 + r"Therefore the answer is $\boxed{\dfrac{n(n+1)(2n+1)}{6}}$.", r"\frac{n(n+1)(2n+1)}{6}"),
            (step * 40 + r"Therefore the answer is $\boxed{\frac{n^2(n+1)}{2}}$.", r"\frac{n(n+1)(2n+1)}{6}"),
            (step * 200 + r"Final answer: \boxed{(-\infty, -2] \cup [3, \infty)}", r"(-\infty,-2]\cup[3,\infty)"),
            (step * 200 + r"Final answer: \boxed{x = \frac{-3 \pm \sqrt{17}}{4}}",
             r"\frac{-3+\sqrt{17}}{4}, \frac{-3-\sqrt{17}}{4}"),
            (step * 100, "14"),  # no box at all
            (step * 40 + r"so the pairs are \boxed{(1, 2)}, \boxed{(2, 1)} \quad\text{and}\quad \boxed{(-1, -20)}.",
             r"(2,1),(1,2),(-1,-20)"),  # joined boxes
            (step * 40 + r"\boxed{k = 45} \quad \text{and} \quad \boxed{n = 2}", "45, 2"),  # labelled parts
            (step * 40 + r"Thus $\boxed{4.5e33}$.", [r"4.5 \times 10^{33}", "4.5e33"]),  # a list of golds
            (r"\boxed{\frac{7}{2}}", step * 40 + r"so the mean is $\boxed{3.5}$.")]  # a worked solution as gold
    stress = PATHOLOGICAL + long + [(r"\boxed{" + c.format(m="/tmp/never") + "}", "0") for c in INJECTIONS]
    tg.reward(r"\boxed{x+1}", "1+x")  # warm-up: sympy's first calls fill caches
    for name, pairs in (("table", [(c, g) for g, c, _ in CASES]), ("stress", stress)):
        ms, cpu = [], []  # wall clock, and the thread's CPU time (what the checker's 0.4 s budget counts)
        for _ in range(a.repeats):
            for completion, gold in pairs:
                t, c = time.perf_counter(), time.thread_time()
                tg.reward(completion, gold)
                ms.append(1000 * (time.perf_counter() - t))
                cpu.append(1000 * (time.thread_time() - c))
        print(f"bench: reward {name:6s} {len(pairs):4d} inputs x {a.repeats}: median {statistics.median(ms):6.2f} ms"
              f"   max {max(ms):7.1f} ms   max CPU {max(cpu):7.1f} ms")

# ------------------------------------------------------------------------------------------------------------------
def paper_bench(a):
    """One slice of the paper's step on one GPU: peak memory of a rollout batch whose two KV caches hold the full
    prompt + response length, peak memory and time of one mini-batch update on full-length co-written rollouts,
    peak memory of a validation batch (the senior alone, full length, AdamW parked as in tandem_grpo.main), and
    decode speed (solo vs tandem) at a short length."""
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    peak = lambda: torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    def reset():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    out = {}
    cfg = AutoConfig.from_pretrained(a.config)
    torch.manual_seed(0)
    t = time.time()
    with dev:
        senior = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()  # float32 master weights
    junior = copy.deepcopy(senior).to(torch.bfloat16).requires_grad_(False)        # self-paired, frozen, bf16
    senior.activation_checkpointing_enable({"use_reentrant": False})
    out["setup_s"] = time.time() - t
    V, G, S = a.n_vocab, a.gen_batch, a.prompt_len + a.new_tokens
    ws, eos = fake_vocab(V)
    # 0. what one kernel launch and one host<->device sync cost on this machine
    x = torch.ones(8, device=dev)
    sync(); t = time.perf_counter()
    for _ in range(1000):
        x = x + 1
    sync(); out["launch_us"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    for _ in range(200):
        (x + 1).sum().item()
    out["sync_us"] = (time.perf_counter() - t) / 200 * 1e6
    # 1. decode speed at a short length, solo vs self-paired tandem
    prompts = torch.randint(1, V - 1, (G, 128)).tolist()
    gen(senior, junior, prompts, V, ws, eos, schedule="word", max_new_tokens=4)  # warm-up
    if a.profile:  # where a decode step's time goes
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            gen(senior, junior, prompts, V, ws, eos, schedule="word", max_new_tokens=8)
            sync()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
        if cuda:
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8, max_name_column_width=40))
    for cudnn in ((True, False) if cuda else (True,)):  # cuDNN's attention costs ~0.3 ms of CPU a call
        if cuda:
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
        for sched in ("solo", "word"):
            sync(); t = time.time()
            gen(senior, junior, prompts, V, ws, eos, schedule=sched, max_new_tokens=a.short_tokens)
            sync(); dt = time.time() - t
            tag = sched + ("" if cudnn else "_no_cudnn_sdp")
            out[f"{tag}_decode_tok_s"] = G * a.short_tokens / dt
            out[f"{tag}_ms_per_step"] = dt / a.short_tokens * 1e3
    # 1b. the static-shape decode captured as CUDA graphs (--compile): the first call compiles and records (timed
    #     apart), the second is timed; greedy tokens of both paths are compared (bf16 near-ties may flip a few).
    #     With --device cpu these rows time the static path uncompiled (a smoke test of this code, not a figure)
    if not a.no_compiled:
        for sched in ("solo", "word"):
            t = time.time()
            gen(senior, junior, prompts, V, ws, eos, static=True, schedule=sched, max_new_tokens=a.short_tokens)
            sync(); out[f"{sched}_compile_s"] = time.time() - t
            sync(); t = time.time()
            gen(senior, junior, prompts, V, ws, eos, static=True, schedule=sched, max_new_tokens=a.short_tokens)
            sync(); dt = time.time() - t
            out[f"{sched}_compiled_decode_tok_s"] = G * a.short_tokens / dt
            out[f"{sched}_compiled_ms_per_step"] = dt / a.short_tokens * 1e3
        greedy = [gen(senior, junior, prompts, V, ws, eos, static=static, schedule="word", temperature=0,
                      max_new_tokens=a.short_tokens)["tokens"] for static in (False, True)]
        out["compiled_greedy_rows_same"] = (greedy[0] == greedy[1]).all(1).float().mean().item()
    # 2. rollout phase: both KV caches grow to the full length S (a prompt of S - decode_steps tokens, then
    #    decode_steps steps: the prefill is longer than the paper's <= 1024, so its transient is an upper bound)
    def full_length(junior, schedule):  # -> (seconds, peak GiB) of G rows decoded to the full length S
        reset()
        long_prompts = torch.randint(1, V - 1, (G, S - a.decode_steps)).tolist()
        sync(); t = time.time()
        gen(senior, junior, long_prompts, V, ws, eos, schedule=schedule, max_new_tokens=a.decode_steps)
        sync()
        return time.time() - t, peak()
    out["rollout_full_len_s"], out["rollout_peak_gib"] = full_length(junior, "word")
    # 3. update phase: one mini-batch (64 rollouts) of prompt_len + new_tokens co-written tokens, ~half senior
    g = torch.Generator().manual_seed(1)
    ro = [dict(prompt=torch.randint(1, V - 1, (a.prompt_len,), generator=g).tolist(),
               response=torch.randint(1, V - 1, (a.new_tokens,), generator=g).tolist(),
               senior=(torch.rand(a.new_tokens, generator=g) < 0.5).tolist(), reward=float(i % 3 == 0),
               truncated=False) for i in range(64)]
    junior.to("cpu")  # parked during updates, as in tandem_grpo.main (no KL term)
    opt = torch.optim.AdamW(senior.parameters(), lr=1e-6, weight_decay=0.01, fused=cuda)
    args = args_for(prompts_per_step=8, mini_batch_prompts=8, group_size=8, micro_batch=a.micro_batch,
                    temperature=0.6, device=a.device)
    m = tg.train_step(senior, None, FakeTok(V), opt, ro, args)  # the first update creates AdamW's moments
    reset()
    sync(); t = time.time()
    m = tg.train_step(senior, None, FakeTok(V), opt, ro, args)  # steady state: moments, grads and activations together
    sync(); out["update_s"] = time.time() - t
    out["update_peak_gib"] = peak()
    out["update_tok_s"] = 64 * S / out["update_s"]
    # 4. validation phase: AdamW's moments back on the CPU and the junior on the GPU (tg.park, as main does before
    #    validating), then the senior alone decodes --gen-batch rows to the full length S
    tg.park(opt, junior, "rollout", args)
    out["validate_full_len_s"], out["validate_peak_gib"] = full_length(None, "solo")
    # the paper's step: 128 rollouts = 128 / G rollout batches of new_tokens decode steps, then 2 updates of 64
    out["est_step_s"] = 128 / G * a.new_tokens * out["word_ms_per_step"] / 1e3 + 2 * out["update_s"]
    out["tandem_over_solo_time"] = out["word_ms_per_step"] / out["solo_ms_per_step"]
    if not a.no_compiled:
        decode_s = 128 / G * a.new_tokens * out["word_compiled_ms_per_step"] / 1e3
        out["est_step_compiled_s"] = decode_s + 2 * out["update_s"]
    print(f"paper slice: {a.config}, rollout batch {G} x {S} tokens, update 64 x {S} tokens, micro-batch "
          f"{a.micro_batch}, grad_norm {m['grad_norm']:.3g}")
    for k, v in out.items():
        print(f"  {k:24s} {v:10.2f}")
    print("paper: " + json.dumps({k: round(v, 3) for k, v in out.items()}))

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--paper", action="store_true", help="GPU slice of the paper's step (see the docstring)")
    p.add_argument("--reward", action="store_true", help="time the answer checker")
    p.add_argument("--decode", action="store_true", help="CPU: only the eager vs static decode ms/step")
    p.add_argument("--threads", type=int, default=2, help="CPU: torch threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--config", default="configs/qwen3-4b")
    p.add_argument("--n-vocab", type=int, default=151669, help="--paper: ids the tokenizer has")
    p.add_argument("--gen-batch", type=int, default=32, help="--paper: rollouts generated at once")
    p.add_argument("--micro-batch", type=int, default=4, help="--paper: rollouts per forward/backward")
    p.add_argument("--short-tokens", type=int, default=64, help="--paper: length of the tok/s comparison")
    p.add_argument("--decode-steps", type=int, default=1000, help="--paper: decode steps of the full-length rollout")
    p.add_argument("--profile", action="store_true", help="--paper: print a profile of 8 decode steps")
    p.add_argument("--no-compiled", action="store_true", help="--paper: skip the compiled (--compile) decode rows")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    if a.paper and "--prompt-len" not in sys.argv:  # the paper's lengths unless told otherwise
        a.prompt_len, a.new_tokens = 1024, 3000
    paper_bench(a) if a.paper else reward_bench(a) if a.reward else cpu_bench(a)
