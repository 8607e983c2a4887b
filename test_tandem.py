"""Tests for tandem_grpo.py and eval.py: tiny models built from config, a tiny byte-level BPE tokenizer trained in
memory, hand-computed numbers. Grouped by the section of tandem_grpo.py each test checks, in the file's order
(the story, then its appendices), then eval.py. Run: python -m pytest -q test_tandem.py"""
import contextlib, copy, errno, gc, io, json, math, os, runpy, shlex, signal, socket, subprocess, sys, tempfile
import threading, time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.multiprocessing.spawn import ProcessException
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

import eval as ev
import tandem_grpo as tg

torch.set_num_threads(1)  # tiny models: one thread is faster than two, and does not thrash on a busy machine
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
              r"\s+(?!\S)|\s+")
CORPUS = ["\n\n\n\n", "What is 12 + 34? The sum of the ones is 6.\n\nThe answer is \\boxed{46}.",
          "Solve the following math problem step by step. Put your final answer inside \\boxed{}.",
          "We add the tens: 1 + 3 = 4, so the result is 46.\n\nHence the value is \\boxed{46}."] * 4

# ------------------------------------------------------------------------------------------------------------------
# fixtures: a tokenizer with Qwen's conventions and tiny Qwen3 models wider than the tokenizer

@pytest.fixture(scope="module")
def tok():
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([  # Qwen2's split pattern (digits one by one), then bytes
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tk = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tk.chat_template = CHATML
    return tk

def tiny_model(tok, seed=0, vocab_pad=24):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tok) + vocab_pad, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    return Qwen3ForCausalLM(cfg).eval()

@pytest.fixture(scope="module")
def senior(tok):
    return tiny_model(tok, seed=0)

@pytest.fixture(scope="module")
def junior(tok):
    return tiny_model(tok, seed=1)

def prompts(tok, n=4):
    probs = ["What is 12 + 34?", "Add 1 and 3.", "What is 4?", "Hence the sum of the ones is what value?"]
    return [tg.prompt_ids(tok, probs[i % 4]) for i in range(n)]

def gen(tok, senior, junior, static=False, **kw):
    kw = dict(dict(eos_ids=tg.eos_ids(tok), pad_id=tok.pad_token_id, n_vocab=len(tok),
                   word_start=tg.word_start_mask(tok), max_new_tokens=40, temperature=1.0), **kw)
    generate = tg.static_generate if static else tg.tandem_generate
    return generate(senior, junior, kw.pop("prompts", None) or prompts(tok), **kw)

class Counting(torch.nn.Module):
    """Wraps a model's body to count forward calls (to prove the junior never runs)."""
    def __init__(self, model):
        super().__init__()
        self.m, self.calls = model, 0
        self.config = model.config
    def get_decoder(self):
        self.calls += 1
        return self.m.get_decoder()
    def get_output_embeddings(self):
        return self.m.get_output_embeddings()
    def parameters(self, *a, **k):
        return self.m.parameters(*a, **k)

# ------------------------------------------------------------------------------------------------------------------
# flags: get_args checks every value before anything loads

@pytest.mark.parametrize("argv, words", [
    (["--group-size", "1"], "--group-size must be >= 2"), (["--group-size", "0"], "--group-size must be >= 2"),
    (["--temperature", "0"], "--temperature must be > 0"), (["--p-senior", "1.5"], "--p-senior must be in [0, 1]"),
    (["--p-senior", "-0.5"], "--p-senior must be in [0, 1]"),
    (["--mini-batch-prompts", "0"], "--mini-batch-prompts must be >= 1"),
    (["--lr", "0"], "--lr must be > 0"), (["--steps", "0"], "--steps must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--clip-c", "0.5"], "--clip-c must be 0 (off) or > 1"), (["--val-size", "-1"], "--val-size must be >= 0"),
    (["--prompts-per-step", "6"], "multiple of --mini-batch-prompts"), (["--out", __file__], "is a file")])
def test_bad_flags_are_refused_before_anything_loads(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        tg.get_args(["--data", "x", *argv])
    assert e.value.code == 2 and words in capsys.readouterr().err

def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        tg.get_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for d in ("(default: 0.5)", "(default: 3.0)", "(default: grade)", "(None: min(1000, a tenth of the rows))",
              "(default: runs/trl)"):
        assert d in out


METHOD_FLAGS = {"--model", "--junior", "--p-senior", "--schedule", "--max-gap", "--group-size", "--temperature",
                "--max-prompt-tokens", "--max-new-tokens", "--truncated-reward", "--length-penalty",
                "--prompts-per-step", "--mini-batch-prompts", "--lr", "--weight-decay", "--clip-low", "--clip-high",
                "--clip-c", "--grad-clip", "--kl-coef", "--junior-token-weight", "--token-mean", "--data", "--steps",
                "--val-size", "--val-every", "--seed"}

def test_help_shows_the_methods_flags_apart_from_the_runs(capsys):
    """--help: every flag under one heading; the method's 27 under 'method: ...', the other 18 under 'run: ...'."""
    with pytest.raises(SystemExit):
        tg.get_args(["--help"])
    heading, seen = None, {}
    for line in capsys.readouterr().out.split("\n\n", 1)[1].splitlines():
        if line and not line.startswith(" "):
            heading = line.split(":")[0]
        elif line.startswith("  --"):
            seen[line.split()[0].rstrip(",")] = heading        # "--fsdp, --no-fsdp"
    assert {f for f, h in seen.items() if h == "method"} == METHOD_FLAGS
    run = {f for f, h in seen.items() if h == "run"}
    assert len(run) == 18 and "--fsdp" in run and "--micro-batch" in run and "--out" in run
    assert set(seen) == METHOD_FLAGS | run                            # nothing outside the two groups but --help

def test_the_story_stays_short_and_its_loop_a_table_of_contents():
    """The shape the reference keeps: the story (everything before the first '# Appendix' line) is at most 650 lines,
    at most 5% of them over 100 characters; main() calls at most 10 functions the appendices define; the story's
    rollout() does not reach the static-shape decode (only decoder(), an appendix, does, with --compile)."""
    import ast
    src = Path(tg.__file__).read_text()
    story = src[:src.index("\n# Appendix")].splitlines()
    assert len(story) <= 650 and sum(len(l) > 100 for l in story) <= 0.05 * len(story)
    funcs = {f.name: f for f in ast.parse(src).body if isinstance(f, ast.FunctionDef)}
    in_appendix = {n for n, f in funcs.items() if f.lineno > len(story)}
    called = {c.func.id for c in ast.walk(funcs["main"]) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
    assert len(called & in_appendix) <= 10, sorted(called & in_appendix)
    assert "static" not in ast.get_source_segment(src, funcs["rollout"])
    args = tg.get_args(["--data", "x"])
    assert tg.decoder(args) is tg.tandem_generate
    args.compile = True
    assert tg.decoder(args) is tg.static_generate

def test_token_count_by_hand():
    """The token-mean's denominators: every response token (weight 1), or the counted ones (junior: w_junior)."""
    ro = [dict(senior=[True, False, True]), dict(senior=[False]), dict(senior=[])]
    assert tg.token_count(ro, 1.0) == 4 and tg.token_count(ro, 0.0) == 2 and tg.token_count(ro, 0.5) == 3.0
# ------------------------------------------------------------------------------------------------------------------
# data: load_problems (and the data-file appendix: formats, the authors' verl rows, one-line errors)

def write_rows(path, rows):
    path.write_text("\n".join(map(json.dumps, rows)) + "\n")
    return path

def test_gold_answers_lists_gsm8k_and_dropped_empty_rows(tmp_path, capsys):
    f = write_rows(tmp_path / "d.jsonl", [
        {"question": "Q1", "final_answer": ["$\\frac{1}{2}$"]},                  # OlympiadBench: a list of one
        {"problem": "Q2", "answer": ["0.5", 2, "", "1/2"]},                       # Minerva: up to three accepted
        {"question": "Q3", "answer": "3 pens at $2 is 3*2 = 6.\n#### 6"},        # GSM8K: what follows the last ####
        {"problem": "Q4", "answer": ""}, {"problem": "Q5", "answer": []},         # empty: dropped, counted
        {"problem": "Q6", "answer": None}, {"problem": "Q7", "answer": 12},
        {"problem": "Q8", "solution": "so \\boxed{5}", "extra": 1}])
    assert tg.load_problems(f) == [                                           # "row": the position in the file
        {"problem": "Q1", "answer": ["$\\frac{1}{2}$"], "row": 0},
        {"problem": "Q2", "answer": ["0.5", "2", "1/2"], "row": 1}, {"problem": "Q3", "answer": "6", "row": 2},
        {"problem": "Q7", "answer": "12", "row": 6}, {"problem": "Q8", "answer": "so \\boxed{5}", "row": 7}]
    assert capsys.readouterr().out == f"{f}: dropped 3 row(s) with an empty answer\n"
    rows = tg.load_problems(f)                                                # the golds grade as they should
    assert tg.reward("so \\boxed{1/2}", rows[1]["answer"]) == 1.0 == tg.reward("\\boxed{6}", rows[2]["answer"])
    assert tg.reward("\\boxed{3}", rows[1]["answer"]) == 0.0 == tg.reward("\\boxed{42}", rows[2]["answer"])
    j = tmp_path / "d.json"                                                   # a .json list, the same rows
    j.write_text(json.dumps([{"question": "Q1", "final_answer": 3}, {"problem": "Q2", "answer": " 4 "}]))
    assert tg.load_problems(j) == [{"problem": "Q1", "answer": "3", "row": 0},
                                   {"problem": "Q2", "answer": "4", "row": 1}]
    j.write_text(f.read_text())                                               # JSON lines named .json: read as such
    assert len(tg.load_problems(j)) == 5

def test_golds_in_words_are_counted_in_one_line(tmp_path, capsys):
    f = write_rows(tmp_path / "champ.jsonl", [
        {"problem": "Q1", "answer": "5"}, {"problem": "Q2", "answer": "yes"},
        {"problem": "Q3", "answer": "C(10, 5), or equivalently 252"},           # 252 is a formula: matchable
        {"problem": "Q4", "answer": "\\text{all real\nnumbers}"}, {"problem": "Q5", "answer": ["no", "7"]},
        {"problem": "Q6", "answer": ["none", "never"]}, {"problem": "Q7", "answer": "approximately 35.7"},
        {"problem": "Q8", "answer": "5/14, or approximately 35.7%"}, {"problem": "Q9", "answer": "so \\boxed{C}"},
        {"problem": "Q10", "answer": "the set of all x such that the sum of its digits is a prime number"}])
    rows = tg.load_problems(f)
    assert capsys.readouterr().out == (f"{f}: 5 of 10 gold answers are words, matched only as text (never by a "
                                       "formula), e.g. 'yes', '\\text{all real numbers}'\n")
    assert [tg.text_only(r["answer"]) for r in rows] == [0, 1, 0, 1, 0, 1, 1, 0, 0, 1]
    assert tg.reward("\\boxed{252}", rows[2]["answer"]) == 1.0 == tg.reward("\\boxed{\\frac{5}{14}}", rows[7]["answer"])
    write_rows(f, [{"problem": "Q", "answer": "the set of all x such that the sum of its digits is a prime number"}])
    tg.load_problems(f)
    assert capsys.readouterr().out.endswith("e.g. 'the set of all x such that the sum of its digits is a pri...'\n")

def verl_row(content, truth):
    """A row as the authors' data/build_*.py write it (verl's layout), here as one JSON line."""
    return {"data_source": "aime24", "prompt": [{"role": "user", "content": content}], "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": truth}, "extra_info": {"split": "test", "index": 0}}

def test_verl_rows_are_used_verbatim(tmp_path, tok):
    """A prompt already in the authors' layout (it ends with the suffix) is the user message as it is, whatever the
    whitespace before the suffix; a bare problem gets one space and the suffix, once."""
    contents = ["What is 12 + 34? " + tg.PROMPT_SUFFIX, "What is 12 + 34?\n\n" + tg.PROMPT_SUFFIX,
                "What is 12 + 34?  " + tg.PROMPT_SUFFIX, "What is 12 + 34?" + tg.PROMPT_SUFFIX + "\n", "Find x."]
    f = write_rows(tmp_path / "aime.jsonl", [verl_row(c, "46") for c in contents])
    rows = tg.load_problems(f)
    assert rows == [{"problem": c, "answer": "46", "row": i} for i, c in enumerate(contents)]
    texts = [tok.decode(tg.prompt_ids(tok, r["problem"])) for r in rows]
    wanted = contents[:4] + [f"Find x. {tg.PROMPT_SUFFIX}"]
    assert texts == [f"<|im_start|>user\n{c}<|im_end|>\n<|im_start|>assistant\n" for c in wanted]
    assert tg.prompt_ids(tok, rows[0]["problem"]) == tg.prompt_ids(tok, "What is 12 + 34?")  # the usual layout

def test_parquet_round_trip(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rows = [verl_row("What is 1 + 1? " + tg.PROMPT_SUFFIX, "2"), verl_row("What is 2 + 2? " + tg.PROMPT_SUFFIX, "4")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    assert tg.load_problems(tmp_path / "test.parquet") == [{"problem": r["prompt"][0]["content"], "answer": a, "row": i}
                                                          for i, (r, a) in enumerate(zip(rows, "24"))]

@pytest.mark.parametrize("name,text,message", [
    ("d.jsonl", None, r"d\.jsonl: no such file"),
    ("d.jsonl", '{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n', r"d\.jsonl: line 2: not valid JSON"),
    ("d.jsonl", '{"problem": "a", "answer": "1"}\n\n{"problem": "b"}\n', r"d\.jsonl: line 3: missing field 'answer'"),
    ("d.jsonl", '{"answer": "1"}\n', r"d\.jsonl: line 1: missing field 'problem'"),
    ("d.jsonl", '{"problem": 7, "answer": "1"}\n', r"d\.jsonl: line 1: field 'problem' must be a non-empty string, "
                                                   r"got a number"),
    ("d.jsonl", '{"problem": " ", "answer": "1"}\n', r"line 1: field 'problem' must be a non-empty string, got an "),
    ("d.jsonl", '{"problem": "a", "answer": {"x": 1}}\n', r"line 1: field 'answer': expected a string, a number or a"),
    ("d.jsonl", '["a", "1"]\n', r"d\.jsonl: line 1: expected a JSON object \{\"problem\": .*\}, got list"),
    ("d.jsonl", "\n \n", r"d\.jsonl: no rows \(empty file\)"),
    ("d.jsonl", '{"problem": "a", "answer": ""}\n', r"d\.jsonl: no rows with an answer \(1 empty\)"),
    ("d.json", '{"problem": "a", "answer": "1"}', r"d\.json: holds a JSON object; expected a list of rows"),
    ("d.json", '[{"problem": "a", "answer": "1"},\n {"problem": "b" "answer": "2"}]', r"d\.json: line 2: not valid"),
    ("d.json", '["a"]', r"d\.json: row 1: expected a JSON object .*, got string"),
    ("d.jsonl", '{"prompt": [{"role": "system", "content": "x"}], "reward_model": {"ground_truth": "1"}}',
     r"line 1: verl row without a user message"),
])
def test_bad_input_is_one_line_naming_file_row_and_field(tmp_path, name, text, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(tg.UserError, match=message) as e:
        tg.load_problems(tmp_path / name)
    assert "\n" not in str(e.value) and str(tmp_path / name) in str(e.value)

def test_hf_paths_fail_in_one_line(monkeypatch):
    with pytest.raises(tg.UserError, match="--data hf://x/y: expected hf://datasets/OWNER/NAME/FILE"):
        tg.load_problems("hf://x/y")
    import huggingface_hub
    def offline(*a, **k):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection and no cached copy")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(tg.UserError, match="--data hf://datasets/o/n/t.json: cannot fetch it \\(no connection"):
        tg.load_problems("hf://datasets/o/n/t.json")

def test_parquet_without_pyarrow_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)                         # import pyarrow now fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "test.parquet").write_bytes(b"PAR1")
    with pytest.raises(tg.UserError, match=r"test\.parquet: reading \.parquet needs pyarrow: pip install pyarrow"):
        tg.load_problems(tmp_path / "test.parquet")

def legacy_shuffle(n, words):
    """numpy's legacy RandomState.permutation(n) written out: Fisher-Yates from the end, j in [0, i] drawn by masking
    a 32-bit word to i's bit length, drawn again while j > i (numpy's random_interval)."""
    arr, words = list(range(n)), iter(words)
    for i in range(n - 1, 0, -1):
        j = next(words) & ((1 << i.bit_length()) - 1)
        while j > i:
            j = next(words) & ((1 << i.bit_length()) - 1)
        arr[i], arr[j] = arr[j], arr[i]
    return arr

def test_heldout_draw_by_hand(tmp_path):
    """5 rows, row 1 without an answer: the draw runs over the 4 rows with one (file positions 0, 2, 3, 4). MT19937
    seeded with 0 (numpy's RandomState(0), as C++'s std::mt19937(0)) starts 2357136044, 2546248239, 3071714933,
    3626093760. Shuffling [0, 1, 2, 3]: i=3: 2357136044 & 3 = 0, swap 3<->0: [3, 1, 2, 0]; i=2: 2546248239 & 3 = 3 > 2,
    again: 3071714933 & 3 = 1, swap 2<->1: [3, 2, 1, 0]; i=1: 3626093760 & 1 = 0, swap 1<->0: [2, 3, 1, 0]. n = 2
    holds out kept rows 2 and 3: file positions 3 and 4, in that order."""
    assert legacy_shuffle(4, [2357136044, 2546248239, 3071714933, 3626093760]) == [2, 3, 1, 0]
    f = write_rows(tmp_path / "d.jsonl", [{"problem": f"Q{i}", "answer": "" if i == 1 else str(i)} for i in range(5)])
    assert tg.heldout_rows(tg.load_problems(f), 2, tmp_path / "o") == {3, 4}
    assert json.loads((tmp_path / "o" / "heldout.json").read_text()) == [3, 4]

def test_heldout_draw_is_the_one_pandas_makes(tmp_path):
    """The authors' DataFrame.sample(n, random_state=0) calls numpy's RandomState(0).choice(rows, n, replace=False)
    (pandas/core/sample.py); on a 60-row table with 9 empty answers, the positions must be that draw's, in order."""
    np = pytest.importorskip("numpy")
    rows = [{"problem": f"Q{i}", "answer": "" if i % 7 == 3 else str(i)} for i in range(60)]
    kept = [i for i, r in enumerate(rows) if r["answer"]]
    assert len(kept) == 51
    want = [kept[j] for j in np.random.RandomState(0).choice(len(kept), 6, replace=False)]
    held = tg.heldout_rows(tg.load_problems(write_rows(tmp_path / "d.jsonl", rows)), 6, tmp_path / "o")
    assert json.loads((tmp_path / "o" / "heldout.json").read_text()) == want and held == set(want)
    words = np.random.RandomState(0).randint(0, 2**32, size=200, dtype=np.uint64).tolist()  # MT19937's raw words
    assert legacy_shuffle(51, words)[:6] == np.random.RandomState(0).choice(51, 6, replace=False).tolist()

def test_val_size_default_is_a_tenth_up_to_1000_and_a_given_value_is_exact(tmp_path, capsys):
    assert tg.get_args(["--data", "x"]).val_size is None
    few = [{"problem": f"Q{i}", "answer": "1", "row": i} for i in range(270)]
    assert len(tg.heldout_rows(few, None, tmp_path / "a")) == 27                # a tenth of 270
    assert capsys.readouterr().out == (f"held out 27 of 270 problems to validate on (the default --val-size, min(1000, "
                                       f"a tenth of the rows)); their rows: {tmp_path / 'a'}/heldout.json\n")
    assert len(tg.heldout_rows(few, 50, tmp_path / "b")) == 50                  # given: exact
    assert capsys.readouterr().out == (f"held out 50 of 270 problems to validate on (--val-size 50); their rows: "
                                       f"{tmp_path / 'b'}/heldout.json\n")
    many = [{"problem": f"Q{i}", "answer": "1", "row": i} for i in range(12_345)]
    assert len(tg.heldout_rows(many, None, tmp_path / "c")) == 1000             # a tenth would be 1,234
    assert len(tg.heldout_rows(many, 1500, tmp_path / "d")) == 1500
    assert tg.heldout_rows(few[:9], None, tmp_path / "e") == set() and not (tmp_path / "e").exists()  # 9 // 10 = 0
    with pytest.raises(tg.UserError, match=r"^--val-size 270 leaves none of the 270 problems for training$"):
        tg.heldout_rows(few, 270, tmp_path / "f")

# ------------------------------------------------------------------------------------------------------------------
# co-generation: word starts, the author rule, blank-line turns, stop ids

def test_word_start_mask_matches_vocabulary(tok):
    ws = tg.word_start_mask(tok)
    assert ws.shape == (len(tok),)
    vocab = tok.get_vocab()
    for piece, i in vocab.items():  # the surface text (decoded alone) starts with a space <=> word start
        assert bool(ws[i]) == (tok.decode([i]).startswith(" ") and i not in tok.all_special_ids), piece
    enc = lambda s: tok(s, add_special_tokens=False).input_ids
    assert ws[enc(" answer")[0]] and ws[enc(" 46")[0]]
    assert not ws[enc("answer")[0]] and not ws[enc(".")[0]]
    assert enc("\n\n") == [vocab["ĊĊ"]] and not ws[vocab["ĊĊ"]]  # a blank line is one token, not a word start
    assert not ws[tok.eos_token_id] and not ws[tok.pad_token_id]

def test_p_senior_one_is_all_senior_and_junior_never_runs(tok, senior, junior):
    j = Counting(junior)
    torch.manual_seed(0)
    g = gen(tok, senior, j, p_senior=1.0)
    assert j.calls == 0
    assert torch.equal(g["senior"], g["mask"])
    torch.manual_seed(0)
    g2 = gen(tok, senior, j, schedule="solo")
    assert j.calls == 0 and torch.equal(g2["tokens"], g["tokens"])

def test_p_senior_zero_is_all_junior(tok, senior, junior):
    torch.manual_seed(0)
    g = gen(tok, senior, junior, p_senior=0.0)
    assert g["mask"].sum() > 0 and not g["senior"].any()
    # greedy: the tokens are exactly the junior's own solo output (the coins consume random numbers, so sampled
    # streams differ; greedy decoding does not depend on them)
    g = gen(tok, senior, junior, p_senior=0.0, temperature=0)
    g_j = gen(tok, junior, None, schedule="solo", temperature=0)
    assert torch.equal(g["tokens"], g_j["tokens"]) and not g["senior"].any()

def author_runs_ok(tokens, by_senior, mask, ws, K):
    """The paper's rule on one row: the author can change only right after a word-start token or after K tokens."""
    gap = 0
    n = int(mask.sum())
    for t in range(1, n):
        gap += 1
        redraw = bool(ws[tokens[t - 1]]) or gap >= K
        if redraw:
            gap = 0
        elif by_senior[t] != by_senior[t - 1]:
            return False
    return True

def test_author_changes_only_at_word_starts_or_gap(tok, senior, junior):
    ws = tg.word_start_mask(tok)
    for K in (32, 3):
        torch.manual_seed(1)
        g = gen(tok, senior, junior, max_gap=K, max_new_tokens=60, prompts=prompts(tok, 8))
        for b in range(8):
            assert author_runs_ok(g["tokens"][b], g["senior"][b], g["mask"][b], ws, K)
    # K cap on its own: an empty word-start mask, K = 4, p = 0.5: authors change only at multiples of 4
    torch.manual_seed(2)
    g = gen(tok, senior, junior, word_start=torch.zeros(len(tok), dtype=torch.bool), max_gap=4, max_new_tokens=40)
    changes = [(b, t) for b in range(4) for t in range(1, int(g["mask"][b].sum()))
               if g["senior"][b, t] != g["senior"][b, t - 1]]
    assert changes and all(t % 4 == 0 for _, t in changes)

def test_senior_share_close_to_p(tok, senior, junior):
    torch.manual_seed(3)
    for p in (0.5, 0.25):
        g = gen(tok, senior, junior, p_senior=p, schedule="token", max_new_tokens=60, prompts=prompts(tok, 16))
        share = g["senior"].sum().item() / g["mask"].sum().item()
        n = g["mask"].sum().item()
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (p, share, n)

def test_solo_greedy_equals_hf_generate(tok, senior):
    ps = prompts(tok, 4)  # different lengths: left padding and position ids are exercised
    g = gen(tok, senior, None, schedule="solo", temperature=0, prompts=ps, max_new_tokens=20)
    for b, p in enumerate(ps):  # reference: one unpadded prompt at a time through model.generate, greedy
        ids = torch.tensor([p])
        ref = senior.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                              eos_token_id=list(tg.eos_ids(tok)), pad_token_id=tok.pad_token_id,
                              # the model is wider than the tokenizer: ids past it do not exist
                              suppress_tokens=list(range(len(tok), senior.config.vocab_size)))[0, len(p):]
        n = int(g["mask"][b].sum())
        assert g["tokens"][b, :n].tolist() == ref[:n].tolist()

def test_author_mask_lines_up_with_tokens(tok, senior, junior):
    """Rebuild each token's author by re-scoring: a token written by the senior under greedy decoding is the
    senior's argmax at that position given the prefix, and likewise for the junior."""
    ps = prompts(tok, 4)
    torch.manual_seed(4)
    g = gen(tok, senior, junior, temperature=0, prompts=ps, max_new_tokens=30)
    for b, p in enumerate(ps):
        n = int(g["mask"][b].sum())
        seq = torch.tensor([p + g["tokens"][b, :n].tolist()])
        for who, m in ((True, senior), (False, junior)):
            logits = m(seq).logits[0, len(p) - 1:len(p) - 1 + n, :len(tok)]
            at = g["senior"][b, :n] == who
            assert torch.equal(logits.argmax(-1)[at], g["tokens"][b, :n][at])
    assert g["senior"].any() and (g["mask"] & ~g["senior"]).any()

def test_cached_decode_logits_equal_full_forward(tok, senior):
    p = prompts(tok, 2)
    ids, attn = tg.left_pad(p, tok.pad_token_id, "cpu")
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    cache = tg.DynamicCache(config=senior.config)
    h = tg.last_hidden(senior, ids, attn, pos, cache)
    nxt = torch.tensor([[5], [7]])
    attn2 = torch.cat([attn, torch.ones(2, 1, dtype=torch.long)], 1)
    h2 = tg.last_hidden(senior, nxt, attn2, pos[:, -1:] + 1, cache)
    full = senior(torch.cat([ids, nxt], 1), attention_mask=attn2,
                  position_ids=(attn2.cumsum(1) - 1).clamp(min=0)).logits
    lm = senior.get_output_embeddings()
    torch.testing.assert_close(lm(h), full[:, -2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lm(h2), full[:, -1], atol=1e-5, rtol=1e-5)

def test_eos_ends_rows_and_masks(tok, senior):
    torch.manual_seed(5)
    g = gen(tok, senior, None, schedule="solo", prompts=prompts(tok, 8), max_new_tokens=25)
    eos = tg.eos_ids(tok)
    for b in range(8):
        n = int(g["mask"][b].sum())
        toks = g["tokens"][b].tolist()
        ends = [t for t in range(n) if toks[t] in eos]
        if g["truncated"][b]:
            assert n == 25 and not ends
        else:
            assert ends == [n - 1]  # mask runs up to and including the first EOS
        assert all(t == tok.pad_token_id for t in toks[n:])

def test_generation_config_eos_ids_stop_the_response(tok):
    m = tiny_model(tok, seed=0)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    m.generation_config.eos_token_id = [tok.eos_token_id, im_start]
    assert tg.eos_ids(tok, m) == {tok.eos_token_id, im_start}
    m.lm_head = Script(tok("12", add_special_tokens=False).input_ids + [im_start, 5, 6], m.config.vocab_size)
    g = tg.tandem_generate(m, None, prompts(tok, 1), eos_ids=tg.eos_ids(tok, m), pad_id=tok.pad_token_id,
                           n_vocab=len(tok), schedule="solo", max_new_tokens=10, temperature=1.0)
    assert g["tokens"][0].tolist()[-1] == im_start and not g["truncated"][0]

def blank_line_ends(tok, ids):
    """Reference rule, on the text: the positions where the current turn's text first holds a blank line."""
    ends, turn = [], ""
    for t, i in enumerate(ids):
        turn += tok.decode([i])
        if "\n\n" in turn:
            ends.append(t)
            turn = ""
    return ends

def check_step_turns(tok, g, rows):
    """Every row: the senior writes the first turn, and the author changes exactly after each blank line."""
    swaps = 0
    for b in range(rows):
        n = int(g["mask"][b].sum())
        toks, by_senior = g["tokens"][b, :n].tolist(), g["senior"][b, :n].tolist()
        ends = set(blank_line_ends(tok, toks))
        assert by_senior[0]
        for t in range(1, n):
            assert by_senior[t] == (by_senior[t - 1] ^ (t - 1 in ends))
        swaps += len(ends)
    return swaps

def test_step_schedule_alternates_at_blank_lines(tok, senior, junior):
    se = tg.step_end_mask(tok)  # [V, 3]: holds '\n\n', starts with '\n', ends with '\n'
    v = tok.get_vocab()
    assert se[v["ĊĊ"]].tolist() == [True, True, True] and se[v["Ġthe"]].tolist() == [False, False, False]
    blank = v["ĊĊ"]
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    s.lm_head, j.lm_head = Boost(s.lm_head, [blank, v["Ċ"]], 3.0), Boost(j.lm_head, [blank, v["Ċ"]], 3.0)
    torch.manual_seed(6)
    g = gen(tok, s, j, schedule="step", step_end=se, prompts=prompts(tok, 8), max_new_tokens=60)
    assert check_step_turns(tok, g, 8) >= 8

@pytest.fixture(scope="module")
def split_tok():
    """Like `tok`, but every newline is its own pre-token: a blank line is always two 'Ċ' tokens (as in SmolLM2)."""
    return bpe_tok(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[\r\n]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|[^\S\r\n]+"),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))

def bpe_tok(pre_tokenizer):
    """A 400-id byte-level BPE trained on CORPUS with the given pre-tokenizer, ChatML template."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizer
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tk = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tk.chat_template = CHATML
    return tk

def test_step_schedule_hands_off_when_a_blank_line_is_two_tokens(split_tok):
    tok = split_tok
    se = tg.step_end_mask(tok)
    assert not se[:, 0].any()  # no single token holds a blank line
    nl = tok.get_vocab()["Ċ"]
    assert tok("a\n\nb", add_special_tokens=False).input_ids.count(nl) == 2
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    s.lm_head, j.lm_head = Boost(s.lm_head, [nl], 6.0), Boost(j.lm_head, [nl], 6.0)
    torch.manual_seed(3)
    g = gen(tok, s, j, schedule="step", step_end=se, prompts=prompts(tok, 8), max_new_tokens=40)
    assert check_step_turns(tok, g, 8) >= 8  # the junior does get turns
    # "\n" + "\n" ends a turn; a third "\n" opens the next turn, it does not end it
    assert blank_line_ends(tok, [nl, nl, nl, nl, nl]) == [1, 3]

def test_step_schedule_max_turns(tok, senior, junior):
    se = torch.ones(len(tok), 3, dtype=torch.bool)  # every token holds a blank line: turns are single tokens
    g = gen(tok, senior, junior, schedule="step", step_end=se, max_turns=3, max_new_tokens=40)
    assert (g["mask"].sum(1) <= 3).all() and g["truncated"][g["mask"].sum(1) == 3].all()
    assert g["senior"][:, 0].all() and not g["senior"][:, 1].any()

# ------------------------------------------------------------------------------------------------------------------
# advantages and the loss

def test_group_advantages_worked_example():
    # group 1: rewards 1,0,0,0: mean 0.25, std (Bessel) = sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    # group 2: all equal -> zero advantage, no gradient
    a = tg.group_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1]), 4)
    torch.testing.assert_close(a, torch.tensor([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0]), atol=1e-5, rtol=0)
    b = tg.group_advantages(torch.tensor([1.0, 0.0]), 2)  # std = sqrt(0.5) -> +-0.5 / 0.7071
    torch.testing.assert_close(b, torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2)]), atol=1e-5, rtol=0)

def test_clipped_loss_hand_values():
    # ratios 1.5, 0.5, 1.1, 0.7 with advantages +1, -1, -2, +2 (clip 0.2):
    #   A=+1, r=1.5: max(-1.5, -1.2) = -1.2 (clipped above)   A=-1, r=0.5: max(0.5, 0.8) = 0.8 (clipped below)
    #   A=-2, r=1.1: max(2.2, 2.2) = 2.2                      A=+2, r=0.7: max(-1.4, -1.6) = -1.4 (unclipped)
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.7])
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, -2.0, 2.0])
    loss = tg.grpo_loss(ratio.log(), old, adv, n_tokens=4)
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 2.2 - 1.4) / 4, abs=1e-6)
    # asymmetric clip: clip_high 0.28 lets ratio 1.5 with A=+1 reach -1.28
    assert tg.grpo_loss(ratio[:1].log(), old[:1], adv[:1], 1, 0.2, 0.28).item() == pytest.approx(-1.28, abs=1e-6)
    # k3 KL: ref - logp = log 2 -> k3 = 2 - log 2 - 1
    kl = tg.grpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), 1, ref_logp=torch.tensor([math.log(2)]),
                      kl_coef=0.5)
    assert kl.item() == pytest.approx(0.5 * (1 - math.log(2)), abs=1e-6)
    # verl clamps each token's k3 to 10: ref - logp = 5 -> exp(5) - 5 - 1 = 142.4, counted as 10
    kl = tg.grpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), 1, ref_logp=torch.tensor([5.0]), kl_coef=1.0)
    assert kl.item() == pytest.approx(10.0, abs=1e-6)
    # gradient: d(-A ratio)/d logp = -A ratio where unclipped, 0 where the clipped branch wins
    lp = ratio.log().requires_grad_()
    tg.grpo_loss(lp, old, adv, 4).backward()
    torch.testing.assert_close(lp.grad, torch.tensor([0.0, 0.0, 2.0 * 1.1 / 4, -2.0 * 0.7 / 4]))

def test_dual_clip_and_token_weights_hand_values():
    # ratio 5, A = -1: max(-A r, -A clip(r)) = max(5, 1.2) = 5; the dual clip caps it at -A * 3 = 3
    lp, old, adv = torch.tensor([math.log(5.0)]), torch.zeros(1), torch.tensor([-1.0])
    assert tg.grpo_loss(lp, old, adv, 1).item() == pytest.approx(3.0, abs=1e-6)
    assert tg.grpo_loss(lp, old, adv, 1, clip_c=0).item() == pytest.approx(5.0, abs=1e-5)    # off
    assert tg.grpo_loss(lp, old, -adv, 1).item() == pytest.approx(-1.2, abs=1e-6)            # A > 0: untouched
    x = lp.clone().requires_grad_()
    tg.grpo_loss(x, old, adv, 1).backward()
    assert x.grad.item() == 0.0                     # the capped branch is a constant: no gradient
    # junior tokens at weight 0.5 (ratios 1.5, 0.5; A = +1, -1): (-1.2 * 1 + 0.8 * 0.5) / (1 + 0.5)
    w = tg.grpo_loss(torch.tensor([1.5, 0.5]).log(), torch.zeros(2), torch.tensor([1.0, -1.0]), 1.5,
                     weight=torch.tensor([1.0, 0.5]))
    assert w.item() == pytest.approx((-1.2 + 0.4) / 1.5, abs=1e-6)

def test_clip_active_is_verls_pg_clipfrac_hand_values():
    # verl counts a token when the clipped term is the larger loss, -A clip(r) > -A r (clip 0.2; 0.28 above):
    #   r=1.5 A=+1: -1.2 > -1.5 yes        r=0.5 A=-1: 0.8 > 0.5 yes       r=1.1 A=-2: 2.2 > 2.2 no (inside)
    #   r=0.5 A=+1: -0.8 > -0.5 no         r=1.5 A=-1: 1.2 > 1.5 no        r=5 A=-1: the dual-clip token, no
    #   r=1.25 A=+1: inside [0.8, 1.28]    r=0.1 A=0: no signal, no        r=e^100 A=0: no (not a NaN either)
    r = torch.tensor([1.5, 0.5, 1.1, 0.5, 1.5, 5.0, 1.25, 0.1, math.exp(100)])       # the last one is inf in float32
    adv = torch.tensor([1.0, -1.0, -2.0, 1.0, -1.0, -1.0, 1.0, 0.0, 0.0])
    logp = torch.cat([r[:8].log(), torch.tensor([100.0])])
    active = tg.clip_active(logp, torch.zeros(9), adv, 0.2, 0.28)
    assert active.tolist() == [True, True, False, False, False, False, False, False, False]
    # the old count (ratio outside the band, whatever A) counted 7 of these 9 tokens
    assert int(((r < 0.8) | (r > 1.28)).sum()) == 7

def test_logprobs_match_full_log_softmax(tok, senior):
    ps = prompts(tok, 3)
    torch.manual_seed(9)
    g = gen(tok, senior, None, schedule="solo", prompts=ps, max_new_tokens=15)
    ro = rollouts_for(tok, g, ps, [0, 0, 0])
    ids, attn, P, sel = tg.pack(ro, tok.pad_token_id, "cpu")
    sel = torch.tensor([[t < len(r["response"]) for t in range(sel.shape[1])] for r in ro])
    lp = tg.response_logprobs(senior, ids, attn, P, sel, len(tok), 0.6)
    for b, r in enumerate(ro):  # reference: each row alone, unpadded, full vocabulary then cut
        seq = torch.tensor([r["prompt"] + r["response"]])
        logits = senior(seq).logits[0, len(r["prompt"]) - 1:-1, :len(tok)].float() / 0.6
        ref = logits.log_softmax(-1).gather(1, torch.tensor(r["response"])[:, None]).squeeze(1)
        start = int(sel[:b].sum())
        torch.testing.assert_close(lp[start:start + len(r["response"])], ref, atol=1e-5, rtol=1e-5)

# ------------------------------------------------------------------------------------------------------------------
# one training step: rollouts, old log-probs, token-mean updates on the senior's tokens

def rollouts_for(tok, g, ps, rewards):
    out = []
    for b, p in enumerate(ps):
        n = int(g["mask"][b].sum())
        out.append(dict(prompt=p, response=g["tokens"][b, :n].tolist(), senior=g["senior"][b, :n].tolist(),
                        reward=rewards[b], truncated=False))
    return out

def args_for(tok, **kw):
    a = tg.get_args(["--data", "x"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a

def test_rollouts_run_in_eval_mode_and_cut_responses_are_graded(tok, monkeypatch):
    """A scripted senior writes \\boxed{46} and then would write EOS; the budget cuts it just before the EOS."""
    right = tok("\\boxed{46}", add_special_tokens=False).input_ids
    m = tiny_model(tok, seed=0)
    m.train()  # as after an update
    modes, generate = [], tg.tandem_generate
    monkeypatch.setattr(tg, "tandem_generate", lambda s, *a, **k: modes.append(s.training) or generate(s, *a, **k))
    probs = [{"problem": "What is 12 + 34?", "answer": "46"}]
    for rule, score in (("grade", 1.0), ("zero", 0.0)):
        m.lm_head = Script(right + [tok.eos_token_id], m.config.vocab_size)
        a = args_for(tok, group_size=2, max_new_tokens=len(right), truncated_reward=rule, schedule="solo")
        ro = tg.rollout(m, None, tok, probs[:1] * 1, a, None, None)[:1]
        assert ro[0]["truncated"] and ro[0]["reward"] == score
    assert modes == [False, False]

@pytest.mark.parametrize("w_junior,token_mean", [(0.0, "all"), (0.5, "all"), (0.0, "senior"), (0.5, "senior")])
def test_token_mean_over_micro_batches_equals_full_batch(tok, senior, junior, w_junior, token_mean):
    ps = prompts(tok, 8)
    torch.manual_seed(7)
    g = gen(tok, senior, junior, prompts=ps)
    ro = rollouts_for(tok, g, ps, [1.0, 0, 0, 1, 0, 1, 0, 0])
    grads = []
    for mb in (8, 3, 1):
        m = tiny_model(tok, seed=0).float()
        opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: the step leaves weights, we read the gradient
        a = args_for(tok, group_size=4, prompts_per_step=2, mini_batch_prompts=2, micro_batch=mb, grad_clip=1e9,
                     junior_token_weight=w_junior, token_mean=token_mean)
        captured = {}
        opt.step = lambda: captured.update(g=[p.grad.clone() for p in m.parameters()])
        tg.train_step(m, junior, tok, opt, ro, a)
        grads.append(captured["g"])
    assert sum(g.abs().sum() for g in grads[0]) > 0  # a real gradient, not zeros on both sides
    for other in grads[1:]:
        for x, y in zip(grads[0], other):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)

def test_junior_positions_get_zero_gradient(tok, senior, junior):
    ps = prompts(tok, 4)
    torch.manual_seed(8)
    g = gen(tok, senior, junior, prompts=ps, max_new_tokens=30)
    ro = rollouts_for(tok, g, ps, [1.0, 0, 1, 0])
    ids, attn, P, by_senior = tg.pack(ro, tok.pad_token_id, "cpu")
    body = senior.get_decoder()
    keep = {}
    hook = body.register_forward_hook(lambda mod, inp, out: keep.update(h=out.last_hidden_state) or
                                      out.last_hidden_state.retain_grad())
    lp = tg.response_logprobs(senior, ids, attn, P, by_senior, len(tok), 1.0)
    hook.remove()
    adv = torch.cat([tg.group_advantages(torch.tensor([1.0, 0, 1, 0]), 4)[i].expand(int(by_senior[i].sum()))
                     for i in range(4)])
    tg.grpo_loss(lp, lp.detach(), adv, int(by_senior.sum())).backward()
    grad = keep["h"].grad[:, P - 1:-1].abs().sum(-1)      # [b, T]: gradient at the state predicting token t
    resp = torch.tensor([[t < len(r["response"]) for t in range(by_senior.shape[1])] for r in ro])
    assert (grad[resp & ~by_senior] == 0).all()          # junior-written tokens: exactly zero
    assert (grad[by_senior] > 0).all()                   # senior-written tokens: all carry gradient
    senior.zero_grad(set_to_none=True)

@pytest.mark.parametrize("token_mean", ["all", "senior"])
def test_junior_tokens_weigh_junior_token_weight(tok, senior, junior, monkeypatch, token_mean):
    ps = prompts(tok, 4)
    torch.manual_seed(11)
    ro = rollouts_for(tok, gen(tok, senior, junior, prompts=ps), ps, [1.0, 0, 1, 0])
    n_senior = sum(sum(r["senior"]) for r in ro)
    n_junior = sum(len(r["senior"]) for r in ro) - n_senior
    assert n_senior and n_junior
    seen, loss = [], tg.grpo_loss
    monkeypatch.setattr(tg, "grpo_loss", lambda *a: seen.append((a[3], a[-1])) or loss(*a))
    m = tiny_model(tok, seed=0)
    m.requires_grad_(True)
    tg.train_step(m, junior, tok, torch.optim.SGD(m.parameters(), lr=0.0), ro,
                  args_for(tok, group_size=4, prompts_per_step=1, mini_batch_prompts=1, micro_batch=4,
                           junior_token_weight=0.25, token_mean=token_mean))
    (n_tokens, weight), = seen
    if token_mean == "all":   # the authors' verl: every response token of the mini-batch, the junior's included
        assert n_tokens == n_senior + n_junior
    else:                     # the counted tokens only: the weighted count of the mini-batch
        assert n_tokens == pytest.approx(n_senior + 0.25 * n_junior)
    assert sorted(set(weight.tolist())) == [0.25, 1.0] and (weight == 1).sum() == n_senior

@pytest.mark.parametrize("token_mean,n_tokens", [("all", 10), ("senior", 4)])
def test_token_mean_denominator_hand_values(tok, token_mean, n_tokens):
    # one group of 2, rewards 1 and 0 -> A = +-1/sqrt(2). Row 0: 3 senior + 2 junior tokens; row 1: 1 senior + 4
    # junior. The first update sees ratio 1, so loss = sum over senior tokens of -A / n_tokens
    #   = (-3 + 1) / sqrt(2) / n_tokens: n_tokens = 10 (every response token, the authors' verl) or 4 (senior only)
    ro = [dict(prompt=[5, 6, 7], response=[8, 9, 10, 11, 12], senior=[True, False, True, False, True], reward=1.0),
          dict(prompt=[5, 7], response=[13, 14, 15, 16, 17], senior=[False, False, True, False, False], reward=0.0)]
    m = tiny_model(tok, seed=0)
    m.requires_grad_(True)
    a = args_for(tok, group_size=2, prompts_per_step=1, mini_batch_prompts=1, micro_batch=2, token_mean=token_mean)
    stats = tg.train_step(m, None, tok, torch.optim.SGD(m.parameters(), lr=0.0), ro, a)
    assert stats["loss"] == pytest.approx(-2 / math.sqrt(2) / n_tokens, abs=1e-5)

@pytest.mark.parametrize("token_mean,w_junior,expected", [("all", 0.0, 1 / 4), ("senior", 0.0, 1 / 4),
                                                           ("all", 0.5, 1 / 7)])
def test_clip_frac_is_a_share_of_the_counted_tokens(tok, monkeypatch, token_mean, w_junior, expected):
    # the rows of the test above: 4 senior + 6 junior tokens. With the clip active on the first token only (a
    # senior one), clip_frac = its weight / the counted weight: 1 / 4, whatever --token-mean (the loss's denominator);
    # at --junior-token-weight 0.5 the 6 junior tokens count 0.5 each: 1 / (4 + 3). The first and only update sees
    # ratio 1 (same weights, same forward): the real clip_active counts nothing.
    ro = [dict(prompt=[5, 6, 7], response=[8, 9, 10, 11, 12], senior=[True, False, True, False, True], reward=1.0),
          dict(prompt=[5, 7], response=[13, 14, 15, 16, 17], senior=[False, False, True, False, False], reward=0.0)]
    a = args_for(tok, group_size=2, prompts_per_step=1, mini_batch_prompts=1, micro_batch=2, token_mean=token_mean,
                 junior_token_weight=w_junior)
    m = tiny_model(tok, seed=0).requires_grad_(True)
    assert tg.train_step(m, None, tok, torch.optim.SGD(m.parameters(), lr=0.0), ro, a)["clip_frac"] == 0.0
    first = lambda logp, old, adv, lo, hi: torch.arange(len(adv)) == 0
    monkeypatch.setattr(tg, "clip_active", first)
    stats = tg.train_step(m, None, tok, torch.optim.SGD(m.parameters(), lr=0.0), ro, a)
    assert stats["clip_frac"] == pytest.approx(expected, abs=1e-9)

def test_step_changes_senior_not_junior(tok, junior):
    m = tiny_model(tok, seed=0)
    m.requires_grad_(True)
    before_s = [p.clone() for p in m.parameters()]
    before_j = [p.clone() for p in junior.parameters()]
    ps = prompts(tok, 4)
    torch.manual_seed(10)
    g = gen(tok, m, junior, prompts=ps)
    ro = rollouts_for(tok, g, ps, [1.0, 0, 0, 0])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    tg.train_step(m, junior, tok, opt, ro, args_for(tok, group_size=4, prompts_per_step=1, mini_batch_prompts=1,
                                               micro_batch=2, kl_coef=0.001))
    assert all(torch.equal(a, b) for a, b in zip(before_j, junior.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_s, m.parameters()))

def test_non_finite_gradient_is_skipped_and_three_in_a_row_stop(tok, senior, junior):
    ps = prompts(tok, 4)
    torch.manual_seed(12)
    ro = rollouts_for(tok, gen(tok, senior, junior, prompts=ps), ps, [1.0, 0, 1, 0, 0, 1, 0, 0])[:4] * 2
    m = tiny_model(tok, seed=0)
    m.requires_grad_(True)
    before = [p.clone() for p in m.parameters()]
    hook = next(m.parameters()).register_hook(lambda g: g * float("nan"))   # a NaN gradient, injected
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    a = args_for(tok, group_size=4, prompts_per_step=2, mini_batch_prompts=1, micro_batch=4)
    out = tg.train_step(m, junior, tok, opt, ro, a)
    assert out["skipped"] == 2 and out["skipped_in_a_row"] == 2 and math.isfinite(out["grad_norm"])
    assert all(torch.equal(x, y) for x, y in zip(before, m.parameters()))     # the weights never saw it
    with pytest.raises(tg.UserError, match="3 updates in a row had a non-finite gradient"):
        tg.train_step(m, junior, tok, opt, ro, a, skipped_in_a_row=2)
    hook.remove()
    out = tg.train_step(m, junior, tok, opt, ro, a, skipped_in_a_row=2)
    assert out["skipped"] == 0 and out["skipped_in_a_row"] == 0 and out["grad_norm"] > 0
    with torch.no_grad():
        next(m.parameters())[0, 0] = float("inf")
    with pytest.raises(tg.UserError, match="non-finite weights"):
        tg.save_checkpoint(Path(tempfile.mkdtemp()), 1, m, tok, opt)

def test_checkpoints_draw_no_progress_bars_over_the_training_bar(tmp_path, tok, capfd):
    m = trainable(tok)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    capfd.readouterr()
    for step in (1, 2):  # the second save also rewrites step 1 in bf16 (a load and a save: two more bars)
        tg.save_checkpoint(tmp_path, step, m, tok, opt, keep=1)
    assert not (tmp_path / "step_000001" / "trainer.pt").exists()   # the bf16 rewrite did run
    out, err = capfd.readouterr()
    assert "Writing model shards" not in err + out and "Loading weights" not in err + out
    assert tg.hf_logging.is_progress_bar_enabled()                   # switched back on for whoever loads next

# ------------------------------------------------------------------------------------------------------------------
# the training loop: validation, logs, --out policy, resume (and the checkpoint appendix), Ctrl-C

def write_run_files(tmp_path, tok):
    tiny_model(tok, seed=0).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(3) for b in range(3)]
    (tmp_path / "d.jsonl").write_text("\n".join(map(json.dumps, rows)))

def main_argv(tmp_path, out, *extra):
    return ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "d.jsonl"), "--out", str(out),
            "--prompts-per-step", "2", "--mini-batch-prompts", "1", "--group-size", "4", "--micro-batch", "3",
            "--gen-batch", "8", "--max-new-tokens", "12", "--lr", "1e-3", "--temperature", "1.0", "--device", "cpu",
            "--val-size", "0", *extra]

def run_main(tmp_path, out, *extra):
    tg.main(tg.get_args(main_argv(tmp_path, out, *extra)))
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]

def test_save_resume_gives_the_same_next_step(tmp_path, tok):
    write_run_files(tmp_path, tok)
    straight = run_main(tmp_path, tmp_path / "a", "--steps", "2", "--save-every", "1")
    run_main(tmp_path, tmp_path / "b", "--steps", "1")
    resumed = run_main(tmp_path, tmp_path / "b", "--steps", "2", "--resume")
    assert [m["step"] for m in resumed] == [1, 2]
    for k in ("reward", "resp_len", "senior_share", "loss", "grad_norm"):
        assert resumed[1][k] == pytest.approx(straight[1][k], rel=1e-5, abs=1e-7), k
    wa = Qwen3ForCausalLM.from_pretrained(tmp_path / "a" / "step_000002").state_dict()
    wb = Qwen3ForCausalLM.from_pretrained(tmp_path / "b" / "step_000002").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # atomic layout: no temporary folders left, `latest` names the newest, only it keeps the optimizer state
    assert (tmp_path / "a" / "latest").read_text() == "step_000002"
    assert not list((tmp_path / "a").glob("*.tmp"))
    assert (tmp_path / "a" / "step_000002" / "trainer.pt").exists()
    assert not (tmp_path / "a" / "step_000001" / "trainer.pt").exists()
    assert (tmp_path / "a" / "step_000001" / "model.safetensors").exists()

def test_solo_accuracy_has_its_own_random_stream(tok):
    m = tiny_model(tok, seed=0)
    probs = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert tg.solo_accuracy(m, tok, probs, max_new_tokens=8) == tg.solo_accuracy(m, tok, probs, max_new_tokens=8)
    assert torch.equal(torch.get_rng_state(), state)                   # the training stream is untouched

def test_validation_draws_do_not_depend_on_the_batch(tok, enders, monkeypatch):
    """Problem i samples with row i of one seeded table: decoded 1, 3 or all 7 at a time (rows ending at different
    steps, so the batch shrinks differently), every problem gets the same tokens. Seeding each chunk would not do:
    torch.rand(B) draws depend on B and on the row's place in its chunk (checked below)."""
    s, _ = enders
    probs = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8),
                                                                                  (2, 2), (4, 4), (6, 6)]]
    seen, generate = [], tg.tandem_generate
    def spy(*a, **k):
        g = generate(*a, **k)
        seen.extend(g["tokens"][i][g["mask"][i]].tolist() for i in range(len(g["mask"])))
        return g
    monkeypatch.setattr(tg, "tandem_generate", spy)
    runs = []
    for batch in (1, 3, 7):
        seen.clear()
        tg.solo_accuracy(s, tok, probs, batch=batch, max_new_tokens=30, temperature=1.0, top_p=1.0, top_k=0, seed=3)
        runs.append(list(seen))
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 7
    assert len({len(t) for t in runs[0]}) >= 2                          # rows of different lengths
    ids = [tg.prompt_ids(tok, p["problem"]) for p in probs]
    per_chunk = []                                                      # the old way: one seed, then chunk by chunk
    for batch in (3, 7):
        torch.manual_seed(3)
        for i in range(0, 7, batch):
            g = gen(tok, s, None, prompts=ids[i:i + batch], schedule="solo", max_new_tokens=30, temperature=1.0)
            per_chunk += [g["tokens"][j][g["mask"][j]].tolist() for j in range(len(g["mask"]))]
    assert per_chunk[:7] != per_chunk[7:]

def test_validation_parks_adamw_and_samples_as_the_authors(tmp_path, tok, monkeypatch):
    """Validation decodes --gen-batch rows at a time, after park(..., "rollout") (AdamW to the CPU on CUDA), with the
    authors' sampling (temperature 0.6, top_p 0.95, top_k off), every --val-every steps and on the last one."""
    write_run_files(tmp_path, tok)
    events, park, solo = [], tg.park, tg.solo_accuracy
    monkeypatch.setattr(tg, "park", lambda opt, j, phase, args: events.append(phase) or park(opt, j, phase, args))
    monkeypatch.setattr(tg, "solo_accuracy", lambda m, t, ps, **kw: events.append(kw) or solo(m, t, ps, **kw))
    m = run_main(tmp_path, tmp_path / "o", "--steps", "3", "--val-size", "3", "--val-every", "2", "--gen-batch", "5")
    assert [("val_solo" in x) for x in m] == [False, True, True]
    val = dict(batch=5, max_new_tokens=12, temperature=0.6, top_p=0.95, top_k=0, seed=0)
    assert events == ["rollout", "update", "rollout", "update", "rollout", val, "rollout", "update", "rollout", val]

def test_validation_problems_never_reach_training(tmp_path, tok, monkeypatch, capsys):
    """The authors' order: the draw over every row with an answer, then the prompt-length filter on both parts. Of 10
    rows RandomState(0) holds out rows 2, 8, 4 (its permutation(10) starts 2, 8, 4); row 4 is too long: it stays in
    heldout.json, and is neither validated nor trained on."""
    write_run_files(tmp_path, tok)                                    # 9 problems
    rows = [json.loads(l) for l in (tmp_path / "d.jsonl").read_text().splitlines()]
    limit = max(len(tg.prompt_ids(tok, r["problem"])) for r in rows)
    rows.insert(4, {"problem": "What is " + " + ".join(["12"] * 40) + "?", "answer": "480"})
    write_rows(tmp_path / "d.jsonl", rows)
    seen, validated, rollout, accuracy = [], [], tg.rollout, tg.split_accuracy
    monkeypatch.setattr(tg, "rollout", lambda s, j, t, probs, *a: seen.extend(probs) or rollout(s, j, t, probs, *a))
    monkeypatch.setattr(tg, "split_accuracy",
                        lambda m, t, probs, **k: validated.extend(probs) or accuracy(m, t, probs, **k))
    m = run_main(tmp_path, tmp_path / "o", "--steps", "4", "--val-size", "3", "--val-every", "2",
                 "--max-prompt-tokens", str(limit))
    assert json.loads((tmp_path / "o" / "heldout.json").read_text()) == [2, 8, 4]
    assert [("val_solo" in x) for x in m] == [False, True, False, True] and 0 <= m[1]["val_solo"] <= 1
    assert len(validated) == 4 and {p["row"] for p in validated} == {2, 8}
    assert len(seen) == 8 and not {p["row"] for p in seen} & {2, 4, 8}
    out = capsys.readouterr().out
    assert f"held out 3 of 10 problems to validate on (--val-size 3); their rows: {tmp_path / 'o'}/heldout.json" in out
    assert f"dropped 1 problems longer than {limit} prompt tokens" in out
    with pytest.raises(tg.UserError, match=r"^--max-prompt-tokens 5 leaves no problem of .*d\.jsonl to train on$"):
        run_main(tmp_path, tmp_path / "p", "--steps", "1", "--max-prompt-tokens", "5")

def test_log_and_show_lines(tmp_path, tok, capsys):
    r = dict(response=tok("The answer is", add_special_tokens=False).input_ids, reward=1.0)
    assert len(r["response"]) == 3
    r["senior"] = [True, False, True]
    shown = tg.show_rollout(tok, {"problem": "Q?", "answer": "4"}, r, color=False)
    assert "The[[ answer]] is" in shown and "reward 1 (gold 4)" in shown
    assert "\033[36m answer\033[0m" in tg.show_rollout(tok, {"problem": "Q?", "answer": "4"}, r, color=True)
    for by_senior, junior_wrote in (([True] * 3, False), ([True] * 3 + [False], False), ([False] * 4, True)):
        q = dict(r, response=r["response"] + [tok.eos_token_id], senior=by_senior + [True] * (4 - len(by_senior)))
        shown = tg.show_rollout(tok, {"problem": "Q?", "answer": "4"}, q, color=False)  # EOS decodes to nothing
        assert ("[[" in shown) == ("the junior wrote the [[bracketed]] text" in shown) == junior_wrote
    m = dict(step=3, reward=0.5, zero_var_groups=0.25, senior_share=0.5, switches=2.0, clip_frac=0.0, grad_norm=1.0,
             step_s=2.0, truncated=0.0, skipped=0)
    assert tg.log_line(m, 9) == ("step 3/9 | reward 0.500 | zero-var 0.25 | senior 0.50 | switches 2.0 | clip 0.000 | "
                                 "gnorm 1.000 | 2.0 s")                # truncated and skipped only when not 0
    assert tg.log_line(dict(m, truncated=0.125, skipped=1), 9).endswith("| truncated 0.125 | skipped 1 | 2.0 s")
    write_run_files(tmp_path, tok)
    capsys.readouterr()
    run_main(tmp_path, tmp_path / "o", "--steps", "4", "--log-every", "2", "--show-every", "3")
    out = capsys.readouterr().out
    assert [l.split(" | ")[0] for l in out.splitlines() if l.startswith("step ")] == ["step 2/4", "step 4/4"]
    assert out.count("--- problem:") == 2                             # the first step, and step 3
    line = next(l for l in out.splitlines() if l.startswith("step 2/4"))
    for key in ("reward", "zero-var", "senior", "switches", "clip", "gnorm"):
        assert f"| {key} " in line

def test_used_out_needs_resume_and_resume_on_an_empty_folder_starts(tmp_path, tok, capsys):
    write_run_files(tmp_path, tok)
    run_main(tmp_path, tmp_path / "o", "--steps", "1")
    with pytest.raises(tg.UserError, match="holds a run already: add --resume to continue it, or choose a new --out"):
        run_main(tmp_path, tmp_path / "o", "--steps", "2")
    capsys.readouterr()
    assert [m["step"] for m in run_main(tmp_path, tmp_path / "new", "--steps", "1", "--resume")] == [1]
    assert "no checkpoint in" in capsys.readouterr().out

def test_summary_line_says_where_the_senior_is_and_what_it_trained_on(tmp_path, tok, capsys):
    write_run_files(tmp_path, tok)                                    # 9 problems, and one too long:
    long = "What is 1 + 1? " * 10
    with open(tmp_path / "d.jsonl", "a") as f:
        f.write("\n" + json.dumps({"problem": long, "answer": "2"}))
    limit = len(tg.prompt_ids(tok, "What is 1 + 2?")) + 5
    assert len(tg.prompt_ids(tok, long)) > limit
    capsys.readouterr()
    run_main(tmp_path, tmp_path / "o", "--steps", "2", "--val-size", "3", "--max-prompt-tokens", str(limit))
    out = tmp_path / "o"
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"done: the senior is in {out / 'step_000002'} (eval.py --senior {out}); 6 problems trained on, 3 held out, "
        f"1 dropped (prompts over {limit} tokens); metrics in {out / 'metrics.jsonl'}")

def test_resume_refuses_changed_settings_in_one_line(tmp_path, tok, capsys):
    write_run_files(tmp_path, tok)
    out = tmp_path / "o"
    run_main(tmp_path, out, "--steps", "1")
    stored = json.loads((out / "args.json").read_text())
    assert stored["model"] == str((tmp_path / "model").resolve()) and stored["lr"] == 1e-3 and stored["steps"] == 1
    assert set(tg.RESUME_MAY_CHANGE) < set(stored)                    # names real flags only
    tiny_model(tok, seed=1).save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    for changed, diff in ((["--model", str(tmp_path / "other")], f"--model {(tmp_path / 'model').resolve()} -> "
                                                                  f"{(tmp_path / 'other').resolve()}"),
                          (["--schedule", "solo", "--lr", "2e-3"], "--schedule word -> solo, --lr 0.001 -> 0.002")):
        r = cli(*main_argv(tmp_path, out, "--steps", "2", "--resume"), *changed)
        assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr == (
            f"error: --resume: {out} was trained with other settings ({diff}); resume with its values, or start a new "
            f"--out\n")
    # what does not change the method or the data may change
    capsys.readouterr()
    m = run_main(tmp_path, out, "--steps", "2", "--resume", "--log-every", "2", "--show-every", "0", "--threads", "1",
                 "--gen-batch", "4", "--micro-batch", "2", "--save-every", "5", "--val-every", "3")
    assert [x["step"] for x in m] == [1, 2] and json.loads((out / "args.json").read_text()) == stored
    # ... and the resume says which of those make it differ from an unbroken run (other draws, other float sums)
    assert (f"--resume: --micro-batch {stored['micro_batch']} -> 2, --gen-batch {stored['gen_batch']} -> 4, --threads "
            f"{stored['threads']} -> 1: allowed, but from here the run's random draws or float sums differ from an "
            f"unbroken run's") in capsys.readouterr().out

def test_resume_without_args_json_notes_it_and_another_model_is_one_line(tmp_path, tok, capsys):
    write_run_files(tmp_path, tok)
    out = tmp_path / "o"
    run_main(tmp_path, out, "--steps", "1")
    (out / "args.json").unlink()                                      # a run folder from an older version
    torch.manual_seed(0)
    cfg = tiny_model(tok).config
    cfg.hidden_size, cfg.num_attention_heads = 64, 8                   # another shape
    Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "wide")
    tok.save_pretrained(tmp_path / "wide")
    capsys.readouterr()
    with pytest.raises(tg.UserError, match=f"^{out / 'step_000001'}: its weights do not fit --model \\(was the run "
                                           f"started from another model\\?\\)$"):
        tg.main(tg.get_args([*main_argv(tmp_path, out, "--steps", "2", "--resume")[2:], "--model",
                             str(tmp_path / "wide")]))
    assert f"--resume: {out} has no args.json (from an older version): its settings cannot be checked" in \
        capsys.readouterr().out
    assert [x["step"] for x in run_main(tmp_path, out, "--steps", "2", "--resume")] == [1, 2]
    assert json.loads((out / "args.json").read_text())["steps"] == 2   # stored from now on

def test_a_llama_senior_trains(tmp_path, tok):
    """Any causal LM of transformers with a chat template works, not only Qwen3 (SmolLM2 is a Llama)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    write_run_files(tmp_path / "q", tok)
    (tmp_path / "d.jsonl").write_text((tmp_path / "q" / "d.jsonl").read_text())
    m = run_main(tmp_path, tmp_path / "o", "--steps", "2", "--save-every", "1")
    assert [x["step"] for x in m] == [1, 2] and all(math.isfinite(x["loss"]) and x["resp_len"] > 0 for x in m)
    before = LlamaForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    after = LlamaForCausalLM.from_pretrained(tmp_path / "o" / "step_000002").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # lr 1e-3: the senior moved

def test_resume_drops_a_torn_last_metrics_line(tmp_path, tok, capsys):
    write_run_files(tmp_path, tok)
    run_main(tmp_path, tmp_path / "o", "--steps", "1")
    with open(tmp_path / "o" / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "rew')                                   # power lost mid-write
    capsys.readouterr()
    assert [m["step"] for m in run_main(tmp_path, tmp_path / "o", "--steps", "2", "--resume")] == [1, 2]
    assert "dropped a torn last line" in capsys.readouterr().out

def test_demo_resume_is_exact(tmp_path, tok, monkeypatch, capsys):
    write_run_files(tmp_path, tok)
    (tmp_path / "test.jsonl").write_text((tmp_path / "d.jsonl").read_text())
    monkeypatch.setattr(tg, "DEMO_DIR", tmp_path)
    monkeypatch.setitem(tg.DEMO, "model", str(tmp_path / "model"))
    monkeypatch.setitem(tg.DEMO, "data", str(tmp_path / "d.jsonl"))
    small = ["--prompts-per-step", "2", "--mini-batch-prompts", "1", "--group-size", "4", "--max-new-tokens", "12",
             "--lr", "1e-2", "--val-size", "0", "--threads", "1"]
    def demo(out, steps, *extra):
        tg.demo(tg.get_args(["--demo", "--out", str(tmp_path / out), "--steps", steps, *small, *extra]))
        return next(l for l in capsys.readouterr().out.splitlines() if l.startswith("demo:"))
    straight = demo("a", "2")
    demo("b", "1")
    resumed = demo("b", "2", "--resume")
    assert straight.split(" (")[0] == resumed.split(" (")[0]          # the same before and after accuracy

def cli(*argv, cwd=None):
    return subprocess.run([sys.executable, str(Path(tg.__file__)), *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=120)

def test_user_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "metrics.jsonl").write_text("")
    r = cli("--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr.startswith("error: --out") and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "d.jsonl").write_text(json.dumps({"problem": "1 + 1?", "answer": "2"}))
    r = cli("--data", str(tmp_path / "d.jsonl"), "--model", str(tmp_path / "no_model"), "--val-size", "0",
            "--out", str(tmp_path / "o2"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"error: {tmp_path / 'no_model'}: neither a local model folder nor a reachable hub id" in r.stderr

@pytest.mark.parametrize("case", ["junior", "out", "folder", "csv"])
def test_first_hour_mistakes_are_one_line_before_anything_is_written(tmp_path, case):
    """The bundled demo model as the senior; nothing is written, and no model loads (transformers reports loading
    weights on stderr: stderr is the one line)."""
    demo, lab, out = tg.DEMO_DIR / "model", tg.DEMO_DIR.parent / "lab" / "model", tmp_path / "o"
    (tmp_path / "d.csv").write_text("problem,answer\n1 + 1,2\n")
    argv = dict(junior=["--model", str(demo), "--junior", str(lab), "--data", str(tg.DEMO_DIR / "train.jsonl")],
                out=["--demo", "--out", "/proc/x/run"], folder=["--demo", "--data", str(tg.DEMO_DIR)],
                csv=["--demo", "--data", str(tmp_path / "d.csv")])[case]
    line = dict(junior=f"{demo}: its tokenizer's vocabulary differs from the junior's ({lab}); the junior must "
                       f"share the senior's tokenizer",
                out="--out /proc/x/run: cannot create or write it (No such file or directory)",
                folder=f"--data {tg.DEMO_DIR}: is a folder; expected one file: .jsonl, .json or .parquet",
                csv=f"--data {tmp_path / 'd.csv'}: not a format read here; expected .jsonl, .json or .parquet (a local "
                    f"file or hf://datasets/OWNER/NAME/FILE)")[case]
    r = cli("--out", str(out), "--steps", "1", "--threads", "1", "--device", "cpu", *argv)
    assert r.returncode == 1 and r.stderr == f"error: {line}\n" and r.stdout == ""
    assert not out.exists()

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])   # Ctrl-C, and what a scheduler sends to stop
def test_ctrl_c_stops_with_a_resume_hint(tmp_path, tok, sig):
    write_run_files(tmp_path, tok)
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, str(Path(tg.__file__)), "--model", str(tmp_path / "model"), "--data",
                          str(tmp_path / "d.jsonl"), "--out", str(out), "--steps", "100000", "--save-every", "2",
                          "--prompts-per-step", "2", "--mini-batch-prompts", "1", "--group-size", "4",
                          "--max-new-tokens", "8", "--val-size", "0", "--threads", "1", "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while not (out / "latest").exists() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err
    assert "last checkpoint: " + str(out / "step_") in err and "resume with: " in err and "--resume" in err

# --- long runs on a shared cluster (the checkpoint appendix): SIGUSR1, one writer, disk, --keep, a full disk, --wandb

def train_argv(tmp_path, out, *extra):
    """run_main's command line, for a subprocess."""
    return [sys.executable, str(Path(tg.__file__)), "--model", str(tmp_path / "model"), "--data",
            str(tmp_path / "d.jsonl"), "--out", str(out), "--prompts-per-step", "2", "--mini-batch-prompts", "1",
            "--group-size", "4", "--micro-batch", "3", "--gen-batch", "8", "--max-new-tokens", "12", "--lr", "1e-3",
            "--temperature", "1.0", "--device", "cpu", "--val-size", "0", "--threads", "1", *extra]

def wait_for_metrics(out, n, p, timeout=600):
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} metrics lines in {out}")

def test_sigusr1_saves_the_step_in_progress_and_resume_is_bit_exact(tmp_path, tok):
    """SIGUSR1 (SLURM's warning) arrives during step 2 or later: that step ends, its checkpoint is written, the
    process exits 75 with the resume command; resuming gives the uninterrupted run's weights and metrics exactly."""
    write_run_files(tmp_path, tok)
    out, steps = tmp_path / "o", 12
    p = subprocess.Popen(train_argv(tmp_path, out, "--steps", str(steps), "--save-every", "0", "--log-every", "0"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_metrics(out, 1, p)
    p.send_signal(signal.SIGUSR1)
    _, err = p.communicate(timeout=600)
    k = len((out / "metrics.jsonl").read_text().splitlines())
    assert p.returncode == tg.PREEMPTED == 75 and "Traceback" not in err and 1 <= k < steps
    assert (out / "latest").read_text() == f"step_{k:06d}" and (out / f"step_{k:06d}" / "trainer.pt").exists()
    assert f"stopped by SIGUSR1 (a scheduler's warning) after step {k}; last checkpoint: {out / f'step_{k:06d}'}" in err
    resume = err.split("resume with: ")[1].strip()
    assert resume.endswith("--resume") and "--steps 12" in resume
    r = subprocess.run(shlex.split(resume), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and f"resumed from {out / f'step_{k:06d}'} (step {k})" in r.stdout
    straight = run_main(tmp_path, tmp_path / "a", "--steps", str(steps), "--save-every", "0")
    resumed = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    strip = lambda ms: [{x: v for x, v in m.items() if x not in ("gen_s", "step_s")} for m in ms]
    assert strip(resumed) == strip(straight) and len(resumed) == steps
    wa = torch.load(tmp_path / "a" / f"step_{steps:06d}" / "trainer.pt", weights_only=False)
    wb = torch.load(out / f"step_{steps:06d}" / "trainer.pt", weights_only=False)
    assert all(torch.equal(wa["optimizer"]["state"][i][x], wb["optimizer"]["state"][i][x])
               for i in wa["optimizer"]["state"] for x in ("exp_avg", "exp_avg_sq"))
    ma = Qwen3ForCausalLM.from_pretrained(tmp_path / "a" / f"step_{steps:06d}").state_dict()
    mb = Qwen3ForCausalLM.from_pretrained(out / f"step_{steps:06d}").state_dict()
    assert all(torch.equal(ma[x], mb[x]) for x in ma)

def test_two_ranks_stop_after_the_same_step_on_sigusr1(tmp_path):
    """Only rank 1 gets SIGUSR1: warned() sums the flag each step, so both ranks save the same step and exit 75."""
    out = tmp_path / "o"
    small = ["--demo", "--out", str(out), "--prompts-per-step", "2", "--mini-batch-prompts", "2", "--group-size", "4",
             "--max-new-tokens", "8", "--val-size", "0", "--save-every", "0", "--log-every", "0", "--show-every", "0",
             "--steps", "1000", "--timeout", "0.5"]
    job = torch.multiprocessing.start_processes(main_on_a_rank, nprocs=2, join=False, start_method="fork",
                                                args=(free_port(), small))
    deadline = time.time() + 600
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(job.pids()[1], signal.SIGUSR1)
    with pytest.raises(ProcessException):
        while not job.join():
            pass
    for p in job.processes:
        p.join(30)
    assert [p.exitcode for p in job.processes] == [75, 75]
    k = len((out / "metrics.jsonl").read_text().splitlines())
    assert k < 1000 and (out / "latest").read_text() == f"step_{k:06d}"
    assert (out / f"step_{k:06d}" / "optim").is_dir() and not list(out.glob("*.tmp"))

def test_one_writer_per_run_folder(tmp_path, tok, capsys, monkeypatch):
    """A second process on a folder in use is refused, naming the holder; the lock goes with a killed holder."""
    write_run_files(tmp_path, tok)
    out = tmp_path / "o"
    p = subprocess.Popen(train_argv(tmp_path, out, "--steps", "100000", "--log-every", "0"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_metrics(out, 1, p)
        r = subprocess.run(train_argv(tmp_path, out, "--steps", "3", "--resume"), capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.strip() == (
            f"error: --out {out} is in use by another run (pid {p.pid} on {socket.gethostname()}): "
            "one run writes a folder at a time")
    finally:
        p.kill()
        p.wait()
    run_main(tmp_path, out, "--steps", "1", "--resume")     # the killed holder left no stale lock
    assert (out / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(tg.fcntl, "flock", no_locks)
    capsys.readouterr()
    run_main(tmp_path, tmp_path / "n", "--steps", "1")
    assert f"note: {tmp_path / 'n'} does not support file locks (No locks available)" in capsys.readouterr().out

def test_disk_check_counts_12_bytes_a_parameter_and_keep_leaves_older_checkpoints_in_bf16(tmp_path, tok, capsys,
                                                                                         monkeypatch):
    write_run_files(tmp_path, tok)
    n = sum(p.numel() for p in tiny_model(tok).parameters())
    assert tg.checkpoint_bytes(tmp_path / "model") == (12 * n + tg.SLACK, 2 * n + tg.SLACK)
    run_main(tmp_path, tmp_path / "all", "--steps", "3", "--save-every", "1", "--keep", "0")
    run_main(tmp_path, tmp_path / "k", "--steps", "3", "--save-every", "1", "--keep", "2")
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    weights = lambda d: Qwen3ForCausalLM.from_pretrained(d, dtype=torch.float32).state_dict()
    for name, keeps in (("all", [1, 2, 3]), ("k", [2, 3])):
        assert sorted(int(f.parent.name[5:]) for f in (tmp_path / name).glob("step_*/trainer.pt")) == keeps
    k = tmp_path / "k"
    assert 12 * n < size(k / "step_000003") < 12 * n + 2**20            # float32 weights and AdamW (+ tokenizer)
    assert 2 * n < size(k / "step_000001") < 2 * n + 2**20              # bf16 weights only (+ tokenizer)
    assert json.loads((k / "step_000001" / "config.json").read_text())["dtype"] == "bfloat16"
    old, kept = weights(k / "step_000001"), weights(tmp_path / "all" / "step_000001")
    assert all(torch.equal(old[x], kept[x].to(torch.bfloat16).float()) for x in kept)   # rounded, nothing else
    assert not list(k.glob("*.tmp")) and not list(k.glob("*.old"))
    assert ev.load_model(str(k / "step_000001"), torch.device("cpu"), torch.float32, trainable=False)  # eval.py
    free = lambda b: lambda path: SimpleNamespace(free=b)
    monkeypatch.setattr(tg.shutil, "disk_usage", free(12 * n + tg.SLACK - 1))
    with pytest.raises(tg.UserError, match=r"GB free, the first checkpoint needs 0\.\d GB \(float32 weights and "
                                           r"AdamW: 12 bytes a parameter\)"):
        run_main(tmp_path, tmp_path / "small", "--steps", "3")
    assert not (tmp_path / "small" / "metrics.jsonl").exists()
    monkeypatch.setattr(tg.shutil, "disk_usage", free(2 * (12 * n + tg.SLACK)))   # two saves, --keep 1: 2 x 12n + 2n
    capsys.readouterr()
    run_main(tmp_path, tmp_path / "tight", "--steps", "3", "--save-every", "1")
    assert f"note: this run's 3 checkpoints need up to {(2 * 12 * n + 2 * n + 3 * tg.SLACK) / 1e9:.1f} GB (--keep 1)" \
        in capsys.readouterr().out

@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_full_disk_keeps_latest_and_the_previous_checkpoint(tmp_path, tok, monkeypatch, error):
    write_run_files(tmp_path, tok)
    out, save = tmp_path / "o", torch.save
    def full_at_step_2(obj, f, *a, **k):
        if "step_000002" in str(f):
            Path(f).write_bytes(b"partial")
            raise error
        return save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full_at_step_2)
    with pytest.raises(tg.UserError) as e:
        run_main(tmp_path, out, "--steps", "3", "--save-every", "1")
    assert str(e.value) == (f"{out}: no space left to write the step-2 checkpoint; removed what it wrote; the last "
                            "checkpoint is still step_000001: free some space, then resume")
    assert (out / "latest").read_text() == "step_000001" and not list(out.glob("step_000002*"))
    assert torch.load(out / "step_000001" / "trainer.pt", weights_only=False)["step"] == 1
    monkeypatch.setattr(torch, "save", save)
    assert [m["step"] for m in run_main(tmp_path, out, "--steps", "3", "--save-every", "1", "--resume")] == [1, 2, 3]

def wandb_records(path):
    """The records of an offline wandb run file (a log of 32 KiB blocks; each piece of a record has a 7-byte header:
    checksum, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2
    data, out, buf, pos = path.read_bytes(), [], b"", 7                   # after the file's 7-byte header
    while pos + 7 <= len(data):
        if 32768 - (pos - 7) % 32768 < 7:                                # a block's tail too short for a header
            pos += 32768 - (pos - 7) % 32768
            continue
        n, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(buf))
            buf = b""
    return out

def test_wandb_logs_every_metric_offline_and_a_resumed_run_continues_it(tmp_path, tok, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    write_run_files(tmp_path, tok)
    out = tmp_path / "o"
    try:
        run_main(tmp_path, out, "--steps", "2", "--save-every", "1", "--show-every", "1", "--wandb", "proj")
        run_id = (out / "wandb_id").read_text()
        assert len(run_id) == 8
        metrics = run_main(tmp_path, out, "--steps", "3", "--save-every", "1", "--show-every", "1", "--wandb", "proj",
                           "--resume")
        tg.WANDB.finish()
    finally:
        tg.WANDB = None
    runs = sorted((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}*"))  # wandb adds "-1" to a folder name
    assert len(runs) == 2                                     # taken in the same second: the first run, then resumed
    deadline = time.time() + 120
    while True:                                               # the wandb service may still be writing the last one
        logged = [wandb_records(f) for r in runs for f in r.glob("run-*.wandb")]
        if all(any(x.WhichOneof("record_type") == "exit" for x in rs) for rs in logged) or time.time() > deadline:
            break
        time.sleep(0.5)
    history = {x.history.step.num: {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in x.history.item}
               for rs in logged for x in rs if x.WhichOneof("record_type") == "history"}
    assert sorted(history) == [1, 2, 3]
    for m in metrics:                                         # every metric of every step, as metrics.jsonl has it
        assert {k: history[m["step"]][k] for k in m} == m
    assert all(history[s]["rollouts/nrows"] == s for s in (1, 2)) and history[3]["rollouts/nrows"] == 1
    config = [x.run.config for rs in logged for x in rs if x.WhichOneof("record_type") == "run"]
    assert any(json.loads(i.value_json) == 2 for c in config for i in c.update if i.key == "prompts_per_step")
    table = json.loads(sorted((runs[1] / "files" / "media" / "table").glob("rollouts_*.json"))[-1].read_text())
    assert table["columns"] == ["step", "reward", "rollout"] and [r[0] for r in table["data"]] == [3]
    assert "--- problem: What is" in table["data"][0][2]

def test_wandb_without_the_package_is_one_line(tmp_path, tok, monkeypatch):
    write_run_files(tmp_path, tok)
    monkeypatch.setitem(sys.modules, "wandb", None)          # import wandb raises ImportError
    with pytest.raises(tg.UserError, match=r"^--wandb needs the wandb package: pip install wandb$"):
        run_main(tmp_path, tmp_path / "o", "--steps", "1", "--wandb", "proj")

# ------------------------------------------------------------------------------------------------------------------
# appendix: GPU memory (who holds the junior, per phase)

def test_junior_writes_decides_for_generation_main_and_memory_report(capsys):
    table = {("word", 0.5): True, ("word", 1.0): False, ("token", 0.0): True, ("step", 1.0): True,
             ("solo", 0.5): False, ("solo", 0.0): False}
    assert {k: tg.junior_writes(*k) for k in table} == table
    def junior_row(*argv):
        tg.memory_report(tg.get_args(["--model", str(tg.DEMO_DIR.parent / "configs" / "qwen3-0.6b"), *argv]))
        row = next(l for l in capsys.readouterr().out.splitlines() if "junior weights" in l)
        return [float(x) > 0 for x in row.split()[-3:]]   # [rollout, update, validate] hold the junior?
    assert junior_row() == [True, False, True]           # validation: placed as for rollouts (park)
    assert junior_row("--schedule", "step", "--p-senior", "1") == [True, False, True]   # step: the junior writes
    assert junior_row("--schedule", "solo") == [False, False, False]
    assert junior_row("--schedule", "solo", "--kl-coef", "0.001") == [True, True, True]  # KL keeps it on the GPU

def test_memory_report_validation_column_follows_the_flags(capsys):
    """Qwen3-0.6B: one model's KV cache is gen_batch x 4,024 tokens x 28 layers x (K, V) x 1,024 x 2 bytes
    = 13.75 GiB at --gen-batch 32. Validation is placed as rollouts are (AdamW parked, no gradients) and decodes the
    senior alone: one cache, whatever the schedule; --compile keeps the rollouts' static caches beside it."""
    def report(*argv):
        tg.memory_report(tg.get_args(["--model", str(tg.DEMO_DIR.parent / "configs" / "qwen3-0.6b"), *argv]))
        lines = capsys.readouterr().out.splitlines()
        assert lines[1].split() == ["rollout", "update", "validate", "GiB"]
        cols = lambda key: [float(x) for x in next(l for l in lines if l.strip().startswith(key)).split()[-3:]]
        return cols("KV caches"), cols("AdamW"), cols("senior gradients"), [float(x) for x in lines[-1].split()[1:4]]
    one = 32 * 4024 * 28 * 2 * 1024 * 2 / 2**30
    kv, adam, grads, total = report()
    assert kv == [round(2 * one, 1), 0.0, round(one, 1)] and adam[2] == 0 and grads[2] == 0
    assert total[2] == pytest.approx(total[0] - one, abs=0.1)            # rollouts minus the junior's cache
    assert report("--gen-batch", "16")[0] == [round(one, 1), 0.0, round(one / 2, 1)]
    assert report("--schedule", "solo")[0] == [round(one, 1), 0.0, round(one, 1)]
    assert report("--compile")[0] == [round(2 * one, 1), round(2 * one, 1), round(3 * one, 1)]
    assert report("--val-every", "0")[3][2] == 0 and report("--val-size", "0")[3][2] == 0
    assert report("--nproc", "2")[1] == [2.2, 2.2, 2.2]                  # FSDP2: AdamW's 1/2 is never parked

# ------------------------------------------------------------------------------------------------------------------
# appendix: static-shape decode (--compile): on CPU, exactly tandem_generate's tokens, authors, masks, truncation

class EndWhen(torch.nn.Module):
    """An output layer that adds by * h[unit] to the EOS logit: the end depends on the context, so rows (greedy ones
    too) end at different steps."""
    def __init__(self, head, eos, by=3.0, unit=2):
        super().__init__()
        self.head, self.eos, self.by, self.unit = head, eos, by, unit
    def forward(self, h):
        out = self.head(h)
        out[..., self.eos] += self.by * h[..., self.unit]
        return out

@pytest.fixture(scope="module")
def enders(tok):
    """Senior and junior whose rows end at mixed steps (greedy and sampled) and who write blank lines often."""
    blank = tok.get_vocab()["ĊĊ"]
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    s.lm_head, j.lm_head = (Boost(EndWhen(m.lm_head, tok.eos_token_id), [blank], 1.5) for m in (s, j))
    return s, j

def both_paths(tok, s, j, seed, compile=None, **kw):
    """(tandem_generate, static_generate) on the same seed; check_every=4 makes the static loop run past the end."""
    torch.manual_seed(seed)
    ref = gen(tok, s, j, **kw)
    torch.manual_seed(seed)
    return ref, gen(tok, s, j, static=True, check_every=4, compile=compile, **kw)

@pytest.mark.parametrize("temperature", [0, 1.0])
@pytest.mark.parametrize("schedule", ["word", "token", "step", "solo"])
def test_static_decode_gives_the_same_rollouts(tok, enders, schedule, temperature):
    s, j = enders
    ref, out = both_paths(tok, s, j, seed=0, schedule=schedule, temperature=temperature, prompts=prompts(tok, 8),
                          step_end=tg.step_end_mask(tok), max_new_tokens=30)
    for k in ("tokens", "senior", "mask", "truncated"):
        assert torch.equal(out[k], ref[k]), k
    lengths = ref["mask"].sum(1)
    assert (~ref["truncated"]).any() and len(set(lengths.tolist())) >= 2  # rows do end early, at different steps
    if schedule != "solo":
        assert ref["senior"].any() and (ref["mask"] & ~ref["senior"]).any()  # both authors wrote

def test_static_decode_reads_a_given_uniform_table(tok, enders):
    """u [B, T] replaces the sampler's draws on both paths (validation passes one): the same rollouts again, and
    other rollouts than the global stream's."""
    s, j = enders
    u = torch.rand(8, 30, generator=torch.Generator().manual_seed(4))
    kw = dict(schedule="word", temperature=1.0, prompts=prompts(tok, 8), max_new_tokens=30)
    ref, out = both_paths(tok, s, j, seed=0, u=u, **kw)
    for k in ("tokens", "senior", "mask", "truncated"):
        assert torch.equal(out[k], ref[k]), k
    assert not torch.equal(both_paths(tok, s, j, seed=0, **kw)[0]["tokens"], ref["tokens"])

def test_static_decode_step_max_turns(tok, enders):
    s, j = enders
    se = torch.ones(len(tok), 3, dtype=torch.bool)  # every token holds a blank line: turns are single tokens
    for temperature in (0, 1.0):
        ref, out = both_paths(tok, s, j, seed=1, schedule="step", step_end=se, max_turns=3,
                              temperature=temperature, prompts=prompts(tok, 8))
        for k in ("tokens", "senior", "mask", "truncated"):
            assert torch.equal(out[k], ref[k]), k
        stopped = ref["truncated"] & (ref["mask"].sum(1) == 3)  # cut by the turn budget, not by EOS
        assert stopped.any() and (ref["mask"].sum(1) <= 3).all()

def test_static_decode_traces_as_one_graph_and_reuses_its_caches(tok, enders, monkeypatch):
    """compile=True as on CUDA, with dynamo's eager backend on CPU: fullgraph=True fails on any graph break; the kept
    caches are emptied and reused for the next call (the same objects), and grow for a longer one."""
    s, j = enders
    real = torch.compile
    monkeypatch.setattr(tg.torch, "compile", lambda fn, **kw: real(fn, backend="eager", fullgraph=True))
    monkeypatch.setattr(tg, "STATIC", {})
    kw = dict(schedule="word", prompts=prompts(tok, 4), max_new_tokens=20, compile=True)
    ref, out = both_paths(tok, s, j, seed=2, **kw)
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    caches = {k: v[1] for k, v in tg.STATIC.items() if k != "read"}
    assert sorted(v[0] for k, v in tg.STATIC.items() if k != "read") == [256, 256]  # P + 20 rounded up, per model
    ref, out = both_paths(tok, s, j, seed=3, **kw)
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    assert all(tg.STATIC[k][1] is c for k, c in caches.items())  # reused, not reallocated
    ref, out = both_paths(tok, s, j, seed=3, **dict(kw, max_new_tokens=300))
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    assert sorted(v[0] for k, v in tg.STATIC.items() if k != "read") == [512, 512]  # grown once for both models

def test_compile_flag_routes_rollouts_through_the_static_path(tok, monkeypatch):
    assert tg.get_args(["--data", "x"]).compile is False and tg.get_args(["--data", "x", "--compile"]).compile
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    calls = []
    static = tg.static_generate
    monkeypatch.setattr(tg, "static_generate", lambda *a, **k: calls.append(1) or static(*a, **k))
    problems = [dict(problem="What is 12 + 34?", answer="46"), dict(problem="Add 1 and 3.", answer="4")]
    ro = {}
    for flag in ([], ["--compile"]):
        args = tg.get_args(["--data", "x", "--group-size", "2", "--gen-batch", "3", "--max-new-tokens", "12",
                            "--temperature", "1.0", *flag])
        torch.manual_seed(0)
        ro[bool(flag)] = tg.rollout(s, j, tok, problems, args, tg.word_start_mask(tok), None)
    assert len(calls) == 2 and ro[True] == ro[False]  # two generation batches (3 + 1 rollouts), the same rollouts

# ------------------------------------------------------------------------------------------------------------------
# appendix: more than one GPU: torchrun and FSDP2 on CPU (gloo, loopback only)

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def ranks_env(r, world, port):
    return dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world))

def trainable(tok):
    m = tiny_model(tok, seed=0).requires_grad_(True)
    m.activation_checkpointing_enable({"use_reentrant": False})
    return m

def one_step_on_a_rank(r, world, port, tok, ro, a, out):
    """Rank r of a forked process group: resume a one-process checkpoint (weights and AdamW state), take a
    train_step on its groups with SGD (lr 1: the update is minus the gradient), then an AdamW step and a checkpoint.
    Rank 0 keeps what it gathered."""
    os.environ.update(ranks_env(r, world, port))
    torch.set_num_threads(1)
    tg.start_ranks(a)
    try:
        m = trainable(tok)
        tg.distribute(m, None, a)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        assert tg.load_checkpoint(out / "one", m, opt) == 1
        full = dict(options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        tg.update_mode([m], True)  # FSDP2: state dicts come from the shards (the optimizer's parameters)
        saved = dict(adam_loaded=copy.deepcopy(get_optimizer_state_dict(m, opt, **full)))  # copies, not views
        mine = [x for g in range(r, len(ro) // a.group_size, world) for x in ro[g * a.group_size:][:a.group_size]]
        saved["sgd"] = tg.train_step(m, None, tok, torch.optim.SGD(m.parameters(), lr=1.0), mine, a)
        saved["after_sgd"] = copy.deepcopy(get_model_state_dict(m, **full))
        tg.train_step(m, None, tok, opt, mine, a)
        tg.save_checkpoint(out / "two", 2, m, tok, opt)
        tg.update_mode([m], True)
        saved.update(weights=get_model_state_dict(m, **full), adam=get_optimizer_state_dict(m, opt, **full))
        if r == 0:
            torch.save(saved, out / "rank0.pt")
    finally:
        tg.stop_ranks()

def same_adam(opt, model, named):
    return all(torch.equal(opt.state[p][k], named["state"][name][k])
               for name, p in model.named_parameters() for k in ("exp_avg", "exp_avg_sq", "step"))

@pytest.mark.parametrize("fsdp", [True, False])
def test_two_ranks_take_the_same_step_as_one_process(tmp_path, tok, senior, junior, fsdp):
    """4 groups of 4 co-written rollouts, 2 mini-batches: each of 2 ranks holds one group of each. The token count is
    summed over the ranks before any backward, so the update (SGD: the gradient itself) equals one process's.
    Checkpoints cross over: one process's loads on 2 ranks, and the 2 ranks' loads on one process."""
    ps = [p for p in prompts(tok, 4) for _ in range(4)]
    torch.manual_seed(3)
    ro = rollouts_for(tok, gen(tok, senior, junior, prompts=ps), ps, [float(c) for c in "1001011100011010"])
    a = args_for(tok, group_size=4, prompts_per_step=4, mini_batch_prompts=2, micro_batch=3, grad_clip=1e9,
                 fsdp=fsdp, timeout=1.0)
    m = trainable(tok)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    tg.train_step(m, None, tok, opt, ro, a)
    tg.save_checkpoint(tmp_path / "one", 1, m, tok, opt)
    torch.multiprocessing.start_processes(one_step_on_a_rank, args=(2, free_port(), tok, ro, a, tmp_path), nprocs=2,
                                          start_method="fork")
    two = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert same_adam(opt, m, two["adam_loaded"])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    one = tg.train_step(m, None, tok, torch.optim.SGD(m.parameters(), lr=1.0), ro, a)
    d1 = torch.cat([(v - before[k]).flatten() for k, v in m.state_dict().items()])  # the update of every weight
    d2 = torch.cat([(two["after_sgd"][k] - before[k]).flatten() for k in before])
    assert (d2 - d1).norm() <= 1e-5 * d1.norm() and (d1 != 0).float().mean() > 0.5
    for k in ("loss", "clip_frac", "grad_norm"):
        assert two["sgd"][k] == pytest.approx(one[k], rel=1e-5), k
    m2 = tiny_model(tok, seed=5).requires_grad_(True)
    opt = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    assert tg.load_checkpoint(tmp_path / "two", m2, opt) == 2
    assert all(torch.equal(v, two["weights"][k]) for k, v in m2.state_dict().items())
    assert same_adam(opt, m2, two["adam"])
    assert (tmp_path / "two" / "step_000002" / "optim").is_dir() and json.loads(
        (tmp_path / "two" / "step_000002" / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]

def test_memory_report_per_rank_under_fsdp2(capsys):
    """One of N ranks: float32 weights, gradients and AdamW are 1/N (AdamW stays on the GPU); rollouts hold the whole
    senior in bf16, updates the root and two layers, and one group's gradient (bf16 + float32)."""
    a = tg.get_args(["--data", "x", "--nproc", "4"])
    rows = [r[1:] for r in tg.sharded_rows(a, n=1000, root=100, layer=225, junior_rollout=True, junior_update=False)]
    assert rows == [(1000, 1000), (2000, 1100), (0, 1000 + 6 * 225), (2000, 2000), (2000, 0)]
    assert tg.sharded_rows(a, 1000, 100, 225, True, True)[4][1:] == (2000, 2000)     # --kl-coef: the whole junior
    a.shard_junior = True
    assert tg.sharded_rows(a, 1000, 100, 225, True, True)[4][1:] == (2000, 500)      # --shard-junior: 1/N of it
    cfg = str(tg.DEMO_DIR.parent / "configs" / "qwen3-0.6b")
    peaks = [tg.memory_report(tg.get_args(["--model", cfg, "--nproc", n])) for n in ("1", "2", "8")]
    assert peaks[2] < peaks[1] and "one of 8 ranks (FSDP2)" in capsys.readouterr().out

def test_a_collective_gives_up_after_the_timeout(tok):
    """Rank 1 never reaches the collective: rank 0 stops with an error after --timeout instead of hanging, and says
    which rank failed and why in one line."""
    def work(r, port):
        os.environ.update(ranks_env(r, 2, port))
        tg.start_ranks(args_for(tok, timeout=2 / 60, device="cpu"))
        try:
            if r == 1:
                time.sleep(4)
            else:
                with pytest.raises(RuntimeError, match="Timed out waiting 2000ms") as e:
                    tg.all_sum(1.0)
                with contextlib.redirect_stderr(io.StringIO()) as err:
                    tg.rank_failed(e.value)
                assert err.getvalue().startswith("error: rank 0 of 2 failed: RuntimeError: ")
                assert err.getvalue().endswith("(it waited longer than --timeout for another rank)\n")
        finally:
            tg.stop_ranks()
    torch.multiprocessing.start_processes(work, args=(free_port(),), nprocs=2, start_method="fork")

def main_on_a_rank(r, port, argv):
    os.environ.update(ranks_env(r, 2, port))
    try:
        tg.main(tg.get_args(argv))
    finally:
        tg.stop_ranks()

def test_two_rank_demo_loses_a_rank_and_resumes_on_one(tmp_path, capsys):
    """A 2-rank --demo run (FSDP2 for the senior and --shard-junior, gloo). Rank 1 is killed (as by the OOM killer)
    after the step-2 checkpoint and the job stops; --resume on one process continues from the last checkpoint, AdamW
    state included."""
    out = tmp_path / "o"
    small = ["--demo", "--out", str(out), "--prompts-per-step", "2", "--mini-batch-prompts", "2", "--group-size", "4",
             "--max-new-tokens", "8", "--val-size", "0", "--save-every", "1", "--log-every", "0", "--show-every", "0"]
    job = torch.multiprocessing.start_processes(main_on_a_rank, nprocs=2, join=False, start_method="fork",
                                                args=(free_port(), [*small, "--steps", "1000", "--timeout", "0.5",
                                                                    "--shard-junior"]))
    deadline = time.time() + 60
    while not ((out / "latest").exists() and (out / "latest").read_text() >= "step_000002") and time.time() < deadline:
        time.sleep(0.1)
    os.kill(job.pids()[1], signal.SIGKILL)
    with pytest.raises(ProcessException):   # rank 1 died (or rank 0 lost it first)
        while not job.join():
            pass
    assert job.processes[1].exitcode == -signal.SIGKILL and not any(p.is_alive() for p in job.processes)
    k = int((out / "latest").read_text()[len("step_"):])
    assert k >= 2 and (out / f"step_{k:06d}" / "optim").is_dir()
    tg.main(tg.get_args([*small, "--steps", str(k + 2), "--resume"]))
    assert f"resumed from {out / f'step_{k:06d}'} (step {k})" in capsys.readouterr().out
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, k + 3))
    adam = torch.load(out / f"step_{k + 2:06d}" / "trainer.pt", weights_only=False)["optimizer"]["state"]
    assert {s["step"].item() for s in adam.values()} == {k + 2}   # one update a step: none lost, none redone

# ------------------------------------------------------------------------------------------------------------------
# appendix: the answer checker behind reward() (hand-written cases, injections, pathological inputs)

# (gold, completion, expected reward). Golds are written the way the datasets write them
# (MATH: bare LaTeX, OlympiadBench: $...$, some sets: \boxed{}), completions the way models answer.
CASES = [
    # --- extraction -------------------------------------------------------------------------
    ("5", r"Adding up, the total is $\boxed{5}$.", 1),
    ("5", r"First guess \boxed{3}. Wait, I made an error; correcting it gives \boxed{5}.", 1),
    ("3", r"First guess \boxed{3}. Wait, I made an error; correcting it gives \boxed{5}.", 0),
    ("5", r"So the answer is \boxed{5}. Let me double check: maybe 6? No, 5 is right.", 1),
    ("5", r"The answer is 5.", 0),
    ("5", r"The answer is $\boxed 5$.", 1),
    ("5", r"\fbox{5}", 1),
    (r"\frac{1}{2}", r"Thus $p = \boxed{\frac{1}{2}}$", 1),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"$\boxed{\dfrac{\sqrt3}{2}}$", 1),
    (r"$\frac{\sqrt{3}}{2}$", r"\boxed{\frac{\sqrt{3}}{2}}", 1),
    ("5", r"so the final answer is \boxed{5", 0),
    ("5", r"\boxed{}", 0),
    ("12", r"\boxed{\boxed{12}}", 1),
    (r"\{1,2\}", r"The solution set is $\boxed{\{1, 2\}}$.", 1),
    ("3, 5", r"The roots are \boxed{3} and \boxed{5}.", 1),  # boxes joined by "and" are one answer
    ("5", r"The roots are \boxed{3} and \boxed{5}.", 0),
    ("3, 5", r"First guess \boxed{3}. Wait, I made an error; correcting it gives \boxed{5}.", 0),  # a separate step
    # --- \dfrac, \frac12, \sqrt3, \left \right, spacing -----------------------------------------
    (r"\frac{1}{2}", r"\boxed{\dfrac{1}{2}}", 1),
    (r"\frac{1}{2}", r"\boxed{\tfrac12}", 1),
    (r"\frac{1}{2}", r"\boxed{\frac13}", 0),
    (r"\frac{\sqrt{3}}{3}", r"\boxed{\frac{\sqrt3}3}", 1),
    (r"\sqrt{3}", r"\boxed{\sqrt 3}", 1),
    (r"\sqrt{3}", r"\boxed{\sqrt{2}}", 0),
    ("(1,2)", r"\boxed{\left( 1, 2 \right)}", 1),
    (r"\left[ -1, 4 \right)", r"\boxed{[-1,4)}", 1),
    (r"3\sqrt{2}", r"\boxed{3\,\sqrt{2}}", 1),
    (r"\frac{7}{2}", r"\boxed{\displaystyle\frac{7}{2}}", 1),
    # --- thousands separators vs lists --------------------------------------------------------
    ("10000", r"\boxed{10{,}000}", 1),
    ("10000", r"\boxed{10,000}", 1),
    ("10000", r"\boxed{10\,000}", 1),
    ("10000", r"\boxed{1,\!000}", 0),
    ("1000000", r"\boxed{1,000,000}", 1),
    ("1234.5", r"\boxed{1,234.5}", 1),
    ("32, 349", r"\boxed{32349}", 0),
    ("32349", r"\boxed{32, 349}", 0),
    ("32, 349", r"\boxed{349, 32}", 1),
    # --- units, degrees, percent, dollars -----------------------------------------------------
    ("5", r"\boxed{5\text{ cm}}", 1),
    ("24", r"The area is \boxed{24 \text{ square units}}.", 1),
    ("12", r"\boxed{12\mbox{ inches}}", 1),
    ("50", r"\boxed{50\,\mathrm{m}}", 1),
    (r"$5 \mathrm{~cm}$", r"\boxed{5}", 1),
    ("6", r"\boxed{6 \text{ cm}^2}", 1),
    ("6", r"\boxed{7 \text{ cm}^2}", 0),
    ("30", r"\boxed{30^\circ}", 1),
    ("30", r"\boxed{30^{\circ}}", 1),
    (r"30^\circ", r"\boxed{30 \text{ degrees}}", 1),
    ("30", r"\boxed{31^\circ}", 0),
    (r"\frac{\pi}{6}", r"\boxed{30^\circ}", 0),  # no degree/radian conversion
    (r"25\%", r"\boxed{25}", 1),
    ("25", r"\boxed{25\%}", 1),
    (r"25\%", r"\boxed{0.25}", 1),  # a percent may be written as a fraction
    (r"25\%", r"\boxed{2.5}", 0),
    (r"25\%", r"\boxed{0.025}", 0),
    ("0.25", r"\boxed{25\%}", 1),
    ("25", r"\boxed{0.25}", 0),  # no percent sign: no rescaling
    (r"\$18.90", r"\boxed{18.90}", 1),
    ("18.90", r"\boxed{\$18.9}", 1),
    ("18.90", r"\boxed{\$19.80}", 0),
    ("5", r"\boxed{5.}", 1),
    # --- decimals, integers, mixed numbers ----------------------------------------------------
    ("0.5", r"\boxed{.5}", 1),
    (r"\frac{1}{2}", r"\boxed{0.5}", 1),
    ("5", r"\boxed{5.0}", 1),
    ("5", r"\boxed{5.00}", 1),
    ("5", r"\boxed{5.01}", 0),
    ("033", r"\boxed{33}", 1),
    ("33", r"\boxed{033}", 1),
    ("330", r"\boxed{33}", 0),
    (r"\frac{9}{4}", r"\boxed{2\frac{1}{4}}", 1),
    (r"2\frac14", r"\boxed{2.25}", 1),
    (r"2\frac{1}{4}", r"\boxed{\frac{1}{2}}", 0),
    (r"2\frac{1}{4}", r"\boxed{2\frac{1}{3}}", 0),
    (r"-3\frac{1}{2}", r"\boxed{-\frac{7}{2}}", 1),
    ("100", r"\boxed{99}", 0),
    ("100", r"\boxed{101}", 0),
    ("100", r"\boxed{-100}", 0),
    ("0", r"\boxed{0}", 1),
    ("0", r"\boxed{-0}", 1),
    (r"-\frac{1}{2}", r"\boxed{\frac{-1}{2}}", 1),
    (r"-\frac12", r"\boxed{-0.5}", 1),
    (r"-\frac12", r"\boxed{\frac12}", 0),
    (r"3 \times 10^8", r"\boxed{300000000}", 1),
    (r"1.5 \times 10^{-3}", r"\boxed{0.0015}", 1),
    (r"2^{10}", r"\boxed{1024}", 1),
    ("1023", r"\boxed{2^{10}}", 0),
    ("120", r"\boxed{5!}", 1),
    (r"\binom{5}{2}", r"\boxed{10}", 1),
    ("252", r"\boxed{\dbinom{10}{5}}", 1),
    ("252", r"\boxed{\dbinom{10}{4}}", 0),
    ("252", r"\boxed{{10 \choose 5}}", 1),
    (r"\dbinom{10}{5}", r"\boxed{\tbinom{10}{5}}", 1),
    ("210", r"\boxed{{10\choose 5}}", 0),
    (r"\frac{n(n-1)}{2}", r"\boxed{\tbinom{n}{2}}", 1),
    (r"\frac13", r"\boxed{0.\overline{3}}", 1),  # repeating decimals are exact
    (r"0.1\overline{6}", r"\boxed{\frac16}", 1),
    (r"\frac{8}{7}", r"\boxed{1.\overline{142857}}", 1),
    (r"-\frac{2}{3}", r"\boxed{-0.\bar{6}}", 1),
    (r"0.\overline{12}", r"\boxed{\frac{12}{100}}", 0),
    (r"0.\overline{3}", r"\boxed{0.33}", 0),
    (r"\overline{AB}", r"\boxed{\overline{AB}}", 1),  # a segment's name stays a name
    (r"2^{100}", r"\boxed{1267650600228229401496703205376}", 1),
    (r"2^{100}", r"\boxed{1267650600228229401496703205377}", 0),
    (r"10^{100}", r"\boxed{10^{100}+1}", 0),
    # --- exact vs approximate: relative tolerance only for a decimal against an exact value ------
    (r"\frac{1}{2004!}", r"\boxed{\frac{1}{2004!}}", 1),
    (r"\frac{1}{2004!}", r"\boxed{\frac{1}{2006!}}", 0),
    (r"\frac{1}{2004!}", r"\boxed{0}", 0),
    (r"\frac{1}{2004!}", r"\boxed{0.0}", 0),
    (r"\frac{\pi}{2004!}", r"\boxed{\frac{\pi}{2006!}}", 0),
    (r"\frac13", r"\boxed{0.3333}", 1),
    (r"\frac13", r"\boxed{0.33}", 0),
    (r"\frac{2}{3}", r"\boxed{0.6667}", 1),
    (r"\frac{2}{3}", r"\boxed{0.6}", 0),
    ("0.3", r"\boxed{\frac{1}{3}}", 0),
    (r"\pi", r"\boxed{3.14159}", 1),
    (r"\pi", r"\boxed{3.14}", 0),
    (r"\sqrt{2}", r"\boxed{1.41421}", 1),
    (r"\sqrt{2}", r"\boxed{1.41}", 0),
    (r"\sqrt{2}", r"\boxed{\frac{99}{70}}", 0),
    ("1000.5", r"\boxed{1000.6}", 0),
    (r"\frac{2001}{2}", r"\boxed{1000.6}", 0),
    (r"\frac{2001}{2}", r"\boxed{1000.5}", 1),
    ("2.5", r"\boxed{\frac{5}{2}}", 1),
    # --- symbolic ---------------------------------------------------------------------------
    (r"4\sqrt{2}", r"\boxed{4}", 0),
    ("4", r"\boxed{4\sqrt2}", 0),
    (r"4\sqrt{2}", r"\boxed{\sqrt{32}}", 1),
    (r"6\sqrt{3}", r"\boxed{\sqrt{108}}", 1),
    (r"6\sqrt{3}", r"\boxed{6\sqrt{2}}", 0),
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}", 1),
    (r"\frac{3\sqrt{3}}{4}", r"\boxed{\frac34\sqrt3}", 1),
    (r"\frac{\sqrt{5}-1}{2}", r"\boxed{\frac{-1+\sqrt{5}}{2}}", 1),
    (r"\frac{\sqrt{5}-1}{2}", r"\boxed{\frac{1+\sqrt{5}}{2}}", 0),
    (r"2+\sqrt{3}", r"\boxed{\sqrt{3}+2}", 1),
    (r"2+\sqrt{3}", r"\boxed{2-\sqrt3}", 0),
    (r"\sqrt{2}+\sqrt{3}", r"\boxed{\sqrt{5+2\sqrt{6}}}", 1),
    (r"\sqrt[3]{2}", r"\boxed{2^{1/3}}", 1),
    (r"\sqrt[3]{2}", r"\boxed{\sqrt{2}}", 0),
    ("-2", r"\boxed{\sqrt[3]{-8}}", 1),
    (r"2\pi", r"\boxed{2 \pi}", 1),
    (r"2\pi", r"\boxed{\pi \cdot 2}", 1),
    (r"2\pi", r"\boxed{\pi}", 0),
    (r"\frac{\pi}{4}", r"\boxed{\frac{1}{4}\pi}", 1),
    (r"\frac{\pi}{4}", r"\boxed{0.7854}", 1),
    (r"\frac{\pi}{4}", r"\boxed{\arctan 1}", 1),
    ("-1", r"\boxed{e^{i\pi}}", 1),
    ("3+4i", r"\boxed{4i+3}", 1),
    ("3+4i", r"\boxed{3-4i}", 0),
    ("i", r"\boxed{\sqrt{-1}}", 1),
    ("3", r"\boxed{\log_2 8}", 1),
    ("e^2", r"\boxed{e^{2}}", 1),
    (r"e^2", r"\boxed{2e}", 0),
    ("x^2+2x+1", r"\boxed{(x+1)^2}", 1),
    ("(x+1)^2", r"\boxed{x^2+1}", 0),
    ("x^2-1", r"\boxed{(x-1)(x+1)}", 1),
    (r"\frac{x+1}{x-1}", r"\boxed{\frac{1+x}{x-1}}", 1),
    (r"\frac{x+1}{x-1}", r"\boxed{\frac{x-1}{x+1}}", 0),
    (r"\frac{1}{x}", r"\boxed{x^{-1}}", 1),
    ("n(n+1)/2", r"\boxed{\frac{n^2+n}{2}}", 1),
    (r"\binom{n+1}{2}", r"\boxed{\frac{n(n+1)}{2}}", 1),
    (r"\frac{n(n+1)}{2}", r"\boxed{\frac{n(n-1)}{2}}", 0),
    ("2ab", r"\boxed{2ba}", 1),
    ("a^2b", r"\boxed{a b^2}", 0),
    (r"2\sin x\cos x", r"\boxed{\sin 2x}", 1),
    (r"\sin^2 x", r"\boxed{1-\cos^2 x}", 1),
    (r"\tan\theta", r"\boxed{\frac{\sin\theta}{\cos\theta}}", 1),
    (r"\sqrt{x^2}", r"\boxed{x}", 0),
    (r"\infty", r"\boxed{\infty}", 1),
    (r"\infty", r"\boxed{-\infty}", 0),
    # --- x = 3 vs 3, equations ------------------------------------------------------------------
    ("3", r"\boxed{x = 3}", 1),
    ("x=3", r"\boxed{3}", 1),
    ("3", r"\boxed{x = -3}", 0),
    ("3", r"\boxed{x = 3 \text{ or } x = -3}", 0),
    (r"\frac{1}{3}", r"\boxed{x = 0.3333}", 1),
    ("y = 2x + 3", r"\boxed{y=3+2x}", 1),
    ("y = 2x + 3", r"\boxed{2x - y + 3 = 0}", 1),
    ("y = 2x + 3", r"\boxed{y = 2x - 3}", 0),
    ("y = 2x + 3", r"\boxed{2x+3}", 1),
    ("x^2 + y^2 = 1", r"\boxed{2x^2+2y^2=2}", 1),
    ("x^2 + y^2 = 1", r"\boxed{x^2+y^2=2}", 0),
    ("x + 2y = 5", r"\boxed{5 = x + 2y}", 1),
    ("x + 2y = 5", r"\boxed{x+2y=6}", 0),
    ("2x + 3y = 6", r"\boxed{2x+3y}", 0),
    ("f(x) = x^2 + 1", r"\boxed{x^2+1}", 1),
    ("f(x) = x^2 + 1", r"\boxed{f(x) = x^2 - 1}", 0),
    # --- multiple choice ----------------------------------------------------------------------
    (r"\text{(C)}", r"\boxed{C}", 1),
    ("C", r"\boxed{(C)}", 1),
    ("C", r"\boxed{\text{(C)}}", 1),
    ("C", r"\boxed{\textbf{(C)}\ 17}", 1),
    ("C", r"\boxed{D}", 0),
    ("(B)", r"\boxed{\text{(D)}}", 0),
    (r"\textbf{(B) }12", r"\boxed{B}", 1),
    ("17", r"\boxed{\textbf{(C) } 17}", 1),
    ("17", r"\boxed{\textbf{(C) } 18}", 0),
    ("17", r"\boxed{C}", 0),
    # --- text answers -------------------------------------------------------------------------
    (r"\text{Monday}", r"\boxed{monday}", 1),
    ("Monday", r"\boxed{\text{Tuesday}}", 0),
    (r"\text{odd}", r"\boxed{\text{Odd}}", 1),
    (r"\text{odd}", r"\boxed{\text{even}}", 0),
    (r"\text{yes}", r"\boxed{No}", 0),
    ("no", r"\boxed{\text{No}}", 1),
    (r"\text{dog}", r"\boxed{god}", 0),
    (r"\text{infinitely many}", r"\boxed{\text{Infinitely many}}", 1),
    # --- tuples and intervals -----------------------------------------------------------------
    ("(2, 3)", r"\boxed{(2,3)}", 1),
    ("(2, 3)", r"\boxed{(3,2)}", 0),
    ("(2, 3)", r"\boxed{[2,3]}", 0),
    ("(2, 3)", r"\boxed{2, 3}", 0),  # an ordered pair needs its brackets
    ("(1, -2, 3)", r"\boxed{(1,-2,3)}", 1),
    ("(1, -2, 3)", r"\boxed{(1,2,3)}", 0),
    ("(1, -2, 3)", r"\boxed{(1,-2)}", 0),
    (r"\left( \frac{1}{2}, \frac{\sqrt{3}}{2} \right)", r"\boxed{(0.5, \frac{\sqrt3}{2})}", 1),
    ("[2, 5)", r"\boxed{[2,5)}", 1),
    ("[2, 5)", r"\boxed{[2,5]}", 0),
    ("[2, 5)", r"\boxed{(2,5)}", 0),
    (r"(-\infty, 3]", r"\boxed{(-\infty,3]}", 1),
    (r"(-\infty, 3]", r"\boxed{x \le 3}", 1),
    (r"(-\infty, 3]", r"\boxed{x < 3}", 0),
    (r"(3, \infty)", r"\boxed{x > 3}", 1),
    ("[-2, 7]", r"\boxed{-2 \le x \le 7}", 1),
    ("[-2, 7]", r"\boxed{-2 < x \le 7}", 0),
    ("[1, 2)", r"\boxed{x \in [1,2)}", 1),
    (r"(-\infty, -1) \cup (1, \infty)", r"\boxed{(1,\infty)\cup(-\infty,-1)}", 1),
    (r"(-\infty, -1) \cup (1, \infty)", r"\boxed{(-\infty,-1)}", 0),
    (r"(-\infty, -1) \cup (1, \infty)", r"\boxed{(-\infty,-1]\cup(1,\infty)}", 0),
    (r"(-\infty, -1) \cup (1, \infty)", r"\boxed{x < -1 \text{ or } x > 1}", 1),
    # --- sets, lists, \pm ---------------------------------------------------------------------
    (r"\{1, 2\}", r"\boxed{\{2, 1\}}", 1),
    (r"\{1, 2\}", r"\boxed{\{1, 2, 3\}}", 0),
    ("1, 2", r"\boxed{\{1,2\}}", 1),
    ("1, 2, 3", r"\boxed{3, 1, 2}", 1),
    ("1, 2, 3", r"\boxed{1, 2}", 0),
    ("1, 2", r"\boxed{1, 2, 2}", 1),  # a list names a set: a repeated item counts once
    ("1, 2", r"\boxed{1, 2, 2, 3}", 0),
    ("-2, 3", r"\boxed{2, -3}", 0),
    ("1, 2", r"\boxed{x = 1, x = 2}", 1),
    ("-1, 2", r"\boxed{x=-1 \text{ or } x=2}", 1),
    ("-1, 2", r"\boxed{-1 \text{ and } 2}", 1),
    (r"\emptyset", r"\boxed{\varnothing}", 1),
    (r"\emptyset", r"\boxed{\{0\}}", 0),
    (r"2 \pm \sqrt{3}", r"\boxed{2+\sqrt3, 2-\sqrt3}", 1),
    (r"\pm 2", r"\boxed{2, -2}", 1),
    (r"\pm 2", r"\boxed{2}", 0),
    (r"1 \pm \sqrt{2}", r"\boxed{1\pm\sqrt 2}", 1),
    (r"1 \pm \sqrt{2}", r"\boxed{-1\pm\sqrt 2}", 0),
    (r"x = \frac{-1 \pm \sqrt{5}}{2}", r"\boxed{\frac{-1+\sqrt5}{2}, \frac{-1-\sqrt5}{2}}", 1),
    (r"x = \frac{-1 \pm \sqrt{5}}{2}", r"\boxed{\frac{-1+\sqrt5}{2}}", 0),
    # --- matrices -----------------------------------------------------------------------------
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\boxed{\begin{bmatrix}1&2\\3&4\end{bmatrix}}", 1),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\boxed{\begin{pmatrix}1&3\\2&4\end{pmatrix}}", 0),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\boxed{\begin{pmatrix}1&2\\3&-4\end{pmatrix}}", 0),
    (r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\boxed{\begin{pmatrix} 1 \\ -2 \end{pmatrix}}", 1),
    (r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\boxed{\begin{pmatrix} 1 & -2 \end{pmatrix}}", 0),
    (r"(\begin{pmatrix}-\frac{7}{4}&-2\\4&\frac{1}{4}\\\end{pmatrix})",
     r"\boxed{\begin{pmatrix}-\frac{7}{4}&-2\\4&\frac{1}{4}\end{pmatrix}}", 1),
    (r"(\begin{pmatrix}-\frac{7}{4}&-2\\4&\frac{1}{4}\\\end{pmatrix})",
     r"\boxed{\begin{pmatrix}-\frac{7}{4}&2\\4&\frac{1}{4}\end{pmatrix}}", 0),
    (r"\begin{pmatrix} \frac{1}{2} & 0 \\ 0 & \frac{1}{2} \end{pmatrix}",
     r"\boxed{\begin{pmatrix} 0.5 & 0 \\ 0 & 1/2 \end{pmatrix}}", 1),
    # --- more forms seen in model outputs --------------------------------------------------------
    ("1000", r"\boxed{1 000}", 1),
    ("16386.20", r"\boxed{\$16,\!386.20}", 1),
    (r"12\pi", r"\boxed{12 \pi \text{ square units}}", 1),
    (r"\tan^2 y + 1", r"\boxed{\sec^2(y)}", 1),
    (r"(\frac{3}{5}, \frac{8}{3}]", r"\boxed{(0.6, 2.6667]}", 1),
    (r"(\frac{3}{5}, \frac{8}{3}]", r"\boxed{(0.6, 2.6667)}", 0),
    ("34x+45y-20z+100=0", r"\boxed{-34x-45y+20z-100=0}", 1),
    (r"\frac{1}{3}", r"\boxed{\frac{1}{3} \approx 0.333}", 1),
    (r"\frac{1}{3}", r"\boxed{x \approx 0.3333}", 1),
    ("C", r"\boxed{\text{(C) or (D)}}", 0),
    (r"(-\infty, \infty)", r"\boxed{\mathbb{R}}", 1),
    (r"\frac{\sqrt{6}}{3}", r"\boxed{\sqrt{\frac{2}{3}}}", 1),
    ("(1,2), (3,4)", r"\boxed{(3,4),(1,2)}", 1),
    ("(1,2), (3,4)", r"\boxed{(3,4)}", 0),
    ("(a,b)=(1,2)", r"\boxed{(1,2)}", 1),
    ("y=-\\frac{1}{2}x+3", r"\boxed{x+2y=6}", 1),
    ("y=-\\frac{1}{2}x+3", r"\boxed{x+2y=3}", 0),
    ("a_{n}=2n+1", r"\boxed{2n+1}", 1),
    ("2\\ln 2", r"\boxed{\ln 4}", 1),
    (r"\frac{1}{2}+\frac{\sqrt{3}}{2}i", r"\boxed{\frac{1+i\sqrt3}{2}}", 1),
    ("5\\text{ feet}", r"\boxed{60 \text{ inches}}", 0),  # units are dropped, never converted
    (r"\sqrt{" + "7" * 120 + "}", r"\boxed{\sqrt{" + "7" * 120 + "}+1}", 0),  # 1 in 10^60: exact, not numeric
    # --- full completions ---------------------------------------------------------------------
    (r"\frac{5}{6}",
     "We need $P(\\text{at least one six})$. The complement has probability $(5/6)^2 = 25/36$, "
     "so $P = 1 - 25/36 = 11/36$.\n\nHmm, the question asks for the probability of *no* six in one roll, "
     "which is $\\frac{5}{6}$.\n\nFinal answer: $\\boxed{\\dfrac{5}{6}}$", 1),
    ("204",
     "Let $n$ be the number. Then $n \\equiv 4 \\pmod{8}$ and $n \\equiv 0 \\pmod{17}$, so $n = 17k$ with "
     "$17k \\equiv k \\equiv 4$. The smallest such $n$ above 100 is $17 \\cdot 12 = 204$.\n\n**Answer:** "
     "\\boxed{204}", 1),
    ("204", "... therefore $n = 17 \\cdot 12$, i.e. $\\boxed{17 \\cdot 12}$.", 1),
    ("204", "... therefore $n = 17 \\cdot 11 = \\boxed{187}$.", 0),
    # --- several boxes make one answer (separators only: commas, and/or, \quad, \text{ and }, labels) ------
    ("(1, 2), (2, 1)", r"so the solutions are \boxed{(1, 2)}, \boxed{(2, 1)}", 1),
    ("(1, 2), (2, 1)", r"so the solutions are \boxed{(1, 2)}, \boxed{(2, 2)}", 0),
    ("(1, 2), (2, 1)", r"so the solutions are \boxed{(2, 1)}", 0),
    ("3, -5", r"$\boxed{3} \quad\text{and}\quad \boxed{-5}$", 1),
    ("3, -5", r"$\boxed{3} \quad\text{and}\quad \boxed{5}$", 0),
    ("-5", r"$\boxed{3} \quad\text{and}\quad \boxed{-5}$", 0),
    ("(2, 2), (1, 3)", r"$$\boxed{(2, 2)} \text{ for part (a) and } \boxed{(1, 3)}$$", 1),
    ("(2, 2), (1, 3)", r"$$\boxed{(2, 2)} \text{ for part (a) and } \boxed{(3, 1)}$$", 0),
    ("k = 45, n = 2", r"$$\boxed{k = 45} \quad \text{and} \quad \boxed{n = 2}$$", 1),
    ("k = 45, n = 2", r"$$\boxed{k = 2} \quad \text{and} \quad \boxed{n = 45}$$", 0),
    ("y_1 = 2x + 1, y_2 = 3x", r"\(y_1 = \boxed{2x+1}\) and \(y_2 = \boxed{3x}\)", 1),
    ("y_1 = 2x + 1, y_2 = 3x", r"\(y_1 = \boxed{3x}\) and \(y_2 = \boxed{2x+1}\)", 0),  # order matters
    (r"\frac{1}{2}", r"Part 1 gives \boxed{4}. For part 2 the probability is \boxed{\frac{1}{2}}.", 1),
    ("x_1 = 2, x_2 = 3", r"$\boxed{2} \text{ and } \boxed{3}$", 1),
    ("x_1 = 2, x_2 = 3", r"$\boxed{3} \text{ and } \boxed{2}$", 0),
    ("143", "So, \\boxed{143}\n\n**Final Answer**\n\\boxed{143}", 1),
    ("143", "So, \\boxed{142}\n\n**Final Answer**\n\\boxed{143}", 1),  # the earlier box is a separate step
    (r"\boxed{1}\boxed{2}", r"\boxed{2, 1}", 1),
    (r"\boxed{1}\boxed{2}", r"\boxed{2}", 0),
    (r"\(\boxed{1}\) and \(\boxed{-2}\).", r"$\boxed{-2, 1}$.", 1),
    (r"\(\boxed{1}\) and \(\boxed{-2}\).", r"$\boxed{2, 1}$.", 0),
    # --- solution-text golds and lists of accepted answers --------------------------------------------
    (r"Thus the sum is $3 + 4 = \boxed{7}$.", r"\boxed{7}", 1),
    (r"Thus the sum is $3 + 4 = \boxed{7}$.", r"\boxed{3}", 0),
    (r"So $x = \boxed{1}$ or $x = \boxed{2}$.", r"\boxed{x = 2 \text{ or } x = 1}", 1),
    (r"So $x = \boxed{1}$ or $x = \boxed{2}$.", r"\boxed{2}", 0),
    ([r"\frac{\pi}{3}", r"60^\circ"], r"\boxed{60^{\circ}}", 1),
    ([r"\frac{\pi}{3}", r"60^\circ"], r"\boxed{\frac{\pi}{3}}", 1),
    ([r"\frac{\pi}{3}", r"60^\circ"], r"\boxed{\frac{\pi}{6}}", 0),
    (["4.5e33", r"4.5 \times 10^{33}"], r"\boxed{45 \times 10^{32}}", 1),
    ([], r"\boxed{5}", 0),
    # --- \{ and \} are escaped braces: a piecewise gold is no empty box ---------------------------------------
    (r"\boxed{C(p) = \left\{ \begin{array}{ll} 2p & p < 1 \\ 3 & p \ge 1 \end{array} \right.}",
     r"\boxed{C(p) = \left\{ \begin{array}{ll} 2p & p < 1 \\ 3 & p \ge 1 \end{array} \right.}", 1),
    (r"\boxed{C(p) = \left\{ \begin{array}{ll} 2p & p < 1 \\ 3 & p \ge 1 \end{array} \right.}",
     r"\boxed{C(p) = \left\{ \begin{array}{ll} 2p & p < 1 \\ 4 & p \ge 1 \end{array} \right.}", 0),
    # --- labelled parts: name = value items against bare values, in order ---------------------------------
    ("45, 2", r"\boxed{k = 45, n = 2}", 1),
    ("45, 2", r"\boxed{k = 2, n = 45}", 0),
    ("2, 45", r"\boxed{k = 45, n = 2}", 0),
    (r"AB = 4,\ CD = 5", r"\boxed{4, 5}", 1),
    (r"AB = 4,\ CD = 5", r"\boxed{5, 4}", 0),
    (r"AB = 4,\ CD = 5", r"\boxed{4}", 0),
    ("x = 1, y = 2", r"\boxed{(1, 2)}", 1),
    ("x = 1, y = 2", r"\boxed{(2, 1)}", 0),
    ("x = 1, y = 2", r"\boxed{[1, 2]}", 0),  # an interval is no pair of values
    ("x = 1, y = 2", r"\boxed{y = 2, x = 1}", 1),
    ("x = 1, y = 2", r"\boxed{x = 2, y = 1}", 0),
    ("x = 1, y = 2", r"\boxed{x = 1, x = 2}", 0),
    (r"\frac{NO}{BO} = \frac{1}{\sqrt{6}}", r"\boxed{\frac{\sqrt6}{6}}", 1),
    (r"\frac{NO}{BO} = \frac{1}{\sqrt{6}}", r"\boxed{\frac{1}{6}}", 0),
    ("|AB| = 5", r"\boxed{5}", 1),
    ("2x + 3y = 6", r"\boxed{6}", 0),  # a left side that is no name gives no value
    ("7 = 11a + c", r"\boxed{11a+c}", 0),
    # --- alternatives in words, semicolons ------------------------------------------------------------
    (r"(11, 7) \text{ or } (7, 11)", r"\boxed{(7,11),\ (11,7)}", 1),
    (r"(11, 7) \text{ or } (7, 11)", r"\boxed{(7,11)}", 0),
    ("(11,7)or(7,11)", r"\boxed{(11, 7), (7, 11)}", 1),
    (r"W(x) = 1 \text{ or } W(x) = -1", r"\boxed{W(x) = -1 \text{ or } W(x) = 1}", 1),
    (r"W(x) = 1 \text{ or } W(x) = -1", r"\boxed{W(x) = 1}", 0),
    (r"2, 3, \text{ and } 4", r"\boxed{4, 3, 2}", 1),
    (r"2, 3, \text{ and } 4", r"\boxed{2, 3, 5}", 0),
    ("-12; -11; -10", r"\boxed{\{-12, -11, -10\}}", 1),
    ("-12; -11; -10", r"\boxed{\{-12, -11\}}", 0),
    ("(0; -2; 6)", r"\boxed{(0, -2, 6)}", 1),
    ("(0; -2; 6)", r"\boxed{(0, 6, -2)}", 0),
    ("p = 5, q = 2; p = 7, q = 2", r"\boxed{(7, 2), (5, 2)}", 1),
    ("p = 5, q = 2; p = 7, q = 2", r"\boxed{(5, 2), (2, 7)}", 0),
    (r"\pm 2021", r"\boxed{{-2021, 2021}}", 1),
    # --- equations without variables are statements ---------------------------------------------------
    (r"\log_6 216 = 3", r"\boxed{\log_{6}216=3}", 1),
    (r"\log_6 216 = 3", r"\boxed{3}", 1),
    (r"\log_6 216 = 3", r"\boxed{\log_6 36 = 3}", 0),
    (r"\log_6 216 = 3", r"\boxed{2}", 0),
    (r"2^{10} = 1024", r"\boxed{1024 = 2^{10}}", 1),
    (r"2^{10} = 1024", r"\boxed{2^{10} = 1000}", 0),
    # --- \approx keeps each item's exact part and never drops later items ------------------------------
    (r"a \approx 0.67, b \approx 2.48", r"\boxed{a \approx 0.67}", 0),
    (r"a \approx 0.67, b \approx 2.48", r"\boxed{a = 0.67, b = 2.48}", 1),
    (r"a \approx 0.67, b \approx 2.48", r"\boxed{a = 0.67, b = 2.84}", 0),
    (r"\frac{2}{3}, \frac{5}{2}", r"\boxed{\frac23 \approx 0.67, \frac52 \approx 2.5}", 1),
    (r"\frac{2}{3}, \frac{5}{2}", r"\boxed{\frac23 \approx 0.67}", 0),
    # --- number bases, thousands with \!, \textnormal, currency and unit glyphs ---------------------------
    ("52_8", r"\boxed{52_{8}}", 1),
    ("52_8", r"\boxed{52_9}", 0),
    ("52_8", r"\boxed{42}", 0),
    ("52_8", r"\boxed{25_8}", 0),
    ("11111100", r"\boxed{11,\!111,\!100}", 1),
    ("11111100", r"\boxed{11,\! 111,\! 100}", 1),
    ("11111100", r"\boxed{1,\!111,\!100}", 0),
    (r"\frac{2469}{20000}", r"\boxed{\frac{2469}{20,\!000}}", 1),
    (r"\frac{2469}{20000}", r"\boxed{\frac{2469}{2,\!000}}", 0),
    ("125", r"The distance is $\boxed{125\textnormal{ miles}}.$", 1),
    ("125", r"\boxed{\textrm{125}}", 1),
    ("125", r"\boxed{\textnormal{152}}", 0),
    (r"\textit{odd}", r"\boxed{\text{odd}}", 1),
    ("1000.99", "\\boxed{1,000.99\u20ac}", 1),
    ("1000.99", "\\boxed{1,000.99 m\u00b2}", 1),
    ("1000.99", "\\boxed{1,000.90\u20ac}", 0),
    # --- more of the language -------------------------------------------------------------------------
    (r"\lfloor \frac{7}{2} \rfloor", r"\boxed{3}", 1),
    (r"\lfloor \frac{7}{2} \rfloor", r"\boxed{4}", 0),
    (r"\lceil \frac{7}{2} \rceil", r"\boxed{4}", 1),
    (r"\left\lfloor \frac{n}{2} \right\rfloor", r"\boxed{\lfloor n/2 \rfloor}", 1),
    (r"\lfloor x \rfloor", r"\boxed{\lceil x \rceil}", 0),
    (r"2\overline{AB}", r"\boxed{\overline{AB} \cdot 2}", 1),
    (r"\bar{z} + z", r"\boxed{z + \bar z}", 1),
    (r"\bar{z} + z", r"\boxed{2z}", 0),
    ("0.3", r"\boxed{0.\overline{3}}", 0),  # repeating decimals are not read
    ("0", r"\boxed{0.\overline{3}}", 0),
    (r"5x^2", "\\boxed{5x\u00b2}", 1),
    ("5", "\\boxed{5x\u00b2}", 0),
    ("5", "\\boxed{5\u00b2}", 0),
    ("f'(x) = 2x", r"\boxed{2x}", 1),
    ("a' + b'", r"\boxed{b' + a'}", 1),
    ("a'", r"\boxed{a}", 0),
    (r"\rho_{0}", r"\boxed{\rho_0}", 1),
    (r"\frac{\rho_0}{2}", r"\boxed{0.5\rho_{0}}", 1),
    (r"2\rho_{0}", r"\boxed{2\rho_1}", 0),
    ("(n-2)2^{n}", r"\boxed{2^n (n-2)}", 1),
    ("(n-2)2^{n}", r"\boxed{(n-2)2^{n+1}}", 0),
    ("(n-2)2^{n}", r"\boxed{n 2^n}", 0),
    (r"\sum_{k=1}^{10} k", r"\boxed{55}", 1),
    (r"\sum_{k=1}^{10} k", r"\boxed{45}", 0),
    (r"\prod_{k=1}^{5} k", r"\boxed{5!}", 1),
    (r"\sum_{k=1}^{3} x^k", r"\boxed{x^3+x^2+x}", 1),
    (r"\sum_{k=1}^{3} a_k", r"\boxed{a_1 + a_2 + a_3}", 1),
    (r"\sum_{k=1}^{3} a_k", r"\boxed{3a_k}", 0),
    (r"\sum_{k=1}^{n} k^2", r"\boxed{\sum_{k=1}^{n} k^{2}}", 1),
    (r"\sum_{k=1}^{n} k^2", r"\boxed{\sum_{k=1}^{n} k^{3}}", 0),
    (r"F_n = \sum_{k=0}^{n-1} F_k F_{n-k-1}", r"\boxed{F_n = \sum_{k=0}^{n-1} F_{n-k-1} F_k}", 1),
    (r"F_n = \sum_{k=0}^{n-1} F_k F_{n-k-1}", r"\boxed{F_n = \sum_{k=0}^{n-2} F_k F_{n-k-2}}", 0),
    (r"\frac{1}{3}", r"\boxed{\\dfrac{1}{3}}", 1),
    (r"\\frac{1}{3}", r"\boxed{\frac{1}{4}}", 0),
    # --- e-notation -----------------------------------------------------------------------------------
    (r"4.5 \times 10^{33}", r"\boxed{4.5e33}", 1),
    ("4.5e33", r"\boxed{4.5 \times 10^{33}}", 1),
    ("4.5e33", r"\boxed{4.5 \times 10^{32}}", 0),
    ("4.5e33", r"\boxed{4.5e-33}", 0),
    ("1e-5", r"\boxed{0.00001}", 1),
    ("1e-5", r"\boxed{e-5}", 0),
    ("e-5", r"\boxed{1e-5}", 0),
    ("3*s**2", r"\boxed{3s^2}", 1),
    ("3*s**2", r"\boxed{3s^3}", 0),
    ("1.2e3", r"\boxed{1200}", 1),
    ("7.5e+33", r"\boxed{7.5 \times 10^{33}}", 1),
    # --- ratios are the number a/b ------------------------------------------------------------------------
    ("3:4", r"\boxed{\frac34}", 1),
    (r"\frac{3}{4}", r"\boxed{3:4}", 1),
    ("3:4", r"\boxed{3 : 4}", 1),
    ("3:4", r"\boxed{4:3}", 0),
    ("3:4", r"\boxed{0.75}", 1),
    (r"V_1 : V_2 = 11 : 21", r"\boxed{11:21}", 1),
    (r"V_1 : V_2 = 11 : 21", r"\boxed{21:11}", 0),
    # --- an interval of a function's values -------------------------------------------------------------
    ("(0, 1)", r"\boxed{0 < f(x) < 1}", 1),
    ("(0, 1)", r"\boxed{0 < f(x) \le 1}", 0),
    # --- LaTeX spacing: Minerva-style formulas (\hbar, \vec, \langle are not parsed: equal up to spacing only) ----
    (r"\frac{\hbar^2}{2m}\frac{d^2\psi}{dx^2}", r"\boxed{\frac {\hbar^2}{2 m} \frac{d^2 \psi}{d x^2}}", 1),
    (r"\frac{\hbar^2}{2m}\frac{d^2\psi}{dx^2}", r"\boxed{\frac{\hbar^2}{m} \frac{d^2 \psi}{d x^2}}", 0),
    (r"\hbar\omega", r"\boxed{\hbar \omega}", 1),
    (r"\hbar\omega", r"\boxed{\hbar \Omega}", 0),
    (r"\hbar\omega", r"\boxed{\hbar\omega^2}", 0),
    (r"\vec{F}=q\vec{v}\times\vec{B}", r"\boxed{\vec{F} = q \vec{v} \times \vec{B}}", 1),
    (r"\vec{F}=q\vec{v}\times\vec{B}", r"\boxed{\vec{F} = q \vec{B} \times \vec{v}}", 0),
    (r"\langle x \rangle = \frac{L}{2}", r"\boxed{\langle x\rangle=\frac{L}{2}}", 1),
    (r"\langle x \rangle = \frac{L}{2}", r"\boxed{\langle x\rangle=\frac{L}{3}}", 0),
    (r"\hbar \alpha b", r"\boxed{\hbar\alpha b}", 1),
    (r"\hbar \alpha b", r"\boxed{\hbar\alphab}", 0),  # a space that ends a command is no spacing
    (r"\hbar y \cdot x", r"\boxed{\hbar y\cdotx}", 0),
    (r"\hbar \cdot 1 2", r"\boxed{\hbar\cdot 12}", 0),  # nor is one between digits
    (r"\hbar \sin x", r"\boxed{\hbar\sinh x}", 0),
    (r"\cos \theta", r"\boxed{\cos\theta}", 1),
    (r"\cos\theta", r"\boxed{\cos \phi}", 0),
    (r"2 x", r"\boxed{2x+1}", 0),
    (r"x\cdot\mathrm{s}^{-1}", r"\boxed{x \cdot \mathrm{s}^{-1}}", 1),  # \cdot\mathrm{s} is no \cdots
    (r"x\cdot\mathrm{s}^{-1}", r"\boxed{x \cdot \mathrm{s}^{-2}}", 0),
    (r"\alpha b \text{ where } b > 0", r"\boxed{\alpha b\ \text{where}\ b>0}", 1),  # text: commands are tokens
    (r"\alpha b \text{ where } b > 0", r"\boxed{\alphab \text{ where } b > 0}", 0),
    (r"\Delta E_n \text{ grows with } n", r"\boxed{\Delta E_n\text{ grows with }n}", 1),
    (r"\Delta E_n \text{ grows with } n", r"\boxed{\delta E_n \text{ grows with } n}", 0),  # a command's case
    # --- golds in words: alternatives accepted, approximations dropped (the gold only) ----------------------
    ("C(10, 5), or equivalently 252", r"\boxed{252}", 1),
    ("C(10, 5), or equivalently 252", r"\boxed{\binom{10}{5}}", 1),
    ("C(10, 5), or equivalently 252", r"\boxed{C(10, 5)}", 1),
    ("C(10, 5), or equivalently 252", r"\boxed{253}", 0),
    ("C(10, 5), or equivalently 252", r"\boxed{\binom{10}{6}}", 0),
    ("5/14, or approximately 35.7%", r"\boxed{\frac{5}{14}}", 1),
    ("5/14, or approximately 35.7%", r"\boxed{35.7}", 0),
    ("5/14, or approximately 35.7%", r"\boxed{35.7\%}", 0),
    ("5/14, or approximately 35.7%", r"\boxed{0.357}", 0),
    ("5/14, or approximately 35.7%", r"\boxed{\frac{5}{13}}", 0),
    ("100 (i.e., all values)", r"\boxed{100}", 1),
    ("100 (i.e., all values)", r"\boxed{\text{all values}}", 1),
    ("100 (i.e., all values)", r"\boxed{99}", 0),
    ("100 (i.e., all values)", r"\boxed{\text{all}}", 0),
    (r"\frac{1}{2} (equivalently 50\%)", r"\boxed{50\%}", 1),
    (r"\frac{1}{2} (equivalently 50\%)", r"\boxed{0.5}", 1),
    (r"\frac{1}{2} (equivalently 50\%)", r"\boxed{0.05}", 0),
    ("rotate about 90 degrees", r"\boxed{\text{Rotate about 90 degrees}}", 1),  # words stay whole
    ("rotate about 90 degrees", r"\boxed{90}", 0),
    ("252", r"\boxed{253, or equivalently 252}", 0),  # a model's answer is never split
    ("252", r"\boxed{253 (i.e., 252)}", 0),
]


@pytest.mark.parametrize("gold,completion,expected", CASES)
def test_reward_table(gold, completion, expected):
    assert tg.reward(completion, gold) == expected


def test_table_is_large_and_balanced():
    assert len(CASES) >= 400
    assert sum(e == 0 for _, _, e in CASES) >= 150


@pytest.mark.parametrize("text,expected", [
    (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{a} then \fbox{b}", "b"),
    (r"\boxed{\left\{ x \right\}} text after", r"\left\{ x \right\}"),
    (r"\boxed{C(p) = \left\{ 2p \right.}", r"C(p) = \left\{ 2p \right."),  # \{ is no brace
    (r"$\boxed 7$", "7"),
    (r"\boxed{unclosed", None),
    (r"\boxed{1} and \boxed{2", None),  # a truncated last box: no answer
    ("no box here", None),
    (r"\boxed{1}, \boxed{2},\quad\text{and}\quad \boxed{3}.", "1, 2, 3"),
    (r"$x_1 = \boxed{1}$ \text{ or } $x_2 = \boxed{2}$", "1, 2"),
    (r"\boxed{1} (the first part). Then the second part is \boxed{2}", "2"),
    (r"\boxed{\boxed{12}}", "12"),
])
def test_final_answer(text, expected):
    assert tg.final_answer(text) == expected


INJECTIONS = [
    "__import__('os').system('touch {m}')",
    "lambda: __import__('os').system('touch {m}')",
    "().__class__.__bases__[0].__subclasses__()",
    "x.__class__.__mro__",
    "eval(\"__import__('os').system('touch {m}')\")",
    "exec('import os; os.system(\"touch {m}\")')",
    "open('{m}', 'w').write('x')",
    "Symbol('x').__init__.__globals__",
    r"\text{{__import__('os').system('touch {m}')}}",
    "x + __import__('os').system('touch {m}')",
    r"\sum_{{k=1}}^{{3}} __import__('os').system('touch {m}')",
    r"1}} \quad\text{{and}}\quad \boxed{{__import__('os').system('touch {m}')",  # a second, joined box
    r"52_{{__import__('os').system('touch {m}')}}",
    r"1e5; __import__('os').system('touch {m}')",
    r"\overline{{__import__('os')}} : \lfloor exec('touch {m}') \rfloor",
]


@pytest.mark.parametrize("code", INJECTIONS)
def test_boxed_python_executes_nothing(code, tmp_path):
    marker = tmp_path / "pwned"
    payload = code.format(m=marker)
    for gold in ("0", "5", "x"):
        assert tg.reward(r"\boxed{" + payload + "}", gold) == 0.0
    assert not marker.exists()


PATHOLOGICAL = [
    (r"\boxed{9^{9^{9^9}}}", "1"),
    (r"\boxed{10000!}", "10000!"),
    (r"\boxed{10000!}", "9999!"),
    (r"\boxed{(10^{1000})!}", "1"),
    (r"\boxed{\binom{10^{100}}{10^{99}}}", "1"),
    ("\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "1"),
    ("\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}", "1"),
    ("\\boxed{" + "-" * 900 + "1}", "1"),
    ("\\boxed{" + "\\frac{1}{" * 150 + "2" + "}" * 150 + "}", "1"),
    ("x" * 1_000_000 + r"\boxed{5}", "5"),
    ("\\boxed{" + "1+" * 500_000 + "1}", "1"),
    ("\\boxed{" + "\\boxed{" * 10_000, "1"),
    ("\\boxed{" + "".join(rf"\sqrt{{{p}}}" for p in range(10**15, 10**15 + 40)) + "}", "1"),
    (r"\boxed{\sqrt{" + "7" * 150 + "}}", r"\sqrt{" + "7" * 150 + "}+1"),
    (r"\boxed{\log(10^{20000})}", "1"),
    (r"\boxed{\sin(10^{20000})}", "0"),
    (r"\boxed{x^{x^{x^{x^{x^{x}}}}}}", "x^{x^{x^{x^{x^{x}}}}}+1"),
    (r"\boxed{e^{e^{e^{e^{e^{x}}}}}}", "e^{e^{e^{e^{e^{x}}}}}+1"),
    (r"\boxed{(x+y+z+1)^{10000}}", "(x+y+z+1)^{9999}"),
    (r"\boxed{2^{2^{2^{2^{2}}}}}", "2^{65536}+1"),
    ("\\boxed{" + ", ".join(f"x+{i}" for i in range(120)) + "}", ", ".join(f"x+{i}" for i in range(1, 121))),
    ("\\boxed{5 " + "ab " * 300 + "!}", "5"),
    (r"\boxed{\sum_{k=1}^{10^{100}} k^{k^{k}}}", "1"),  # huge bounds: kept as a sum, never evaluated
    (r"\boxed{\sum_{k=1}^{999} k^{k^{k}}}", "1"),  # each term through the same size caps
    (r"\boxed{\prod_{k=1}^{999} k^{999}}", "1"),
    (r"\boxed{\sum_{i=1}^{999}\sum_{j=1}^{999}\sum_{k=1}^{999} i j k}", "1"),  # 10^9 terms: the deadline
    ("\\boxed{" + "9" * 400 + "_{" + "7" * 400 + "}}", "9" * 400 + "_{" + "7" * 399 + "}"),  # a huge base
    (r"\boxed{1e99999999}", "1e99999998"),  # e-notation with a huge exponent
    ("\\boxed{1e" + "9" * 5000 + "}", "1"),
    (r"\boxed{4.5e10000}", "4.5e9999"),
    ("\\boxed{1}, " * 100_000 + "\\boxed{2}", "1, 2"),  # 100,001 joined boxes
    (r"\boxed{\lfloor 10^{9999} \pi \rfloor}", "1"),
    ("\\boxed{" + "\\lfloor " * 300 + "1" + " \\rfloor" * 300 + "}", "1"),
    ("\\boxed{" + ":".join(["1"] * 400) + "}", "1"),
    ("\\boxed{" + "; ".join(["(1; 2)"] * 150) + "}", "(1, 2)"),
    ("\\boxed{1} and " * 30 + "\\boxed{" + "(" * 300, "1"),
    (("\\boxed{1}" + " and" * 48 + " x" + "\\boxed{2}") * 50, "1, 2"),  # separators that backtrack exponentially
]


@pytest.mark.parametrize("completion,gold", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_inputs_return_fast(completion, gold):
    t = time.monotonic()
    r = tg.reward(completion, gold)
    assert r in (0.0, 1.0)
    assert time.monotonic() - t < 2.0


def test_a_stalled_machine_costs_no_reward(monkeypatch):
    # the budget is the thread's CPU time: a wall clock that leaps 10 s at every read (a loaded CI machine, a GC
    # pause in another thread, a suspended process) leaves a right answer right; CPU spent in the check still counts
    wall = iter(range(0, 10**9, 10))
    monkeypatch.setattr(tg.time, "monotonic", lambda: float(next(wall)))
    assert tg.reward(r"\boxed{\ln 4}", "2\\ln 2") == 1.0
    # nor does the garbage collector: a full pass over a big process's heap (here 50 ms of CPU at every allocation
    # of a few objects) is held off while the check runs, and switched back on after it
    def slow_pass(phase, info):
        t = time.thread_time()
        while phase == "start" and time.thread_time() - t < 0.05:
            pass
    threshold = gc.get_threshold()
    gc.callbacks.append(slow_pass)
    try:
        gc.set_threshold(5)
        assert tg.reward(r"\boxed{\ln 4}", "2\\ln 2") == 1.0
        assert gc.isenabled()
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(slow_pass)
    monkeypatch.setattr(tg, "TIME_BUDGET", -1.0)  # a spent budget: even a right answer is "out of time", 0
    assert tg.reward(r"\boxed{\ln 4}", "2\\ln 2") == 0.0


def test_worker_thread():
    out = {}
    def work():
        t = time.monotonic()
        out["r"] = [tg.reward(c, g) for c, g in PATHOLOGICAL[:3] + [(r"\boxed{\frac{1}{2}}", "0.5")]]
        out["dt"] = time.monotonic() - t
    th = threading.Thread(target=work)
    th.start()
    th.join(timeout=30)
    assert out["r"][-1] == 1.0 and out["dt"] < 8.0


def test_no_exception_escapes():
    for bad in [None, 5, b"\\boxed{5}", object()]:
        assert tg.reward(bad, "5") == 0.0
        assert tg.reward(r"\boxed{5}", bad) == 0.0

# ------------------------------------------------------------------------------------------------------------------
# eval.py (after every section of tandem_grpo.py): pass@k, bootstrap intervals, CE and KL, handoff schedules

def eos_of(tok):
    return tg.eos_ids(tok)

def eval_args(**kw):
    a = ev.get_args(["--senior", "x", "--data", str(tg.DEMO_DIR / "test.jsonl"), "--device", "cpu"])
    small = dict(n=4, max_new_tokens=24, batch=16, tf_batch=8, temperature=1.0, top_k=0, top_p=1.0)
    for k, v in {**small, **kw}.items():
        setattr(a, k, v)
    return a

class Boost(torch.nn.Module):
    """An output layer that adds `by` to the logits of `ids` (to make a tiny random model write blank lines)."""
    def __init__(self, head, ids, by):
        super().__init__()
        self.head, self.ids, self.by = head, ids, by
    def forward(self, h):
        out = self.head(h)
        out[..., self.ids] += self.by
        return out

class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits are the same vector w at every position: h = 1, logits = w h."""
    def __init__(self, w):
        super().__init__()
        self.head = torch.nn.Linear(1, len(w), bias=False)
        self.head.weight.data = w[:, None].clone()
    def get_decoder(self):
        return lambda input_ids, **kw: SimpleNamespace(last_hidden_state=torch.ones(*input_ids.shape, 1))
    def get_output_embeddings(self):
        return self.head

# ------------------------------------------------------------------------------------------------------------------
# statistics

def test_pass_at_k_hand_values():
    assert ev.pass_at_k(8, 3, 1) == pytest.approx(0.375)                      # c / n
    assert ev.pass_at_k(8, 3, 2) == pytest.approx(1 - 10 / 28)                # C(5,2) / C(8,2)
    assert ev.pass_at_k(8, 3, 4) == pytest.approx(1 - math.comb(5, 4) / math.comb(8, 4))  # 1 - 5/70
    assert ev.pass_at_k(8, 3, 8) == 1.0 and ev.pass_at_k(8, 5, 4) == 1.0      # k > n - c: a correct one is drawn
    assert ev.pass_at_k(8, 0, 4) == 0.0 and ev.pass_at_k(8, 8, 1) == 1.0
    assert ev.ks_for(8) == [1, 2, 4, 8] and ev.ks_for(6) == [1, 2, 4, 6] and ev.ks_for(1) == [1]

def test_bootstrap_contains_estimate_and_narrows():
    few = torch.tensor([1.0] * 6 + [0.0] * 14)                # 20 problems, mean 0.3
    many = few.repeat(100)                                    # 2000 problems, same mean
    lo1, hi1 = ev.bootstrap_ci([few])
    lo2, hi2 = ev.bootstrap_ci([many])
    assert lo1 < 0.3 < hi1 and lo2 < 0.3 < hi2
    # the normal approximation: width = 2 * 1.96 * sqrt(0.3 * 0.7 / n)
    assert hi1 - lo1 == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 20), rel=0.15)
    assert hi2 - lo2 == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 2000), rel=0.1)
    # macro over two files: the interval of (mean_1 + mean_2) / 2; a file without variance adds none
    lo3, hi3 = ev.bootstrap_ci([many, torch.ones(50)])
    assert (lo3, hi3) == pytest.approx(((lo2 + 1) / 2, (hi2 + 1) / 2), abs=0.01)
    assert ev.bootstrap_ci([torch.full((30,), 0.25)]) == pytest.approx((0.25, 0.25))

def fake_file(rewards_by_problem, legibility=None):
    """An evaluate() result whose three schedules share the given rewards; solo samples carry the given legibility."""
    res = {}
    for sch in ev.SCHEDULES:
        res[sch] = [[dict(reward=r, length=10, senior_tokens=5, truncated=False) for r in rs]
                    for rs in rewards_by_problem]
    for i, x in enumerate(x for s in res["solo"] for x in s):
        x.update(legibility=legibility[i] if legibility else 1.0, self_ce=0.5, drift=0.1)
    return res

def test_metrics_macro_and_paired_by_problem():
    a = eval_args(n=2)
    f1 = fake_file([[1, 0], [0, 0]], legibility=[1, 3, 1, 3])   # pass@1 per problem 0.5, 0 -> 0.25
    f2 = fake_file([[1, 1], [1, 1], [1, 1], [1, 1]], legibility=[4] * 8)
    m = ev.metrics([f1, f2], a)
    assert m["solo pass@1"][0] == pytest.approx((0.25 + 1) / 2)  # macro: files weigh equally, not problems
    assert m["solo pass@2"][0] == pytest.approx((0.5 + 1) / 2)   # problem 1 of f1: 1 - C(1,2)/C(2,2) = 1
    assert m["legibility"] == pytest.approx((2 + 4) / 2)         # per response, per file, then macro
    assert m["step/solo pass@2"] == pytest.approx(1.0) and m["word share"] == pytest.approx(0.5)
    # paired by problem: b is a plus 1/2 on every problem -> the difference is exactly 1/2, with a zero-width interval
    b = fake_file([[1, 1], [1, 0]])
    d = ev.paired([b], [f1], a)
    assert d["solo pass@1"] == pytest.approx([0.5, 0.5, 0.5])
    lo, hi = ev.metrics([f1], a)["solo pass@1"][1:]
    assert hi - lo > 0.4  # unpaired, each senior's own interval is wide

# ------------------------------------------------------------------------------------------------------------------
# legibility and drift

def test_cross_entropy_and_kl_hand_values(tok):
    V, a, b = len(tok), 7, 9
    wide = torch.full((V + 24,), 50.0)        # ids past the tokenizer get huge logits: they must be cut
    w_s, w_j = wide.clone(), wide.clone()
    w_s[:V], w_j[:V] = 0.0, 0.0
    w_s[a] = math.log(3)                       # senior p: 3/(V+2) on a, 1/(V+2) elsewhere; junior q: uniform 1/V
    s, j = FixedLogits(w_s), FixedLogits(w_j)
    s.parameters = j.parameters = lambda: iter([torch.zeros(1)])
    pairs = [([1, 2, 3], [a, b, b]), ([4, 5], [b])]
    out = ev.teacher_forced(s, j, pairs, V, tok.pad_token_id, batch=2)
    kl = 3 / (V + 2) * math.log(3 * V / (V + 2)) + (V - 1) / (V + 2) * math.log(V / (V + 2))
    ce_s = [(math.log((V + 2) / 3) + 2 * math.log(V + 2)) / 3, math.log(V + 2)]   # averaged per response
    for (leg, self_ce, drift), ce in zip(out, ce_s):
        assert leg == pytest.approx(math.log(V), rel=1e-5)
        assert self_ce == pytest.approx(ce, rel=1e-5)
        # float32: log p - log q cancels (|log p| ~ 5.9, the difference ~ 0.006), so each term keeps
        # ~1e-4 of its relative precision, and the 354 equal terms err alike
        assert drift == pytest.approx(kl, rel=1e-3)

def test_teacher_forced_matches_unpadded_forward(tok):
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    torch.manual_seed(0)
    g = tg.tandem_generate(s, None, prompts(tok, 3), eos_ids=tg.eos_ids(tok), pad_id=tok.pad_token_id,
                           n_vocab=len(tok), schedule="solo", max_new_tokens=12, temperature=1.0)
    pairs = [(p, g["tokens"][i][g["mask"][i]].tolist()) for i, p in enumerate(prompts(tok, 3))]
    out = ev.teacher_forced(s, j, pairs, len(tok), tok.pad_token_id, batch=3)
    for (p, r), (leg, self_ce, drift) in zip(pairs, out):  # reference: each row alone, full forward, then cut
        seq = torch.tensor([p + r])
        logp = s(seq).logits[0, len(p) - 1:-1, :len(tok)].log_softmax(-1)
        logq = j(seq).logits[0, len(p) - 1:-1, :len(tok)].log_softmax(-1)
        y = torch.tensor(r)[:, None]
        assert leg == pytest.approx(-logq.gather(1, y).mean().item(), rel=1e-5)
        assert self_ce == pytest.approx(-logp.gather(1, y).mean().item(), rel=1e-5)
        ref = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1).mean().item()
        assert drift == pytest.approx(ref, rel=1e-4) and drift > 0

def test_teacher_forced_scores_under_autocast(tok, monkeypatch):
    """Scoring runs under tandem_grpo's autocast: bf16 matmuls on CUDA (the authors score with bf16 weights), float32
    on CPU. Simulated here with CPU bf16 autocast: legibility equals a bf16-autocast reference forward, and moves away
    from the float32 value."""
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    with torch.no_grad():
        j.lm_head.weight.mul_(30)  # sharp logits: bf16 rounding shows in the cross-entropy
    torch.manual_seed(0)
    g = tg.tandem_generate(s, None, prompts(tok, 3), eos_ids=tg.eos_ids(tok), pad_id=tok.pad_token_id,
                           n_vocab=len(tok), schedule="solo", max_new_tokens=12, temperature=1.0)
    pairs = [(p, g["tokens"][i][g["mask"][i]].tolist()) for i, p in enumerate(prompts(tok, 3))]
    f32 = ev.teacher_forced(s, j, pairs, len(tok), tok.pad_token_id, batch=3)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    monkeypatch.setattr(ev, "autocast", lambda device: bf16())
    out = ev.teacher_forced(s, j, pairs, len(tok), tok.pad_token_id, batch=1)
    for (p, r), (leg, _, _), (leg32, _, _) in zip(pairs, out, f32):
        with torch.no_grad(), bf16():
            logq = j(torch.tensor([p + r])).logits[0, len(p) - 1:-1, :len(tok)].float().log_softmax(-1)
        ref = -logq.gather(1, torch.tensor(r)[:, None]).mean().item()
        assert leg == pytest.approx(ref, rel=1e-3) and abs(leg - leg32) > 10 * abs(leg - ref)

def test_chain_of_thought_drops_eos_and_leaves_long_chains_out():
    assert ev.chain_of_thought(10, [5, 6, 7], truncated=False) == [5, 6]    # the end-of-turn token is not read
    assert ev.chain_of_thought(10, [5, 6, 7], truncated=True) == [5, 6, 7]  # cut: there is no end-of-turn token
    assert ev.chain_of_thought(10, [7], truncated=False) is None            # nothing left to read
    assert ev.chain_of_thought(88, list(range(4000)), truncated=True) is None       # prompt + chain 4,088: left out
    assert len(ev.chain_of_thought(88, list(range(4000)), truncated=False)) == 3999  # 4,087 after the EOS: kept

def test_legibility_is_the_junior_ce_without_eos(tok, monkeypatch):
    """A scripted senior writes `right` then EOS; legibility must be the junior's mean CE over `right` alone."""
    right = tok("The answer is \\boxed{46}.", add_special_tokens=False).input_ids
    probs = [{"problem": "What is 12 + 34?", "answer": "46"}]
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    p = tg.prompt_ids(tok, probs[0]["problem"])
    logq = j(torch.tensor([p + right + [tok.eos_token_id]])).logits[0, len(p) - 1:-1, :len(tok)].log_softmax(-1)
    ce = -logq.gather(1, torch.tensor(right + [tok.eos_token_id])[:, None])[:, 0]   # [len(right) + 1]
    ws, se, a = tg.word_start_mask(tok), tg.step_end_mask(tok), eval_args(n=1, max_new_tokens=len(right) + 1)
    for limit, kept in ((len(p) + len(right) + 1, True), (len(p) + len(right), False)):  # prompt + chain >= limit: out
        monkeypatch.setattr(ev, "LEGIBILITY_MAX", limit)
        s.lm_head = Script(right + [tok.eos_token_id], s.config.vocab_size)
        res = ev.evaluate(s, j, tok, probs, a, ws, se, eos_of(tok))
        x, m = res["solo"][0][0], ev.metrics([res], a)
        assert x["length"] == len(right) + 1 and not x["truncated"]
        if kept:
            assert x["legibility"] == pytest.approx(ce[:-1].mean().item(), rel=1e-5)
            assert x["legibility"] != pytest.approx(ce.mean().item(), rel=1e-3)   # with the EOS it would differ
            assert x["self_ce"] == pytest.approx(math.log(len(tok)), rel=1e-5)     # the script is uniform after
            assert m["legibility"] == x["legibility"] and m["left out"] == 0
        else:
            assert x["legibility"] is x["drift"] is x["self_ce"] is None
            assert m["legibility"] is None and m["left out"] == 1

# ------------------------------------------------------------------------------------------------------------------
# schedules and budgets

def test_budget():
    assert ev.budget(100, 3000, "step") == 3000 == ev.budget(100, 3000, "solo")
    assert ev.budget(1500, 3000, "step") == 4096 - 1500 - 8    # the authors' handoff loop keeps 8 tokens spare
    assert ev.budget(1500, 3000, "solo") == 4096 - 1500 == ev.budget(1500, 3000, "word")  # the engine's window
    assert ev.budget(5000, 3000, "step") == 0 == ev.budget(5000, 3000, "solo")

@pytest.fixture(scope="module")
def merged_tok():
    """BPE without a pre-split: merges cross blank lines, so one token can hold a blank line and more text
    ('isĠ6.ĊĊTheĠanswerĠ'), and a text re-tokenizes into other ids than the ones sampled ('.', 'Ċ', 'Ċ' -> '.ĊĊ')."""
    return bpe_tok(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))

class Reads(Counting):
    """Wraps a model's body to record the ids of every prefill (a forward over more than one position)."""
    def __init__(self, model):
        super().__init__(model)
        self.prefills = []
    def get_decoder(self):
        body = self.m.get_decoder()
        def run(input_ids, **kw):
            if input_ids.shape[1] > 1:
                self.prefills.append(input_ids[kw["attention_mask"].bool()].tolist())  # one row: its ids, unpadded
            return body(input_ids=input_ids, **kw)
        return run

def handoff_reference(models_, tok, prompt_text, budget, max_turns, eos):
    """The authors' loop (eval/handoff.py) on text, one chain, greedy, full forwards without a cache: turn t's model
    (t % 2, the senior first) reads tok(prompt + text) and writes until its turn's text holds a blank line (kept up to
    and including it), EOS, or the budget, counted in sampled tokens. -> text, turns, sampled per turn, truncated,
    and whether a re-tokenized prefix ever differed from the prompt + the ids sampled so far."""
    text, turns, sampled, all_ids, differed = "", [], [], tok(prompt_text, add_special_tokens=False).input_ids, False
    for t in range(max_turns):
        ids = tok(prompt_text + text, add_special_tokens=False).input_ids
        differed |= ids != all_ids
        new, seg = [], ""
        while "\n\n" not in seg and (not new or new[-1] not in eos) and len(new) < max(1, budget - sum(sampled)):
            m = models_[t % 2]
            new.append(int(m(torch.tensor([ids + new])).logits[0, -1, :len(tok)].argmax()))
            seg = tok.decode(new, skip_special_tokens=True)
        all_ids = ids + new
        stop = "\n\n" in seg
        seg = seg[:seg.index("\n\n") + 2] if stop else seg
        text, turns, sampled = text + seg, turns + [seg], sampled + [len(new)]
        if not stop or sum(sampled) >= budget:
            return text, turns, sampled, new[-1] not in eos or stop, differed
    return text, turns, sampled, True, differed

def test_step_handoff_by_hand_on_merged_tokens(merged_tok):
    """Scripted turns on a tokenizer whose tokens cross blank lines. The senior writes 'We add ' and one token
    'is 6.\n\nThe answer ': its turn keeps 'We add is 6.\n\n' (what follows the blank line is dropped, its tokens
    still count). The junior reads that text re-tokenized and writes '4', '.', '\n', '\n' (a blank line of two
    tokens). The senior reads both turns re-tokenized ('.ĊĊ' where '.', 'Ċ', 'Ċ' were sampled), then
    writes \\boxed{46} and EOS."""
    tok = merged_tok
    enc = lambda x: tok(x, add_special_tokens=False).input_ids
    v = tok.get_vocab()
    we, big, boxed = enc("We add "), v["isĠ6.ĊĊTheĠanswerĠ"], enc("\\boxed{46}")
    s, j = Reads(tiny_model(tok, seed=0)), Reads(tiny_model(tok, seed=1))
    s.m.lm_head = Script(we + [big] + boxed + [tok.eos_token_id], s.config.vocab_size)
    j.m.lm_head = Script([v["4"], v["."], v["Ċ"], v["Ċ"]], j.config.vocab_size)
    prompt = tg.prompt_ids(tok, "What is 12 + 34?", as_text=True)
    x = ev.step_handoff(s, j, tok, [prompt], [100], eval_args(max_turns=300), tg.step_end_mask(tok),
                        eos_of(tok))[0]
    turns = ["We add is 6.\n\n", "4.\n\n", "\\boxed{46}"]
    assert x == dict(text="".join(turns), turns=turns, truncated=False,
                     authors="s" * (len(we) + 1) + "jjjj" + "s" * (len(boxed) + 1))
    assert s.prefills == [enc(prompt), enc(prompt + turns[0] + turns[1])] and j.prefills == [enc(prompt + turns[0])]
    assert s.prefills[1][-2:] == [v["4"], v[".ĊĊ"]] and big not in j.prefills[0]  # re-tokenized, not as sampled
    # the budget counts sampled tokens: 5 ends the chain inside the junior's turn ('4.\n' of its 4), truncated
    s.m.lm_head = Script(we + [big] + boxed + [tok.eos_token_id], s.config.vocab_size)
    j.m.lm_head = Script([v["4"], v["."], v["Ċ"], v["Ċ"]], j.config.vocab_size)
    x = ev.step_handoff(s, j, tok, [prompt], [len(we) + 1 + 3], eval_args(max_turns=300), tg.step_end_mask(tok),
                        eos_of(tok))[0]
    assert x == dict(text="We add is 6.\n\n4.\n", turns=["We add is 6.\n\n", "4.\n"], truncated=True,
                     authors="s" * (len(we) + 1) + "jjj")
    # at most max_turns turns: the chain ends after the junior's blank line, truncated (graded as it is)
    s.m.lm_head = Script(we + [big] + boxed + [tok.eos_token_id], s.config.vocab_size)
    j.m.lm_head = Script([v["4"], v["."], v["Ċ"], v["Ċ"]], j.config.vocab_size)
    x = ev.step_handoff(s, j, tok, [prompt], [100], eval_args(max_turns=2), tg.step_end_mask(tok), eos_of(tok))[0]
    assert (x["text"], x["truncated"], len(x["turns"])) == ("We add is 6.\n\n4.\n\n", True, 2)

@pytest.mark.parametrize("max_turns", [300, 3])
def test_step_handoff_batched_equals_text_reference(merged_tok, max_turns):
    """Greedy tiny models (sharpened, and made to write blank lines, '.' and EOS), 6 rows with their own budgets in one
    batch: every chain (text, turns, tokens sampled per turn, truncation) equals the one-chain text-level reference;
    chains end at EOS, at the budget and (max_turns 3) at the turn cap, and some turn read a re-tokenized prefix that
    differs from the ids sampled."""
    tok = merged_tok
    v = tok.get_vocab()
    boost = [i for t, i in v.items() if "ĊĊ" in t] + [v["Ċ"], v["."], tok.eos_token_id]
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    with torch.no_grad():
        s.lm_head.weight.mul_(20), j.lm_head.weight.mul_(20)  # turns of several tokens that depend on what was read
    s.lm_head, j.lm_head = Boost(s.lm_head, boost, 3.0), Boost(j.lm_head, boost, 3.0)
    texts = [tg.prompt_ids(tok, q, as_text=True) for q in ["What is 12 + 34?", "Add 1 and 3.", "What is 4?"]] * 2
    budgets = [60, 60, 60, 7, 25, 1]
    xs = ev.step_handoff(s, j, tok, texts, budgets, eval_args(max_turns=max_turns, temperature=0),
                         tg.step_end_mask(tok), eos_of(tok))
    differed = False
    for x, text, b in zip(xs, texts, budgets):
        ref, turns, sampled, truncated, d = handoff_reference([s, j], tok, text, b, max_turns, eos_of(tok))
        differed |= d
        assert (x["text"], x["turns"], x["truncated"]) == (ref, turns, truncated)
        assert x["authors"] == "".join("sj"[t % 2] * n for t, n in enumerate(sampled))
        assert len(x["authors"]) <= max(1, b)
    assert differed and max(len(x["turns"]) for x in xs) >= 3 and max(max(map(len, x["turns"])) for x in xs) > 10
    assert {x["truncated"] for x in xs} == ({True, False} if max_turns == 300 else {True})

def test_handoff_with_p_senior_one_equals_solo(tok):
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    probs = [{"problem": "What is 12 + 34?", "answer": "46"}, {"problem": "Add 1 and 3.", "answer": "4"}]
    a = eval_args(p_senior=1.0)
    ws = tg.word_start_mask(tok)
    solo = ev.sample_responses(s, j, tok, probs, "solo", a, ws, None, eos_of(tok))
    word = ev.sample_responses(s, j, tok, probs, "word", a, ws, None, eos_of(tok))
    assert len(solo) == 2 and all(len(x) == 4 for x in solo)  # n samples per problem
    for xs, ys in zip(solo, word):
        for x, y in zip(xs, ys):
            for key in ("text", "reward", "length", "truncated"):
                assert x[key] == y[key]
            assert y["senior_tokens"] == y["length"] and y["authors"] == "s" * y["length"]
    assert len({x["text"] for xs in solo for x in xs}) > 1     # sampled, not one repeated string

class Script(torch.nn.Module):
    """An output layer that writes the given ids one after another, whatever the hidden state; then uniform logits."""
    def __init__(self, ids, width):
        super().__init__()
        self.ids, self.width = iter(ids), width
    def forward(self, h):
        nxt = next(self.ids, None)
        out = torch.full((h.shape[0], self.width), 0.0 if nxt is None else -1e4)
        if nxt is not None:
            out[:, nxt] = 0.0
        return out

def test_truncated_response_graded_or_zero(tok, monkeypatch):
    """A scripted senior writes \\boxed{46} then EOS. When the budget cuts the EOS the response is truncated: graded as
    it is by default (reward 1, the authors' rule), 0 with --truncated-reward zero."""
    right = tok("\\boxed{46}", add_special_tokens=False).input_ids
    probs = [{"problem": "What is 12 + 34?", "answer": "46"}, {"problem": "12 + 34?", "answer": "46"}]
    s, j = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    for budget, rule, score in ((len(right) + 1, "zero", 1.0), (len(right), "grade", 1.0), (len(right), "zero", 0.0)):
        s.lm_head = Script(right + [tok.eos_token_id], s.config.vocab_size)
        a = eval_args(n=1, max_new_tokens=budget, truncated_reward=rule)
        x = ev.sample_responses(s, None, tok, probs[:1], "solo", a, None, None, eos_of(tok))[0][0]
        assert (x["text"], x["reward"], x["truncated"]) == ("\\boxed{46}", score, budget == len(right))
    # handoff: each row's own budget 4096 - prompt - 8; shrink the window so that the longer prompt's EOS falls
    # one token past its budget while the shorter prompt's fits (both rows run in one batch to the larger budget)
    n_long = len(tg.prompt_ids(tok, probs[0]["problem"]))
    assert len(tg.prompt_ids(tok, probs[1]["problem"])) < n_long
    monkeypatch.setattr(ev, "CONTEXT", n_long + 8 + len(right))
    s.lm_head = Script(right + [tok.eos_token_id], s.config.vocab_size)
    a = eval_args(n=1, max_new_tokens=100, truncated_reward="zero")
    long, short = ev.sample_responses(s, j, tok, probs, "step", a, None, tg.step_end_mask(tok), eos_of(tok))
    assert long[0]["text"] == short[0]["text"] == "\\boxed{46}"
    assert (long[0]["reward"], long[0]["truncated"], long[0]["length"]) == (0.0, True, len(right))
    assert (short[0]["reward"], short[0]["truncated"], short[0]["length"]) == (1.0, False, len(right) + 1)
    assert long[0]["authors"] == "s" * len(right) and short[0]["authors"] == "s" * (len(right) + 1)  # one step

# ------------------------------------------------------------------------------------------------------------------
# the whole script

def test_main_end_to_end(tmp_path, tok, capsys):
    for seed in (0, 1):
        tiny_model(tok, seed=seed).save_pretrained(tmp_path / f"m{seed}")
        tok.save_pretrained(tmp_path / f"m{seed}")
    for name, rows in (("a.jsonl", 3), ("b.jsonl", 2)):
        (tmp_path / name).write_text("\n".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1)})
                                               for i in range(rows)))
    argv = ["--senior", str(tmp_path / "m0"), "--senior", str(tmp_path / "m1"), "--junior", str(tmp_path / "m0"),
            "--data", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--n", "2", "--max-new-tokens", "8",
            "--batch", "4", "--device", "cpu", "--out", str(tmp_path / "r1.json")]
    rep = ev.main(ev.get_args(argv))
    out = capsys.readouterr().out
    names = list(rep["seniors"])
    assert len(names) == 2 and all(n in out for n in names) and "macro" in out and f"{names[1]} - {names[0]}" in out
    saved = json.loads((tmp_path / "r1.json").read_text())
    assert saved["settings"]["n"] == 2 and saved["files"] == ["a.jsonl", "b.jsonl"]
    same, other = saved["seniors"][names[0]], saved["seniors"][names[1]]
    assert same["macro"]["drift"] == 0.0                                       # the junior itself: no drift
    assert same["macro"]["legibility"] == pytest.approx(same["macro"]["self_ce"], abs=1e-6)
    assert other["macro"]["drift"] > 0
    for f in ("a.jsonl", "b.jsonl"):  # a step chain is its turns' texts, the senior's first
        for p in same["files"][f]["problems"] + other["files"][f]["problems"]:
            for x in p["step"]["samples"]:
                assert "".join(x["turns"]) == x["text"] and x["authors"][0] == "s"
                assert len(x["turns"]) == len([a for k, a in enumerate(x["authors"]) if a != x["authors"][k - 1:k]])
    for f, n_problems in (("a.jsonl", 3), ("b.jsonl", 2)):
        probs = same["files"][f]["problems"]
        assert len(probs) == n_problems and all(len(p[s]["samples"]) == 2 for p in probs for s in ev.SCHEDULES)
        assert all(isinstance(x["text"], str) for p in probs for x in p["step"]["samples"])
    for key in ("solo pass@1", "step pass@2", "word pass@1"):
        per_file = [same["files"][f]["metrics"][key][0] for f in ("a.jsonl", "b.jsonl")]
        assert same["macro"][key][0] == pytest.approx(sum(per_file) / 2)
    for p in same["files"]["a.jsonl"]["problems"] + other["files"]["b.jsonl"]["problems"]:  # who wrote each token
        for sch in ev.SCHEDULES:
            for x in p[sch]["samples"]:
                assert len(x["authors"]) == x["length"] and x["authors"].count("s") == x["senior_tokens"]
                assert sch != "solo" or x["authors"] == "s" * x["length"]
    # repeatable: the same seed gives the same run
    ev.main(ev.get_args(argv[:-1] + [str(tmp_path / "r2.json")]))
    again = json.loads((tmp_path / "r2.json").read_text())
    assert again["seniors"] == saved["seniors"] and again["paired"] == saved["paired"]

def test_out_unwritable_fails_before_sampling(tmp_path, monkeypatch):
    (tmp_path / "d.jsonl").write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}))
    (tmp_path / "file").write_text("")
    def never(*a, **k):
        raise AssertionError("loaded data or a model before checking --out")
    monkeypatch.setattr(ev, "load_problems", never)
    monkeypatch.setattr(ev, "load_model", never)
    for out, why in ((tmp_path, f"Is a directory: {tmp_path}"), (tmp_path / "file" / "r.json", "File exists")):
        args = ev.get_args(["--senior", "x", "--junior", "y", "--data", str(tmp_path / "d.jsonl"), "--out", str(out)])
        with pytest.raises(tg.UserError, match=f"--out {out}: cannot write it \\({why}"):
            ev.main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "file"]

def test_unique_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ("runs/a/step_000020", "other/a/step_000020", "runs/b/step_000020"):
        (tmp_path / d).mkdir(parents=True)
    paths = [str(tmp_path / "runs/a/step_000020"), "other/a/step_000020", "runs/b/step_000020", "Qwen/Qwen3-4B",
             "Qwen/Qwen3-4B"]
    assert ev.unique_names(paths, 2) == ["runs/a/step_000020", "other/a/step_000020", "b/step_000020",
                                         "Qwen/Qwen3-4B", "Qwen/Qwen3-4B #2"]
    files = ["eval/aime24/test.parquet", "eval/amc23_25/test.parquet", "x/aime.jsonl", "/data/gsm8k/test.jsonl"]
    assert ev.unique_names(files, 1) == ["aime24/test.parquet", "amc23_25/test.parquet", "aime.jsonl", "test.jsonl"]

def test_pooled_sets_macro_by_hand(tmp_path, tok, monkeypatch):
    """--data NAME=F1,F2 pools files into one set. Problems answered '1' are always solved, the others never:
    a = [1], b = [0, 0, 0], c = [1, 0]. Separate: macro = (1 + 0 + 1/2) / 3 = 0.5; a and b pooled as ab:
    (1/4 + 1/2) / 2 = 0.375. --limit 1 takes the first problem of each file: ab = [1, 0], c = [1]: (1/2 + 1) / 2."""
    tiny_model(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    for name, answers in (("a", "1"), ("b", "000"), ("c", "10")):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps({"problem": f"{name}{i}?", "answer": x})
                                                          for i, x in enumerate(answers)))
    def fake_evaluate(senior, junior, tok, problems, args, *rest, name=""):  # every sample: solved iff answer '1'
        x = lambda p: dict(text="", reward=float(p["answer"] == "1"), truncated=False, length=1, senior_tokens=1,
                           authors="s", legibility=None, self_ce=None, drift=None)
        return {sch: [[x(p) for _ in range(args.n)] for p in problems] for sch in ev.SCHEDULES}
    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    f = lambda n: str(tmp_path / f"{n}.jsonl")
    run = lambda *data: ev.main(ev.get_args(["--senior", str(tmp_path / "m"), "--junior", str(tmp_path / "m"),
                                             "--n", "2", "--device", "cpu", "--out", str(tmp_path / "r.json"),
                                             "--data", *data]))["seniors"].popitem()[1]
    separate, pooled = run(f("a"), f("b"), f("c")), run(f"ab={f('a')},{f('b')}", f("c"))
    assert separate["macro"]["solo pass@1"][0] == pytest.approx(0.5)
    assert pooled["macro"]["solo pass@1"][0] == pytest.approx(0.375) == pooled["macro"]["step pass@2"][0]
    assert list(pooled["files"]) == ["ab", "c.jsonl"]
    assert [p["problem"] for p in pooled["files"]["ab"]["problems"]] == ["a0?", "b0?", "b1?", "b2?"]
    assert pooled["files"]["ab"]["metrics"]["solo pass@1"][0] == pytest.approx(0.25)
    limited = ev.main(ev.get_args(["--senior", str(tmp_path / "m"), "--junior", str(tmp_path / "m"), "--n", "2",
                                   "--device", "cpu", "--out", str(tmp_path / "r.json"), "--limit", "1",
                                   "--data", f"ab={f('a')},{f('b')}", f("c")]))["seniors"].popitem()[1]
    assert limited["macro"]["solo pass@1"][0] == pytest.approx(0.75)

@pytest.mark.parametrize("flags,message", [
    (["--n", "0"], "--n must be >= 1"), (["--batch", "0"], "--batch must be >= 1"),
    (["--max-turns", "0"], "--max-turns must be >= 1"), (["--temperature", "-0.1"], "--temperature must be >= 0"),
    (["--p-senior", "1.5"], "--p-senior must be in [0, 1]"), (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--data", "nope.jsonl"], "--data nope.jsonl: no such file"), (["--senior", "./nope"], "./nope: no such model"),
    (["--junior", "runs/nope/step_000020"], "runs/nope/step_000020: no such model folder"),
    (["--data", "aime="], "--data aime=: write NAME=FILE,FILE,..."),
    (["--data", "=x.jsonl"], "--data =x.jsonl: write NAME=FILE,FILE,..."),
    (["--data", f"aime={tg.DEMO_DIR / 'test.jsonl'},nope.jsonl"], "--data nope.jsonl: no such file (in --data aime="),
    (["--data", f"a={tg.DEMO_DIR / 'test.jsonl'}", f"a={tg.DEMO_DIR / 'train.jsonl'}"],
     "the set name a is given twice"),
    (["--data", str(tg.DEMO_DIR)], f"--data {tg.DEMO_DIR}: is a folder; expected one file: .jsonl, .json or .parquet"),
    (["--data", str(tg.DEMO_DIR / "README.md")], "README.md: not a format read here; expected .jsonl, .json or"),
])
def test_bad_flags_fail_before_loading(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        ev.get_args(["--senior", "Qwen/x", "--data", str(tg.DEMO_DIR / "test.jsonl")] + flags)
    assert e.value.code == 2 and message in capsys.readouterr().err

def test_help_shows_every_flag_with_help_and_default(capsys):
    with pytest.raises(SystemExit):
        ev.get_args(["--help"])
    out = capsys.readouterr().out
    n_flags = out.split("options:")[1].count("\n  --")
    assert n_flags == 20 and out.count("(default:") == n_flags                # every flag but -h: its text and default
    assert "--max-turns MAX_TURNS" in out and "(default: 300)" in out and "What it computes, in order" in out

def test_bad_data_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "d.jsonl").write_text('{"problem": "a", "answer": "1"}\n{"problem": 3, "answer": "1"}\n')
    monkeypatch.setattr(sys, "argv", ["eval.py", "--senior", "Qwen/x", "--junior", "Qwen/y", "--data",
                                      str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(ev.__file__, run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"error: {tmp_path / 'd.jsonl'}: line 2: field 'problem' must be a non-empty " \
                                        f"string, got a number\n"

def test_demo_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "repo"                                          # where eval.py lives, for this test
    monkeypatch.setattr(ev, "__file__", str(repo / "eval.py"))
    a = ev.get_args(["--demo"])
    assert a.senior == [str(tg.DEMO_DIR / "model")] == [a.junior] and a.data == [str(tg.DEMO_DIR / "test.jsonl")]
    (tmp_path / "runs" / "demo" / "step_000040").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "latest").write_text("step_000040")  # written by python tandem_grpo.py --demo
    assert ev.get_args(["--demo"]).senior == [a.junior, "runs/demo/step_000040"]
    b = ev.get_args(["--demo", "--senior", "x", "--n", "2"])       # flags still win
    assert b.senior == ["x"] and b.n == 2 and b.max_new_tokens == 96 and b.threads == 1
    assert ev.get_args(["--senior", "x", "--data", a.data[0]]).threads == 0     # all cores outside the demo
    # no runs/demo here: the one next to the script is found
    (tmp_path / "runs" / "demo" / "latest").unlink()
    (repo / "runs" / "demo" / "step_000040").mkdir(parents=True)
    (repo / "runs" / "demo" / "latest").write_text("step_000040")
    assert ev.get_args(["--demo"]).senior == [a.junior, str(repo / "runs" / "demo" / "step_000040")]

def test_senior_may_be_a_run_folder_or_its_latest_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a" / "step_000020").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "latest").write_text("step_000020\n")  # written by tandem_grpo.py
    (tmp_path / "plain").mkdir()
    data = ["--data", str(tg.DEMO_DIR / "test.jsonl")]
    seniors = ev.get_args(["--senior", "runs/a", "--senior", "runs/a/latest", "--senior", "plain", *data]).senior
    assert seniors == ["runs/a/step_000020", "runs/a/step_000020", "plain"]
    with pytest.raises(SystemExit):
        ev.get_args(["--help"])
    assert "--out folder or its `latest` file (its newest checkpoint)" in " ".join(capsys.readouterr().out.split())

def test_step_solo_ratio_names_its_k_and_is_a_dash_without_solo_successes():
    a = eval_args(n=2)
    m = ev.metrics([fake_file([[0, 0], [0, 0]])], a)
    assert m["step/solo pass@2"] is None and "step/solo pass@4" not in m
    report = dict(settings=vars(a), files=["t.jsonl"], paired={}, seniors={"s": dict(macro=m, files={"t.jsonl": dict(
        metrics=m)})})
    header, row = ev.table(report).splitlines()[:2]
    assert "step/solo@2" in header and "step/solo " not in header
    col = header.index("step/solo@2")
    assert row[col:col + len("step/solo@2")].strip() == "-"           # not "-%"
    m2 = ev.metrics([fake_file([[1, 0], [0, 0]])], a)                 # solo pass@2 0.5, step the same: 100%
    report["seniors"]["s"]["files"]["t.jsonl"]["metrics"] = m2
    header, row = ev.table(report).splitlines()[:2]
    assert row[header.index("step/solo@2"):header.index("step/solo@2") + len("step/solo@2")].strip() == "100.0%"

def test_each_senior_prompts_with_its_own_tokenizer(tmp_path, tok, monkeypatch):
    for name, template in (("j", CHATML), ("s", "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML)):
        tiny_model(tok).save_pretrained(tmp_path / name)
        t = tok.__class__.from_pretrained(tmp_path / "j") if name == "s" else tok
        t.chat_template = template                                    # same vocabulary, another chat template
        t.save_pretrained(tmp_path / name)
    (tmp_path / "d.jsonl").write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}))
    seen = {}
    def fake_evaluate(senior, junior, t, problems, args, ws, se, eos, name=""):
        seen[name.split("/")[-1].split()[0]] = t.decode(tg.prompt_ids(t, "Q"))
        return fake_file([[1, 0]] * len(problems))
    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    ev.main(ev.get_args(["--senior", str(tmp_path / "j"), "--senior", str(tmp_path / "s"), "--junior",
                         str(tmp_path / "j"), "--data", str(tmp_path / "d.jsonl"), "--n", "2", "--device", "cpu",
                         "--threads", "3", "--out", str(tmp_path / "r.json")]))
    assert seen["j"].startswith("<|im_start|>user\nQ ") and seen["s"].startswith("<|im_start|>system\nBe brief.")
    assert threads == [3]                                              # --threads reaches torch

def test_senior_with_another_tokenizer_is_refused(tmp_path, tok):
    tiny_model(tok).save_pretrained(tmp_path / "j")
    tok.save_pretrained(tmp_path / "j")
    tiny_model(tok).save_pretrained(tmp_path / "s")
    other = tok.__class__.from_pretrained(tmp_path / "j")
    other.add_tokens(["<extra>"])                                  # one more id: the vocabularies differ
    other.save_pretrained(tmp_path / "s")
    (tmp_path / "d.jsonl").write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}))
    with pytest.raises(tg.UserError, match="vocabulary differs from the junior's"):
        ev.main(ev.get_args(["--senior", str(tmp_path / "s"), "--junior", str(tmp_path / "j"), "--data",
                             str(tmp_path / "d.jsonl"), "--device", "cpu", "--out", str(tmp_path / "r.json")]))

# ------------------------------------------------------------------------------------------------------------------
# the lab (lab/run.py): both arms end to end at a toy size, and the --length-penalty flag it uses

def test_length_penalty_scales_the_reward(tok, monkeypatch):
    """A scripted senior writes \\boxed{46} then EOS (n tokens): reward 1 x (1 - lambda x n / max_new_tokens)."""
    right = tok("\\boxed{46}", add_special_tokens=False).input_ids
    n = len(right) + 1                                   # with EOS
    assert n == 7                                        # so 1 - 0.5 x 7 / 40 = 0.9125 and 1 - 7 / 40 = 0.825
    s = tiny_model(tok, seed=0)
    for lam, want in ((0.0, 1.0), (0.5, 0.9125), (1.0, 0.825)):
        s.lm_head = Script(right + [tok.eos_token_id], s.config.vocab_size)
        args = tg.get_args(["--group-size", "2", "--gen-batch", "2", "--schedule", "solo", "--max-new-tokens", "40",
                            "--temperature", "1.0", "--length-penalty", str(lam), "--device", "cpu"])
        out = tg.rollout(s, None, tok, [{"problem": "What is 12 + 34?", "answer": "46"}], args, None, None)
        assert [len(r["response"]) for r in out] == [n, n] and [r["reward"] for r in out] == [pytest.approx(want)] * 2
    with pytest.raises(SystemExit):
        tg.get_args(["--length-penalty", "1.5"])

def test_lab_runs_end_to_end(tmp_path, tok):
    """lab/run.py at a toy size (2 seeds x 2 steps, 3 held-out problems, in one process): both arms trained from the
    same base with flags that differ only in --schedule, base/grpo/trl evaluated, the JSON and the summary line."""
    import importlib.util, re
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("lab_run", Path(__file__).parent / "lab" / "run.py")
    lab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lab)
    tiny_model(tok, seed=0).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    for name, rows in (("train.jsonl", 6), ("test.jsonl", 3)):
        (tmp_path / name).write_text("\n".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1)})
                                               for i in range(rows)))
    argv = ["--model", str(tmp_path / "m"), "--junior", str(tmp_path / "m"), "--data", str(tmp_path / "train.jsonl"),
            "--test", str(tmp_path / "test.jsonl"), "--seeds", "2", "--steps", "2", "--prompts-per-step", "2",
            "--group-size", "2", "--limit", "3", "--n", "2", "--max-new-tokens", "10", "--jobs", "0",
            "--out", str(tmp_path / "lab")]
    res = lab.main(lab.get_args(argv))
    saved = json.loads((tmp_path / "lab" / "lab.json").read_text())
    g, t = saved["arms"]["grpo"], saved["arms"]["trl"]                # the two arms' trainer flags
    assert saved["machine"]["torch"] == torch.__version__ and saved["machine"]["kernels"] and saved["machine"]["cpu"]
    assert len(g) == len(t) and [(a, b) for a, b in zip(g, t) if a != b] == [("solo", "word")]
    for seed in ("0", "1"):
        per = saved["per_seed"][seed]
        assert [len(per["train"][arm]) for arm in ("grpo", "trl")] == [2, 2]
        assert per["train"]["grpo"][0]["senior_share"] == 1.0 > per["train"]["trl"][0]["senior_share"]
        assert set(per["eval"]["macro"]) == {per["seniors"]["grpo"], per["seniors"]["trl"]}
    for model in ("base", "grpo", "trl"):
        m = saved["summary"][model]
        assert m["solo@1"][1] <= m["solo@1"][0] <= m["solo@1"][2]
        assert len(m["drift seeds"]) == (2 if model != "base" else 1)
    assert saved["summary"]["base"]["drift"] == 0.0                   # the base is its own junior
    d = saved["summary"]["trl - grpo"]["step@2"]
    assert d[0] == pytest.approx(saved["summary"]["trl"]["step@2"][0] - saved["summary"]["grpo"]["step@2"][0])
    num, ci, n2 = r"([\d.]+)", r"\(d ([+-][\d.]+) \[([+-][\d.]+),([+-][\d.]+)\]\)", r"[012]/2"
    m = re.fullmatch(rf"lab: solo@1 grpo {num} trl {num} {ci}; step@2 grpo {num} trl {num} {ci}; drift grpo {num} "
                     rf"trl {num}; legib grpo {num} trl {num}; held on seeds: parity {n2} handoff {n2} handoff@1 {n2} "
                     rf"drift {n2} legib {n2} mechanism {n2} \(seeds 2, \d+ s\)", saved["summary_line"])
    assert m and float(m.group(3)) == pytest.approx(float(m.group(2)) - float(m.group(1)), abs=0.11)
    assert res["summary_line"] == saved["summary_line"]
    assert {p: len(h) for p, h in saved["verdicts"].items()} == dict.fromkeys(
        ("parity", "handoff", "handoff@1", "drift", "legib", "mechanism"), 2)
    for seed in (0, 1):                                               # obj: the samples' own length-penalised reward
        report = json.loads((tmp_path / "lab" / f"seed{seed}" / "eval.json").read_text())
        samples = [x for p in next(iter(report["seniors"][saved["per_seed"][str(seed)]["seniors"]["trl"]]["files"]
                                        .values()))["problems"] for x in p["solo"]["samples"]]
        want = sum(x["reward"] * (1 - x["length"] / 10) for x in samples) / len(samples)  # 2 samples per problem
        assert saved["summary"]["trl"]["obj seeds"][seed] == pytest.approx(want)
    # the pieces, on hand values: the compact share counts column steps without ", carry N"
    texts = ["Ones: 7+6+0=13, carry 1\n\nTens: 5+8+1=14\n\nThe answer is 4.", "Ones: 1+2+0=3"]
    assert lab.compact_share(texts) == 2 / 3
    # obj, by hand: lambda 1, budget 112; problem 1: right in 56 tokens (0.5) and wrong (0); problem 2: right in 84
    samples = [[dict(reward=1.0, length=56), dict(reward=0.0, length=30)], [dict(reward=1.0, length=84)]]
    assert lab.objective(samples, 1.0, 112).tolist() == [0.25, 0.25]
    assert lab.objective(samples, 0.5, 112).tolist() == [0.375, 0.625]
    # the verdicts, on hand-made per-seed numbers: seed 0 holds everything, seed 1 nothing
    s = {"base": {"compact": 0.2}, "grpo": {"drift seeds": [0.05, 0.01], "legibility seeds": [0.1, 0.02],
                                            "compact seeds": [0.7, 0.1]},
         "trl": {"drift seeds": [0.02, 0.03], "legibility seeds": [0.03, 0.05], "compact seeds": [0.0, 0.3]},
         "trl - grpo": {"solo@1 seeds ci": [[0.02, -0.01, 0.05], [-0.15, -0.2, -0.1]],
                        "step@4 seeds ci": [[0.06, 0.01, 0.1], [-0.01, -0.05, 0.03]],
                        "step@1 seeds ci": [[0.3, 0.2, 0.4], [0.1, 0.0, 0.2]]}}          # lo 0 is not above 0
    assert lab.verdicts(s, 4) == dict.fromkeys(("parity", "handoff", "handoff@1", "drift", "legib", "mechanism"),
                                               [True, False])
    s["trl - grpo"]["solo@1 seeds ci"] = [[0.025, 0.01, 0.04], [0.05, 0.01, 0.09]]  # within 3 points; 5 ahead
    assert lab.verdicts(s, 4)["parity"] == [True, False]
    # the two-level bootstrap: identical seeds of constant problems give a zero-width interval at the mean
    assert lab.seed_bootstrap([torch.full((5,), 0.5, dtype=torch.float64)] * 2) == [0.5, 0.5, 0.5]
    with pytest.raises(SystemExit):                                   # a used --out is refused
        lab.get_args(argv)

# lab Part 0 (lab/exercises.py): the student copy, the checker, the usual mistakes it must catch

@pytest.fixture(scope="module")
def exercises():
    import importlib.util
    spec = importlib.util.spec_from_file_location("lab_exercises", Path(__file__).parent / "lab" / "exercises.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

REFERENCE = Path(__file__).parent / "tandem_grpo.py"

def test_student_copy_fails_all_six_and_the_reference_passes(tmp_path, exercises, capsys):
    import ast, difflib
    exercises.make(tmp_path / "s")
    copy, ref = (tmp_path / "s" / "tandem_grpo.py").read_text(), REFERENCE.read_text()
    assert all((tmp_path / "s" / "demo" / f).exists() for f in ("model/config.json", "train.jsonl", "test.jsonl"))
    # only six bodies differ: each becomes one raise naming its exercise; signatures and docstrings are kept
    added = [l[1:].strip() for l in difflib.unified_diff(ref.splitlines(), copy.splitlines(), n=0, lineterm="")
             if l.startswith("+") and not l.startswith("+++")]
    assert [a[:len('raise NotImplementedError("exercise N')] for a in added] == \
        [f'raise NotImplementedError("exercise {n}' for n in (1, 2, 3, 5, 4, 6)]        # in file order
    docs = lambda src: {f.name: (ast.get_docstring(f), ast.unparse(f.args)) for f in ast.parse(src).body
                        if isinstance(f, ast.FunctionDef)}
    assert docs(copy) == docs(ref)
    assert 'if schedule == "word":  # redraw *after* a word-start token' in copy       # the branch's line stays
    student = exercises.grade_file(tmp_path / "s" / "tandem_grpo.py")
    assert [(n, ok, line) for n, _, ok, line in student] == \
        [(n, False, "not written yet (it raises NotImplementedError)") for n in range(1, 7)]
    assert [ok for _, _, ok, _ in exercises.grade_file(REFERENCE)] == [True] * 6
    with pytest.raises(SystemExit, match="exists already"):                          # a student's work is never overwritten
        exercises.make(tmp_path / "s")

MISTAKES = [  # (the usual mistake, text substitutions on the reference, the one exercise that must fail)
    ("std without Bessel's correction", [("r.std(1, keepdim=True)", "r.std(1, keepdim=True, correction=0)")], 3),
    ("min instead of max in the clipped surrogate", [("torch.maximum(-adv * ratio", "torch.minimum(-adv * ratio")], 4),
    ("no dual clip", [("loss = torch.where(adv < 0, torch.minimum(loss, -adv * clip_c), loss)", "pass")], 4),
    # the mean over the tokens of one call: with a micro-batch of one rollout (the usual bug), a per-sequence mean
    ("a per-sequence mean instead of the token-mean",
     [(".sum() / n_tokens", ".sum() / (loss.numel() if weight is None else weight.sum())")], 4),
    # the author is only known after the token is sampled, so "before" shows as the word-start token (and the K-th)
    # credited to the redrawn author: the checker runs tandem_generate with authors told apart by their ids
    ("the coin redrawn before the word-start token instead of after it",
     [("        tokens[row, t] = tok\n        by_senior[row, t] = senior_turn\n", "        tokens[row, t] = tok\n"),
      ("max_gap)\n        # 3. finished", "max_gap)\n        by_senior[row, t] = senior_turn\n        # 3. finished")], 2),
    ("a redraw after K + 1 tokens without a word start", [("(gap >= max_gap)", "(gap > max_gap)")], 2),
    ("log-probs off by one position", [("h[:, n_prompt - 1:-1]", "h[:, n_prompt:]")], 5),
    ("junior-written tokens counted in the loss", [("torch.where(by_senior, 1.0, w_junior) * attn", "attn.float()")], 6),
]

@pytest.mark.parametrize("mistake,subs,n", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_checker_catches_the_usual_mistakes(tmp_path, exercises, mistake, subs, n):
    src = REFERENCE.read_text()
    for old, new in subs:
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    (tmp_path / "tandem_grpo.py").write_text(src)
    res = exercises.grade_file(tmp_path / "tandem_grpo.py")
    assert [k for k, _, ok, _ in res if not ok] == [n]
    line = res[n - 1][3]
    assert "expected" in line and "got" in line and "\n" not in line
    if n in (3, 5):  # the two classic slips are named
        assert ("Bessel" if n == 3 else "off by one") in line

def test_checker_cli_one_line_per_failure_no_traceback_and_the_grade_table(tmp_path, exercises, capsys):
    import re
    bad = REFERENCE.read_text().replace("r = rewards.view(-1, group_size)", "r = rewards.view(-1, group_size + 1)")
    (tmp_path / "ben").mkdir()
    (tmp_path / "ben" / "tandem_grpo.py").write_text(bad.replace("[:, n_prompt - 1:-1]", "[:, n_prompt:]"))
    (tmp_path / "cy").mkdir()                                                        # handed in nothing
    # in-process: a check that raises is one line, its traceback only when asked for
    res = exercises.grade_file(tmp_path / "ben" / "tandem_grpo.py", tracebacks=True)
    assert [k for k, _, ok, _ in res if not ok] == [3, 5] and res[2][3].startswith("raised RuntimeError: ")
    assert "Traceback" in capsys.readouterr().err
    # check: one line a failure, no traceback, the last line (the command exits 1 when this returns False)
    assert exercises.check(tmp_path / "ben") is False
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[-1] == "exercises: 4 of 6 passed" and "Traceback" not in out + err and len(lines) == 6 + 2 + 1
    assert lines[lines.index("exercise 3 failed  group-relative advantages") + 1].startswith("    raised RuntimeError")
    # the instructor's table: each hand-in checked by the command, in a process of its own
    script = Path(__file__).parent / "lab" / "exercises.py"
    p = subprocess.run([sys.executable, str(script), "grade", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0 and "Traceback" not in p.stdout + p.stderr
    out = p.stdout.splitlines()
    assert out[0].split() == ["student", "exercise", "passed", "why"] and len(out) == 1 + 12 + 2
    rows = [re.match(r"(\S+) +(\d) (\w+(?: \(word\))?) +(yes|no)(?: +(.*))?$", line).groups() for line in out[1:13]]
    got = {(r[0], r[1]): r[3] for r in rows}
    assert [r[2] for r in rows[:6]] == ["word_start_mask", "next_author (word)", "group_advantages", "grpo_loss",
                                       "response_hidden", "loss_weights"]
    assert rows[2][4].startswith("raised RuntimeError") and "off by one" in rows[4][4]
    assert rows[6][4] == "no tandem_grpo.py handed in"
    assert [got[("ben", str(n))] for n in range(1, 7)] == ["yes", "yes", "no", "yes", "no", "yes"]
    assert all(got[("cy", str(n))] == "no" for n in range(1, 7))
    assert out[-2:] == ["ben: 4 of 6 passed", "cy: 0 of 6 passed"]

# ------------------------------------------------------------------------------------------------------------------
# bench.py --paper: its phases run on the demo model on the CPU (its figures need a GPU; this keeps its code honest)

def test_bench_paper_slice_runs_every_phase_on_the_cpu():
    p = subprocess.run([sys.executable, str(Path(__file__).parent / "bench.py"), "--paper", "--config",
                        str(tg.DEMO_DIR / "model"), "--device", "cpu", "--prompt-len", "16", "--new-tokens", "32",
                        "--decode-steps", "16", "--short-tokens", "8", "--gen-batch", "4", "--micro-batch", "4",
                        "--n-vocab", "371"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.split("paper: ", 1)[1].replace("NaN", "null"))
    for phase in ("rollout_full_len_s", "update_s", "validate_full_len_s", "solo_ms_per_step", "word_ms_per_step"):
        assert got[phase] > 0
    assert got["compiled_greedy_rows_same"] == 1.0    # float32 on the CPU: the static decode's greedy tokens are eager's
    assert got["rollout_peak_gib"] is None            # no CUDA memory to read: NaN, not a made-up figure
