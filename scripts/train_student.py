#!/usr/bin/env python3
"""LoRA fine-tuning of the ReasoningRec student on a set exported by `reasonrec train export`.

The student learns to answer "Prediction: Yes|No" followed by the reasoning, from the
system + user turns of each example's `messages`. Usage:

    python3 scripts/train_student.py --spec SPEC.json [--dry-run] [--summary PATH]
        [--output-dir DIR] [--epochs N] [--max-train-examples N] [--tokenizer NAME]
        [--gradient-checkpointing] [--bertscore]
    python3 scripts/train_student.py --spec SPEC.json --bertscore-only PREDICTIONS.jsonl

The spec is the JSON written by `reasonrec train launch` (every key present):
    base_model, data_dir, train_file, validation_file, test_file, output_dir,
    lora {r, alpha, dropout, target_modules}, learning_rate, epochs, batch_size,
    gradient_accumulation_steps, max_seq_length, loss_on_answer_only,
    early_stopping {metric: "auc", patience}, seed
A relative `data_dir` or `output_dir` is taken from the spec file's folder. Data files are JSONL
(or Parquet, read with pyarrow only then); each line needs `id`, `label` (1 liked, 0 disliked) and
`messages` (system/user turns, then one assistant turn "Prediction: Yes|No\\nReasoning: ...").

Tokenised examples
    prompt = the system and user turns (the tokenizer's chat template when it has one, else a plain
    "### System/User/Assistant:" layout), target = the assistant turn + EOS. With
    loss_on_answer_only, prompt tokens get label -100. Longer than max_seq_length: the answer is
    kept whole unless it alone is over half the length (then its tail is cut); the prompt loses its
    middle (the oldest history), keeping its head (instructions, user profile) and its tail (target
    item, assistant header).

--dry-run
    No GPU, network, torch or transformers: reads and checks the data, tokenises it with a built-in
    word-level tokenizer (vocabulary from the training split; <pad> <unk> <bos> <eos>) or, with
    --tokenizer NAME, with that transformers tokenizer, and prints a JSON summary (per split: counts
    per label, tokens, answer tokens and their share, truncated examples). --summary PATH writes it
    too. Bad data exits 2 with "FILE:LINE: field `NAME`: ..." on stderr.

Real run (torch, transformers and peft: `pip install -r scripts/requirements-train.txt`)
    Loads the base model (bf16 on CUDA), adds LoRA adapters per the spec, trains with a plain
    transformers Trainer and a collator that keeps the prompt masked, and after each epoch scores
    the validation split: P(yes) = softmax over the logits of the " Yes" and " No" tokens right after
    "Prediction:" (TALLRec's protocol), AUC over those. The best epoch's adapter is kept (early
    stopping after `patience` epochs without improvement) and saved to OUTPUT/adapter. Then writes
    OUTPUT/predictions.jsonl for the test split, one line per example:
        {"id", "label", "p_yes", "prediction": "Yes"|"No" (p_yes >= 0.5),
         "generated_prediction": the label the greedy generation wrote (or null),
         "reasoning": the generated text after "Reasoning:" (greedy, at most 256 new tokens)}
    which `reasonrec train eval` reads. Also OUTPUT/train_log.json (AUC per epoch, best epoch) and
    OUTPUT/data_summary.json.

BERTScore
    `reasonrec train eval` computes AUC, accuracy, F1, ROUGE-L and BLEU-4 but not BERTScore, which
    needs a model. It is obtained here: --bertscore after a real run, or --bertscore-only
    PREDICTIONS for an existing predictions file, scores each predicted `reasoning` against the
    test example's teacher `reasoning` with the `bert_score` package (its default English model,
    roberta-large, or --bertscore-model with --bertscore-layers), prints {"bertscore_f1": ...} and writes
    OUTPUT/bertscore.json.

Exit codes: 0 done, 2 bad spec, data or arguments, 3 missing Python packages.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import math
import os
import random
import re
import sys
from collections import Counter
from typing import Any, Callable, Iterator, Optional

REQUIREMENTS_HINT = "pip install -r scripts/requirements-train.txt"
ANSWER_RESERVE = 256  # max new tokens generated, and the room kept for them in a test prompt
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


class UsageError(Exception):
    """Bad spec, data or arguments: exit 2."""


class MissingDependency(Exception):
    """A Python package the chosen mode needs is not installed: exit 3."""


# ---------------------------------------------------------------------------------------------
# Spec


@dataclasses.dataclass
class Spec:
    path: str
    base_model: str
    data_dir: str
    files: dict[str, str]  # split -> path
    output_dir: str
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: list[str]
    learning_rate: float
    epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    max_seq_length: int
    loss_on_answer_only: bool
    early_stopping_metric: str
    patience: int
    seed: int


def _spec_get(spec: dict, dotted: str, path: str, check: Callable[[Any], bool], expected: str) -> Any:
    value: Any = spec
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise UsageError(f"spec {path}: key `{dotted}`: missing")
        value = value[part]
    if not check(value):
        raise UsageError(f"spec {path}: key `{dotted}`: expected {expected}, got {json.dumps(value)}")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def load_spec(path: str, args: argparse.Namespace) -> Spec:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise UsageError(f"spec {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"spec {path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"spec {path}: expected a JSON object")

    def get(key: str, check: Callable[[Any], bool], expected: str) -> Any:
        return _spec_get(raw, key, path, check, expected)

    nonempty_str = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
    pos_int = (lambda v: _is_int(v) and v > 0, "a positive integer")
    base = os.path.dirname(os.path.abspath(path))
    data_dir = os.path.join(base, get("data_dir", *nonempty_str))
    output_dir = args.output_dir or os.path.join(base, get("output_dir", *nonempty_str))
    files = {
        split: os.path.join(data_dir, get(f"{split}_file", *nonempty_str))
        for split in ("train", "validation", "test")
    }
    epochs = get("epochs", *pos_int)
    if args.epochs is not None:
        if args.epochs <= 0:
            raise UsageError(f"--epochs: expected a positive integer, got {args.epochs}")
        epochs = args.epochs
    metric = get("early_stopping.metric", lambda v: v == "auc", '"auc"')
    return Spec(
        path=path,
        base_model=get("base_model", *nonempty_str),
        data_dir=data_dir,
        files=files,
        output_dir=output_dir,
        lora_r=get("lora.r", *pos_int),
        lora_alpha=get("lora.alpha", lambda v: _is_number(v) and v > 0, "a positive number"),
        lora_dropout=get("lora.dropout", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0,1)"),
        lora_target_modules=get(
            "lora.target_modules",
            lambda v: isinstance(v, list) and v and all(isinstance(m, str) and m for m in v),
            "a non-empty list of module names",
        ),
        learning_rate=get("learning_rate", lambda v: _is_number(v) and v > 0, "a positive number"),
        epochs=epochs,
        batch_size=get("batch_size", *pos_int),
        gradient_accumulation_steps=get("gradient_accumulation_steps", *pos_int),
        max_seq_length=get("max_seq_length", lambda v: _is_int(v) and v >= 16, "an integer >= 16"),
        loss_on_answer_only=get("loss_on_answer_only", lambda v: isinstance(v, bool), "true or false"),
        early_stopping_metric=metric,
        patience=get("early_stopping.patience", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        seed=get("seed", _is_int, "an integer"),
    )


# ---------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class Example:
    id: str
    split: str
    label: int  # 1 liked, 0 disliked
    prompt_messages: list[dict[str, str]]
    target: str  # the assistant turn
    reasoning: Optional[str]  # the teacher's reasoning (field, else parsed from the target)


ANSWER_RE = re.compile(r"^\s*Prediction\s*:\s*(Yes|No)\b", re.IGNORECASE)
REASONING_RE = re.compile(r"Reasoning\s*:")


def read_records(path: str) -> Iterator[tuple[int, dict]]:
    """Yields (line or row number from 1, object) for every record of a .jsonl or .parquet file."""
    if path.endswith(".parquet"):
        yield from _read_parquet(path)
        return
    if not path.endswith(".jsonl"):
        raise UsageError(f"{path}: expected a .jsonl or .parquet file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{path}:{lineno}: not valid UTF-8") from None
            if lineno == 1:
                text = text.lstrip("\ufeff")
            text = text.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def _read_parquet(path: str) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq  # only needed for parquet input
    except ImportError:
        raise MissingDependency(f"{path}: reading parquet needs pyarrow ({REQUIREMENTS_HINT})") from None
    try:
        parquet = pq.ParquetFile(path)
    except OSError as e:
        raise UsageError(f"{path}: {e}") from None
    row = 0
    for batch in parquet.iter_batches():
        for record in batch.to_pylist():
            row += 1
            yield row, record


def parse_example(path: str, lineno: int, record: dict, split: str) -> Example:
    where = f"{path}:{lineno}"
    ex_id = record.get("id")
    if ex_id is None:
        raise UsageError(f"{where}: field `id`: missing")
    if not isinstance(ex_id, str) or not ex_id:
        raise UsageError(f"{where}: field `id`: expected a non-empty string, got {json.dumps(ex_id)}")
    label = record.get("label")
    if label is None:
        raise UsageError(f"{where}: field `label`: missing")
    if not _is_int(label) or label not in (0, 1):
        raise UsageError(f"{where}: field `label`: expected 1 (liked) or 0 (disliked), got {json.dumps(label)}")
    messages = record.get("messages")
    if messages is None:
        raise UsageError(f"{where}: field `messages`: missing")
    if not isinstance(messages, list) or len(messages) < 2:
        raise UsageError(f"{where}: field `messages`: expected a list of at least 2 turns")
    turns = []
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UsageError(
                f"{where}: field `messages`: turn {n}: expected {{\"role\": system|user|assistant, "
                f"\"content\": string}}"
            )
        turns.append({"role": m["role"], "content": m["content"]})
    if turns[-1]["role"] != "assistant" or any(t["role"] == "assistant" for t in turns[:-1]):
        raise UsageError(f"{where}: field `messages`: expected one assistant turn, the last")
    target = turns[-1]["content"]
    answer = ANSWER_RE.match(target)
    if not answer:
        raise UsageError(f'{where}: field `messages`: the assistant turn must start with "Prediction: Yes|No"')
    if (answer.group(1).lower() == "yes") != (label == 1):
        raise UsageError(f"{where}: field `label` is {label} but the assistant turn says {answer.group(1)}")
    reasoning = record.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise UsageError(f"{where}: field `reasoning`: expected a string, got {json.dumps(reasoning)[:60]}")
    if reasoning is None:
        reasoning = extract_reasoning(target)
    file_split = record.get("split")
    if file_split is not None and not isinstance(file_split, str):
        raise UsageError(f"{where}: field `split`: expected a string, got {json.dumps(file_split)}")
    return Example(ex_id, split, label, turns[:-1], target, reasoning)


def extract_reasoning(text: str) -> str:
    """The part of an answer after "Reasoning:", else the answer less its "Prediction: X" start."""
    found = REASONING_RE.search(text)
    if found:
        return text[found.end() :].strip()
    return ANSWER_RE.sub("", text, count=1).strip()


def load_split(path: str, split: str) -> list[Example]:
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, record in read_records(path):
        example = parse_example(path, lineno, record, split)
        if example.id in seen:
            raise UsageError(f"{path}:{lineno}: field `id`: duplicate id {example.id!r} (first on line {seen[example.id]})")
        seen[example.id] = lineno
        examples.append(example)
    return examples


def stratified_subset(examples: list[Example], n: int, seed: int) -> list[Example]:
    """Up to n examples, half liked and half disliked where each class has enough (the other class
    fills the rest), drawn with `seed`, in their original order."""
    if n >= len(examples):
        return examples
    rng = random.Random(seed)
    liked = [i for i, e in enumerate(examples) if e.label == 1]
    disliked = [i for i, e in enumerate(examples) if e.label == 0]
    rng.shuffle(liked)
    rng.shuffle(disliked)
    take_liked = min(len(liked), max(n // 2, n - len(disliked)))
    chosen = liked[:take_liked] + disliked[: n - take_liked]
    return [examples[i] for i in sorted(chosen)]


# ---------------------------------------------------------------------------------------------
# Tokenizers and features


class WordTokenizer:
    """Word-level tokenizer for --dry-run: words and single punctuation marks; vocabulary from the
    training texts (most frequent first, then alphabetical), unknown words map to <unk>."""

    SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
    PATTERN = re.compile(r"\w+|[^\w\s]")

    def __init__(self, texts: list[str]):
        counts = Counter(tok for text in texts for tok in self.PATTERN.findall(text))
        words = sorted(counts, key=lambda w: (-counts[w], w))
        self.vocab = {tok: i for i, tok in enumerate(list(self.SPECIALS) + words)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3

    def encode(self, text: str) -> list[int]:
        return [self.vocab.get(tok, self.unk_id) for tok in self.PATTERN.findall(text)]

    def __len__(self) -> int:
        return len(self.vocab)


class HFTokenizer:
    """A transformers tokenizer behind the same small interface."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.bos_id = tok.bos_token_id
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.unk_id = tok.unk_token_id
        self.chat_template = bool(getattr(tok, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def __len__(self) -> int:
        return len(self.tok)


def load_hf_tokenizer(name: str) -> HFTokenizer:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise MissingDependency(f"--tokenizer needs transformers ({REQUIREMENTS_HINT})") from None
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load tokenizer {name!r}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return HFTokenizer(tok)


def render_prompt(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """The prompt text: the chat template (with the assistant header) when the tokenizer has one,
    else a plain layout ending in "### Assistant:\\n"."""
    if isinstance(tokenizer, HFTokenizer) and tokenizer.chat_template:
        return tokenizer.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages]
    return "".join(parts) + "### Assistant:\n"


def encode_prompt(messages: list[dict[str, str]], tokenizer: Any) -> list[int]:
    text = render_prompt(messages, tokenizer)
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_id
    if bos is not None and not (ids and ids[0] == bos):
        ids = [bos] + ids
    return ids


def middle_cut(ids: list[int], keep: int) -> list[int]:
    """The first keep//2 and the last keep - keep//2 tokens."""
    if len(ids) <= keep:
        return ids
    head = keep // 2
    tail = keep - head
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


@dataclasses.dataclass
class Features:
    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    answer_tokens: int
    truncated: bool


def build_features(example: Example, tokenizer: Any, max_len: int, answer_only: bool) -> Features:
    prompt = encode_prompt(example.prompt_messages, tokenizer)
    target = tokenizer.encode(example.target) + [tokenizer.eos_id]
    truncated = len(prompt) + len(target) > max_len
    if truncated:
        prompt_min = min(len(prompt), max_len // 2)
        target = target[: max_len - prompt_min]
        prompt = middle_cut(prompt, max_len - len(target))
    input_ids = prompt + target
    labels = [IGNORE_INDEX] * len(prompt) + target if answer_only else list(input_ids)
    return Features(input_ids, labels, len(prompt), len(target), truncated)


def inference_prompt(example: Example, tokenizer: Any, max_len: int) -> list[int]:
    """The prompt for scoring and generation, cut to leave room for the answer."""
    reserve = min(ANSWER_RESERVE, max_len // 2)
    return middle_cut(encode_prompt(example.prompt_messages, tokenizer), max_len - reserve)


def split_summary(path: str, examples: list[Example], features: list[Features], tokenizer: Any) -> dict:
    tokens = sum(len(f.input_ids) for f in features)
    answer = sum(f.answer_tokens for f in features)
    summary = {
        "file": path,
        "examples": len(examples),
        "labels": {"liked": sum(e.label for e in examples), "disliked": sum(1 - e.label for e in examples)},
        "tokens": tokens,
        "prompt_tokens": sum(f.prompt_tokens for f in features),
        "answer_tokens": answer,
        "supervised_tokens": sum(sum(1 for x in f.labels if x != IGNORE_INDEX) for f in features),
        "answer_token_share": answer / tokens if tokens else 0.0,
        "truncated": sum(f.truncated for f in features),
        "max_example_tokens": max((len(f.input_ids) for f in features), default=0),
    }
    if isinstance(tokenizer, WordTokenizer):
        summary["unknown_tokens"] = sum(f.input_ids.count(tokenizer.unk_id) for f in features)
    return summary


def load_data(spec: Spec, args: argparse.Namespace) -> dict[str, list[Example]]:
    """Reads and checks the three splits; applies --max-train-examples."""
    data = {split: load_split(path, split) for split, path in spec.files.items()}
    if not data["train"]:
        raise UsageError(f"{spec.files['train']}: no training example")
    if args.max_train_examples is not None:
        if args.max_train_examples <= 0:
            raise UsageError(f"--max-train-examples: expected a positive integer, got {args.max_train_examples}")
        data["train"] = stratified_subset(data["train"], args.max_train_examples, spec.seed)
    return data


def featurize(
    spec: Spec, args: argparse.Namespace, data: dict[str, list[Example]], tokenizer: Any
) -> tuple[dict[str, list[Features]], dict]:
    """Tokenises every split; returns the features and the data summary."""
    features = {
        split: [build_features(e, tokenizer, spec.max_seq_length, spec.loss_on_answer_only) for e in examples]
        for split, examples in data.items()
    }
    splits = {split: split_summary(spec.files[split], data[split], features[split], tokenizer) for split in data}
    total: dict[str, Any] = {}
    for key in ("examples", "tokens", "prompt_tokens", "answer_tokens", "supervised_tokens", "truncated"):
        total[key] = sum(s[key] for s in splits.values())
    total["labels"] = {k: sum(s["labels"][k] for s in splits.values()) for k in ("liked", "disliked")}
    total["answer_token_share"] = total["answer_tokens"] / total["tokens"] if total["tokens"] else 0.0
    if isinstance(tokenizer, WordTokenizer):
        tok_info = {"kind": "word-level (built-in)", "vocab_size": len(tokenizer)}
    else:
        tok_info = {"kind": "transformers", "name": args.tokenizer or spec.base_model, "vocab_size": len(tokenizer)}
    summary = {
        "mode": "dry-run" if args.dry_run else "train",
        "spec": os.path.abspath(spec.path),
        "base_model": spec.base_model,
        "tokenizer": tok_info,
        "prompt_format": "chat-template" if getattr(tokenizer, "chat_template", False) else "plain",
        "max_seq_length": spec.max_seq_length,
        "loss_on_answer_only": spec.loss_on_answer_only,
        "max_train_examples": args.max_train_examples,
        "splits": splits,
        "total": total,
    }
    return features, summary


def write_json(path: str, value: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Metrics


def roc_auc(labels: list[int], scores: list[float]) -> Optional[float]:
    """ROC AUC with ties counted 1/2 (sklearn's roc_auc_score); None with a single class."""
    pos = sum(1 for x in labels if x)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    pairs = sorted(zip(scores, labels))
    wins = 0.0
    neg_below = 0
    i = 0
    while i < len(pairs):
        j = i
        group_pos = group_neg = 0
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            if pairs[j][1]:
                group_pos += 1
            else:
                group_neg += 1
            j += 1
        wins += group_pos * (neg_below + 0.5 * group_neg)
        neg_below += group_neg
        i = j
    return wins / (pos * neg)


# ---------------------------------------------------------------------------------------------
# Real run


def import_training_stack() -> tuple[Any, Any, Any]:
    missing = []
    modules = []
    for name in ("torch", "transformers", "peft"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependency(f"training needs {', '.join(missing)}: install with `{REQUIREMENTS_HINT}`")
    return modules[0], modules[1], modules[2]


def answer_probe(tokenizer: HFTokenizer) -> tuple[list[int], int, int]:
    """The answer tokens up to the label ("Prediction:"), and the token ids of Yes and No there,
    found by tokenising both answers as the training targets are and taking the first difference."""
    yes = tokenizer.encode("Prediction: Yes\nReasoning:")
    no = tokenizer.encode("Prediction: No\nReasoning:")
    k = 0
    while k < min(len(yes), len(no)) and yes[k] == no[k]:
        k += 1
    if k >= min(len(yes), len(no)):
        raise UsageError("the tokenizer does not tell 'Prediction: Yes' from 'Prediction: No'")
    return yes[:k], yes[k], no[k]


def _forward_kwargs(model: Any) -> dict:
    """Asks the model for the last position's logits only, where its forward supports it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def _left_pad(torch: Any, seqs: list[list[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    width = max(len(s) for s in seqs)
    ids = [[pad_id] * (width - len(s)) + s for s in seqs]
    mask = [[0] * (width - len(s)) + [1] * len(s) for s in seqs]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def score_p_yes(torch: Any, model: Any, prompts: list[list[int]], probe: tuple, pad_id: int, batch: int) -> list[float]:
    prefix, yes_id, no_id = probe
    device = next(model.parameters()).device
    extra = _forward_kwargs(model)
    out: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            ids, mask = _left_pad(torch, [p + prefix for p in prompts[start : start + batch]], pad_id, device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **extra).logits
            last = logits[:, -1, :].float()
            pair = torch.stack([last[:, yes_id], last[:, no_id]], dim=-1)
            out.extend(torch.softmax(pair, dim=-1)[:, 0].tolist())
    if was_training:
        model.train()
    return out


def generate_answers(torch: Any, transformers: Any, model: Any, prompts: list[list[int]], tok: HFTokenizer, batch: int) -> list[str]:
    device = next(model.parameters()).device
    config = transformers.GenerationConfig(
        max_new_tokens=ANSWER_RESERVE,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_id,
        eos_token_id=tok.eos_id,
        bos_token_id=tok.bos_id,
        use_cache=True,
    )
    texts: list[str] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            ids, mask = _left_pad(torch, prompts[start : start + batch], tok.pad_id, device)
            generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row in generated[:, ids.shape[1] :]:
                texts.append(tok.tok.decode(row.tolist(), skip_special_tokens=True).strip())
    return texts


def real_run(spec: Spec, args: argparse.Namespace) -> int:
    data = load_data(spec, args)  # before any download: a bad line fails fast
    torch, transformers, peft = import_training_stack()
    transformers.set_seed(spec.seed)
    tokenizer = load_hf_tokenizer(args.tokenizer or spec.base_model)
    features, summary = featurize(spec, args, data, tokenizer)
    os.makedirs(spec.output_dir, exist_ok=True)
    write_json(os.path.join(spec.output_dir, "data_summary.json"), summary)
    if args.summary:
        write_json(args.summary, summary)
    print(json.dumps({"data": summary["total"]}), flush=True)

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if not cuda:
        print("warning: no CUDA device; training on the CPU will be very slow", file=sys.stderr)
    major = int(transformers.__version__.split(".")[0])
    minor = int(re.match(r"\d+", transformers.__version__.split(".")[1]).group(0))
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(spec.base_model, **{dtype_key: dtype})
    if cuda:
        model.to("cuda")
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = peft.LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(model, lora)
    model.print_trainable_parameters()

    class ListDataset(torch.utils.data.Dataset):
        def __init__(self, items: list[Features]):
            self.items = items

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.items[i].input_ids, "labels": self.items[i].labels}

    def collate(batch: list[dict]) -> dict:
        """Right-pads a batch; padding is masked out and carries label -100."""
        width = max(len(b["input_ids"]) for b in batch)
        gaps = [width - len(b["input_ids"]) for b in batch]
        return {
            "input_ids": torch.tensor([b["input_ids"] + [tokenizer.pad_id] * g for b, g in zip(batch, gaps)]),
            "labels": torch.tensor([b["labels"] + [IGNORE_INDEX] * g for b, g in zip(batch, gaps)]),
            "attention_mask": torch.tensor([[1] * len(b["input_ids"]) + [0] * g for b, g in zip(batch, gaps)]),
        }

    probe = answer_probe(tokenizer)
    validation_prompts = [inference_prompt(e, tokenizer, spec.max_seq_length) for e in data["validation"]]
    validation_labels = [e.label for e in data["validation"]]
    adapter_dir = os.path.join(spec.output_dir, "adapter")

    def snapshot(m: Any) -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in peft.get_peft_model_state_dict(m).items()}

    class AucEarlyStopping(transformers.TrainerCallback):
        """Scores the validation split after each epoch; keeps the best adapter; stops after
        `patience` epochs without a better AUC."""

        def __init__(self) -> None:
            self.history: list[dict] = []
            self.best_auc: Optional[float] = None
            self.best_epoch: Optional[int] = None
            self.best_state: Optional[dict] = None
            self.bad_epochs = 0

        def on_epoch_end(self, args_: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
            epoch = int(round(state.epoch or 0))
            scores = score_p_yes(torch, model, validation_prompts, probe, tokenizer.pad_id, spec.batch_size)
            auc = roc_auc(validation_labels, scores)
            self.history.append({"epoch": epoch, "validation_auc": auc, "step": state.global_step})
            print(json.dumps({"epoch": epoch, "validation_auc": auc}), flush=True)
            if auc is None:
                # No ranking possible (empty or one-class validation): keep the latest adapter.
                self.best_epoch, self.best_state = epoch, snapshot(model)
                model.save_pretrained(adapter_dir)
            elif self.best_auc is None or auc > self.best_auc:
                self.best_auc, self.best_epoch, self.best_state = auc, epoch, snapshot(model)
                self.bad_epochs = 0
                model.save_pretrained(adapter_dir)
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= spec.patience:
                    control.should_training_stop = True
            return control

    if not 0 < sum(validation_labels) < len(validation_labels):
        print("warning: the validation split lacks a label; no early stopping, the last epoch is kept", file=sys.stderr)
    early = AucEarlyStopping()
    training_args = transformers.TrainingArguments(
        output_dir=os.path.join(spec.output_dir, "checkpoints"),
        num_train_epochs=spec.epochs,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="linear",
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        bf16=dtype == torch.bfloat16,
        seed=spec.seed,
        remove_unused_columns=False,
        label_names=["labels"],
    )
    trainer = transformers.Trainer(
        model=model,
        args=training_args,
        train_dataset=ListDataset(features["train"]),
        data_collator=collate,
        callbacks=[early],
    )
    trainer.train()
    if early.best_state is not None:
        peft.set_peft_model_state_dict(model, early.best_state)
    tokenizer.tok.save_pretrained(adapter_dir)

    test_prompts = [inference_prompt(e, tokenizer, spec.max_seq_length) for e in data["test"]]
    p_yes = score_p_yes(torch, model, test_prompts, probe, tokenizer.pad_id, spec.batch_size)
    answers = generate_answers(torch, transformers, model, test_prompts, tokenizer, spec.batch_size)
    predictions_path = os.path.join(spec.output_dir, "predictions.jsonl")
    with open(predictions_path + ".tmp", "w", encoding="utf-8") as f:
        for example, p, text in zip(data["test"], p_yes, answers):
            said = ANSWER_RE.match(text)
            record = {
                "id": example.id,
                "label": example.label,
                "p_yes": p,
                "prediction": "Yes" if p >= 0.5 else "No",
                "generated_prediction": said.group(1).capitalize() if said else None,
                "reasoning": extract_reasoning(text),
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(predictions_path + ".tmp", predictions_path)
    test_auc = roc_auc([e.label for e in data["test"]], p_yes)
    log = {
        "history": early.history,
        "best_epoch": early.best_epoch,
        "best_validation_auc": early.best_auc,
        "test_auc": test_auc,
        "adapter": adapter_dir,
        "predictions": predictions_path,
    }
    write_json(os.path.join(spec.output_dir, "train_log.json"), log)
    print(json.dumps(log), flush=True)
    if args.bertscore:
        run_bertscore(spec, args, predictions_path, data["test"])
    return 0


# ---------------------------------------------------------------------------------------------
# BERTScore


def run_bertscore(spec: Spec, args: argparse.Namespace, predictions_path: str, test: list[Example]) -> dict:
    try:
        from bert_score import score as bert_score
    except ImportError:
        raise MissingDependency(f"--bertscore needs the bert-score package ({REQUIREMENTS_HINT})") from None
    references = {e.id: e.reasoning for e in test}
    candidates: list[str] = []
    refs: list[str] = []
    for lineno, record in read_records(predictions_path):
        reasoning = record.get("reasoning")
        if "id" not in record:
            raise UsageError(f"{predictions_path}:{lineno}: field `id`: missing")
        if not isinstance(reasoning, str):
            continue
        reference = references.get(record["id"])
        if reference:
            candidates.append(reasoning)
            refs.append(reference)
    if not candidates:
        raise UsageError(f"{predictions_path}: no prediction with a `reasoning` matches a test example")
    kwargs: dict[str, Any] = {"lang": "en", "verbose": False}
    if args.bertscore_model:
        kwargs["model_type"] = args.bertscore_model
    if args.bertscore_layers is not None:
        kwargs["num_layers"] = args.bertscore_layers
    precision, recall, f1 = bert_score(candidates, refs, **kwargs)
    result = {
        "bertscore_f1": float(f1.mean()),
        "bertscore_precision": float(precision.mean()),
        "bertscore_recall": float(recall.mean()),
        "n": len(candidates),
        "model": args.bertscore_model or "bert_score default for lang=en",
        "predictions": os.path.abspath(predictions_path),
    }
    write_json(os.path.join(spec.output_dir, "bertscore.json"), result)
    print(json.dumps(result), flush=True)
    return result


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="the JSON spec written by `reasonrec train launch`")
    p.add_argument("--dry-run", action="store_true", help="check and tokenise the data only; no torch needed")
    p.add_argument("--summary", help="also write the data summary (JSON) to this path")
    p.add_argument("--tokenizer", help="a transformers tokenizer name or folder (default: the base model's; "
                   "in --dry-run, the built-in word-level tokenizer)")
    p.add_argument("--output-dir", help="overrides the spec's output_dir")
    p.add_argument("--epochs", type=int, help="overrides the spec's epochs")
    p.add_argument("--max-train-examples", type=int, help="train on at most N examples, stratified by label")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    p.add_argument("--bertscore", action="store_true", help="after the run, BERTScore F1 of the test reasonings")
    p.add_argument("--bertscore-only", metavar="PREDICTIONS", help="BERTScore F1 of an existing predictions file")
    p.add_argument("--bertscore-model", help="bert_score model_type (default: its English default)")
    p.add_argument("--bertscore-layers", type=int, help="bert_score num_layers, needed for a model it does not know")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec, args)
        if args.bertscore_only:
            test = load_split(spec.files["test"], "test")
            run_bertscore(spec, args, args.bertscore_only, test)
            return 0
        if args.dry_run:
            if args.tokenizer:
                hf = load_hf_tokenizer(args.tokenizer)
                factory: Callable[[list[Example]], Any] = lambda train: hf
            else:
                factory = lambda train: WordTokenizer(
                    [render_prompt(e.prompt_messages, None) + "\n" + e.target for e in train]
                )
            data = load_data(spec, args)
            _, summary = featurize(spec, args, data, factory(data["train"]))
            if args.summary:
                write_json(args.summary, summary)
            print(json.dumps(summary, indent=2, ensure_ascii=False))
            return 0
        return real_run(spec, args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MissingDependency as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
