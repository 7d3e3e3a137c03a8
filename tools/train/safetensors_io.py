"""Hand-written safetensors I/O (no `safetensors` package needed), shared by the training scripts
and tools/fixtures/make_fixtures.py.

Layout: 8-byte little-endian header length, JSON header (compact, space-padded to a multiple of 8,
tensors in the given order then "__metadata__": {"format": "pt"}), then the raw little-endian
tensor data back to back.
"""
import json
import struct

import numpy as np
import torch

DTYPES = ("F32", "F16", "BF16")


def tensor_bytes(t, dtype):
    """Little-endian bytes of tensor t stored as dtype (F32, F16 or BF16). Values are cast straight
    from t's own dtype, so a float64 tensor already rounded to dtype is stored exactly."""
    t = t.detach().cpu()
    if dtype == "F32":
        return t.to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
    if dtype == "F16":
        return t.to(torch.float16).contiguous().numpy().astype("<f2").tobytes()
    if dtype == "BF16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtype="F32"):
    """tensors: list of (name, tensor), all stored as dtype. Returns the size of the data section
    in bytes (the total_size of a sharded model's index)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors:
        data = tensor_bytes(t, dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    return offset


def read_safetensors(path):
    """-> {name: numpy array} (F32 -> float32, F16 -> float16, BF16 -> float32, exact)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        chunk = data[b:e]
        if info["dtype"] == "F32":
            arr = np.frombuffer(chunk, dtype="<f4")
        elif info["dtype"] == "F16":
            arr = np.frombuffer(chunk, dtype="<f2")
        elif info["dtype"] == "BF16":
            arr = (np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(info["dtype"])
        out[name] = arr.reshape(info["shape"]).copy()
    return out
