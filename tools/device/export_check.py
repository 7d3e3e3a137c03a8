"""kiln's exports read by transformers and PEFT (run after tools/device/export_check.ts).

    python3 tools/device/export_check.py <work dir>

For each case in <work dir>/cases.json: transformers' logits for the base model folder, for
PeftModel.from_pretrained(base, <the PEFT export>) and for the merged export folder, against
kiln's for the base, the base with the adapter, and the merged folder loaded by kiln. float32 on
the CPU, eager attention (transformers' own reference path). Prints a markdown table; exit 1 when
any pair differs by more than TOLERANCE or an adapter changes nothing.
"""

import json
import sys

import numpy as np
import torch
import transformers
import peft
from transformers import AutoModelForCausalLM
from peft import PeftModel

TOLERANCE = 1e-3  # on logits; float32 sums in a different order differ by ~1e-5 here


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def run(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def main(work):
    spec = json.load(open(f"{work}/cases.json"))
    print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}; kiln logits on {spec['backend']}")
    print()
    print("| model | scaling | base: kiln vs transformers | adapter: kiln vs PEFT | merged: kiln vs transformers | merged vs unmerged (transformers) | adapter moves logits by |")
    print("|---|---|---|---|---|---|---|")
    failed = []
    for case in spec["cases"]:
        shape = (len(case["ids"]), len(case["ids"][0]), case["vocab"])
        kiln = {k: np.array(case[k], dtype=np.float32).reshape(shape) for k in ("base", "adapter", "mergedByKiln")}  # [B, T, vocab]
        base_model = load(case["modelDir"])
        base = run(base_model, case["ids"])
        tuned = run(PeftModel.from_pretrained(base_model, case["peft"]).eval(), case["ids"])
        merged = run(load(case["merged"]), case["ids"])
        diff = lambda a, b: float(np.abs(a - b).max())
        row = {
            "base": diff(kiln["base"], base),
            "peft": diff(kiln["adapter"], tuned),
            "merged": diff(kiln["mergedByKiln"], merged),
            "mergedVsPeft": diff(merged, tuned),
            "moves": diff(base, tuned),
        }
        print(f"| {case['name']} | {'rsLoRA' if case['useRslora'] else 'alpha/r'} | {row['base']:.2e} | {row['peft']:.2e} | {row['merged']:.2e} | {row['mergedVsPeft']:.2e} | {row['moves']:.2e} |")
        if max(row["base"], row["peft"], row["merged"]) > TOLERANCE or row["moves"] < 100 * TOLERANCE:
            failed.append(case["name"])
    print()
    print(f"# {'fail: ' + ', '.join(failed) if failed else 'pass'}: kiln's PEFT and merged exports as transformers and PEFT read them")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
