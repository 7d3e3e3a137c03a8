#!/usr/bin/python3
"""Train the byte-level BPE tokenizer of kiln-mini on the exported training conversations.

    /usr/bin/python3 tools/train/train_tokenizer.py --data /tmp/kiln-world --out models/kiln-mini

Writes tokenizer.json and tokenizer_config.json (chat template from the export's meta.json), then,
when node and @huggingface/tokenizers are installed, checks that the JS library encodes and decodes
sample conversations exactly as this encoder does.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import ByteLevelBPE, count_words, learn_merges  # noqa: E402
from common import DEFAULT_DATA, DEFAULT_MODEL_DIR, ROOT, dump_json, iter_jsonl, log, read_meta  # noqa: E402

MODEL_MAX_LENGTH = 512


def corpus_texts(data_dir, limit_chars):
    n = 0
    for ex in iter_jsonl(os.path.join(data_dir, "train.jsonl")):
        text = "".join(t for t, _ in ex["segments"])
        n += len(text)
        yield text
        if n >= limit_chars:
            break


def js_check(out_dir, texts, tok):
    mod = os.path.join(ROOT, "node_modules", "@huggingface", "tokenizers")
    if shutil.which("node") is None or not os.path.isdir(mod):
        log("node or @huggingface/tokenizers not found; skipping the JS tokenizer check")
        return
    script = r"""
import fs from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
const d = process.argv[1];
const t = new Tokenizer(JSON.parse(fs.readFileSync(d + '/tokenizer.json', 'utf8')),
                        JSON.parse(fs.readFileSync(d + '/tokenizer_config.json', 'utf8')));
const texts = JSON.parse(fs.readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(texts.map((s) => {
  const ids = t.encode(s, { add_special_tokens: false }).ids;
  return { ids, decoded: t.decode(ids, { skip_special_tokens: false }) };
})));
"""
    res = subprocess.run(["node", "--input-type=module", "-e", script, os.path.abspath(out_dir)], cwd=ROOT,
                         input=json.dumps(texts), capture_output=True, text=True, check=True)
    for s, r in zip(texts, json.loads(res.stdout)):
        py = tok.encode(s)
        if py != r["ids"]:
            raise SystemExit(f"JS/Python tokenizer mismatch for {s[:200]!r}:\n py={py[:60]}\n js={r['ids'][:60]}")
        if r["decoded"] != s:
            raise SystemExit(f"JS decode mismatch: {s[:200]!r} -> {r['decoded'][:200]!r}")
    log(f"JS tokenizer check OK ({len(texts)} texts)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--corpus-chars", type=int, default=6_000_000, help="characters of training text to learn from")
    args = ap.parse_args()
    meta = read_meta(args.data)
    specials = meta["special_tokens"]
    t0 = time.time()
    counts = count_words(corpus_texts(args.data, args.corpus_chars), specials)
    log(f"bpe: {len(counts)} distinct words, {sum(counts.values())} words ({time.time() - t0:.1f}s)")
    num_merges = args.vocab_size - 256 - len(specials)
    merges = learn_merges(counts, num_merges, log=log)
    tok = ByteLevelBPE(merges, specials)
    log(f"bpe: vocab {tok.vocab_size} learned in {time.time() - t0:.1f}s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok.tokenizer_json(), f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    dump_json(os.path.join(args.out, "tokenizer_config.json"),
              tok.tokenizer_config(meta["chat_template"], meta["eos_token"], meta["pad_token"], MODEL_MAX_LENGTH))
    samples = [t for _, t in zip(range(40), corpus_texts(args.data, 10 ** 9))]
    samples += [json.loads(line)["prompt"] for _, line in zip(range(40), open(os.path.join(args.data, "eval.jsonl")))]
    samples += ["Hello there! It's 2024 \u2014 caf\u00e9 \u2615 \u2026 tabs\tand  spaces\n\n\nend", "  leading spaces and 123456"]
    js_check(args.out, samples, tok)


if __name__ == "__main__":
    main()
