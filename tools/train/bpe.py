"""Byte-level BPE: a trainer with incremental pair counts, an encoder, and writers for the
Hugging Face tokenizer.json / tokenizer_config.json that @huggingface/tokenizers (JS) and
transformers both read.

Conventions (the same as tools/fixtures/make_fixtures.py, which the JS library is tested against):
ids 0..255 are the byte-level characters of bytes 0..255, then one id per merge in order, then the
special tokens as added_tokens; merges are written as [a, b] pairs; no normalizer; ByteLevel
pre-tokenizer with the GPT-2 regex and no prefix space; ByteLevel decoder.
"""
import json
import re
from collections import Counter, defaultdict


def bytes_to_unicode():
    """GPT-2 byte -> printable unicode char mapping."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}

# GPT-2 pre-tokenizer regex (ByteLevel use_regex=true):
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Python's re has no \p{..}: [^\W\d_] ~ \p{L} and \d ~ \p{N}, exact for the text used here
# (ASCII plus a few punctuation marks such as the em dash).
_L = r"[^\W\d_]"
_N = r"\d"
_O = r"(?:[^\s\w]|_)"
PRETOKENIZE_RE = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?" + _L + r"+| ?" + _N + r"+| ?" + _O + r"+|\s+(?!\S)|\s+"
)


def to_byte_chars(piece):
    return "".join(BYTE_ENCODER[b] for b in piece.encode("utf-8"))


def pre_tokenize(text):
    return [to_byte_chars(p) for p in PRETOKENIZE_RE.findall(text)]


def split_specials(text, specials):
    pattern = "(" + "|".join(re.escape(s) for s in specials) + ")"
    return [s for s in re.split(pattern, text) if s]


def count_words(texts, specials):
    """Pre-tokenized word frequencies over texts (special tokens removed)."""
    counts = Counter()
    for text in texts:
        for section in split_specials(text, specials):
            if section in specials:
                continue
            counts.update(PRETOKENIZE_RE.findall(section))
    return Counter({to_byte_chars(w): c for w, c in counts.items()})


def learn_merges(word_counts, num_merges, log=None):
    """Greedy BPE (most frequent pair; ties -> lexicographically smallest pair) with incremental
    pair counts: after each merge only the words containing the merged pair are recounted."""
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    pair_counts = defaultdict(int)
    where = defaultdict(set)
    for i, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            pair_counts[p] += f
            where[p].add(i)
    merges = []
    for step in range(num_merges):
        if not pair_counts:
            break
        best = min(pair_counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if pair_counts[best] <= 0:
            break
        merges.append(best)
        a, b = best
        merged = a + b
        for i in list(where[best]):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
                if pair_counts[p] <= 0:
                    del pair_counts[p]
            out = []
            j = 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += f
                where[p].add(i)
        del where[best]
        pair_counts.pop(best, None)
        if log and (step + 1) % 250 == 0:
            log(f"bpe: {step + 1}/{num_merges} merges, last {merged!r}")
    return merges


class ByteLevelBPE:
    def __init__(self, merges, specials):
        self.merges = [tuple(m) for m in merges]
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.specials = list(specials)
        self.vocab = {BYTE_ENCODER[b]: b for b in range(256)}
        for a, b in self.merges:
            tok = a + b
            if tok in self.vocab:
                raise ValueError(f"merge {a!r}+{b!r} makes an existing token")
            self.vocab[tok] = len(self.vocab)
        self.special_ids = {}
        for s in self.specials:
            self.special_ids[s] = len(self.vocab) + len(self.special_ids)
        self.vocab_size = len(self.vocab) + len(self.special_ids)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.id_to_token.update({i: s for s, i in self.special_ids.items()})
        self._cache = {}

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            best = None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            a, b = self.merges[best[0]]
            out = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        return parts

    def encode_word(self, word):
        ids = self._cache.get(word)
        if ids is None:
            ids = [self.vocab[t] for t in self.bpe(to_byte_chars(word))]
            self._cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        for section in split_specials(text, self.specials):
            if section in self.special_ids:
                ids.append(self.special_ids[section])
                continue
            for word in PRETOKENIZE_RE.findall(section):
                ids.extend(self.encode_word(word))
        return ids

    def decode(self, ids, skip_special=True):
        out = []
        for i in ids:
            t = self.id_to_token[int(i)]
            if t in self.special_ids:
                if not skip_special:
                    out.append(t.encode("utf-8"))
                continue
            out.append(bytes(BYTE_DECODER[c] for c in t))
        return b"".join(out).decode("utf-8", errors="replace")

    # -- files ------------------------------------------------------------------------------------

    def tokenizer_json(self):
        added = [{
            "id": self.special_ids[s], "content": s, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True,
        } for s in self.specials]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": self.vocab,
                "merges": [[a, b] for a, b in self.merges],
            },
        }

    def tokenizer_config(self, chat_template, eos_token, pad_token, model_max_length):
        return {
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {
                str(self.special_ids[s]): {"content": s, "lstrip": False, "normalized": False,
                                           "rstrip": False, "single_word": False, "special": True}
                for s in self.specials
            },
            "additional_special_tokens": [s for s in self.specials if s != pad_token],
            "bos_token": None,
            "chat_template": chat_template,
            "clean_up_tokenization_spaces": False,
            "eos_token": eos_token,
            "errors": "replace",
            "model_max_length": model_max_length,
            "pad_token": pad_token,
            "split_special_tokens": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        }

    @classmethod
    def from_tokenizer_json(cls, path):
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in tj["model"]["merges"]]
        specials = [t["content"] for t in sorted(tj["added_tokens"], key=lambda t: t["id"])]
        tok = cls(merges, specials)
        if tok.vocab != tj["model"]["vocab"]:
            raise ValueError(f"{path}: vocab does not follow the bytes-merges-specials layout")
        return tok
