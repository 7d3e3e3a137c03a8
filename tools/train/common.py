"""Shared helpers for the training scripts: paths, JSON, the exported world data."""
import json
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_DATA = "/tmp/kiln-world"
DEFAULT_MODEL_DIR = os.path.join(ROOT, "models", "kiln-mini")
DEFAULT_CKPT = os.path.join(ROOT, "tools", "train", ".ckpt")


def log(*a):
    print(*a, flush=True)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dump_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def iter_jsonl(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run `node dist/tools/world/export.js --out {data_dir}` first")
    return read_json(path)
