#!/usr/bin/env python3
"""Independent reference for Megatron-LM / GPT-NeoX indexed datasets (PREFIX.idx + PREFIX.bin),
written from the format of megatron/core/datasets/indexed_dataset.py (_IndexWriter, _IndexReader),
not from Switchyard's C++.

  megatron_ref.py write DIR
      For every dtype code 1..8: DIR/d<code>.idx/.bin with seeded random tokens, documents of one
      and of several sequences and an empty one; DIR/d<code>.expected holds three lines: the
      tokens, the token offsets of the documents, the document index (space-separated).
  megatron_ref.py check PREFIX DOC...
      Reads PREFIX.idx/.bin the way Megatron's reader does and checks that the dataset is the byte
      tokenization of the documents DOC... (bytes, then token 0 per document), one sequence per
      document, doc_idx 0..n, dtype uint16. Exit 0 and "ok" when it is.
"""
import struct
import sys

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}


def write_dataset(prefix, code, sequences, doc_idx):
    dtype = DTYPES[code]
    arrays = [np.asarray(s, dtype=dtype) for s in sequences]
    with open(prefix + ".bin", "wb") as f:
        for a in arrays:
            f.write(a.tobytes(order="C"))
    itemsize = np.dtype(dtype).itemsize
    lengths = [len(a) for a in arrays]
    pointers, at = [], 0
    for n in lengths:
        pointers.append(at)
        at += n * itemsize
    with open(prefix + ".idx", "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(np.array(lengths, dtype=np.int32).tobytes())
        f.write(np.array(pointers, dtype=np.int64).tobytes())
        f.write(np.array(doc_idx, dtype=np.int64).tobytes())


def read_dataset(prefix):
    """Megatron's _IndexReader + _MMapBinReader, reduced: (dtype code, sequences, doc_idx)."""
    with open(prefix + ".idx", "rb") as stream:
        assert stream.read(9) == MAGIC, "bad header"
        (version,) = struct.unpack("<Q", stream.read(8))
        assert version == 1, "bad version"
        (code,) = struct.unpack("<B", stream.read(1))
        (seq_count,) = struct.unpack("<Q", stream.read(8))
        (doc_count,) = struct.unpack("<Q", stream.read(8))
        offset = stream.tell()
    buf = np.memmap(prefix + ".idx", mode="r", order="C")
    lengths = np.frombuffer(buf, dtype=np.int32, count=seq_count, offset=offset)
    pointers = np.frombuffer(buf, dtype=np.int64, count=seq_count, offset=offset + lengths.nbytes)
    doc_idx = np.frombuffer(buf, dtype=np.int64, count=doc_count, offset=offset + lengths.nbytes + pointers.nbytes)
    assert buf.nbytes == offset + lengths.nbytes + pointers.nbytes + doc_idx.nbytes, "index size"
    data = np.memmap(prefix + ".bin", mode="r", order="C")
    seqs = [np.frombuffer(data, dtype=DTYPES[code], count=int(n), offset=int(p)) for n, p in zip(lengths, pointers)]
    return code, seqs, list(doc_idx)


def cmd_write(out):
    rng = np.random.default_rng(20240520)
    for code, dtype in DTYPES.items():
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            lo, hi = max(int(info.min), -(2**31)), min(int(info.max), 2**31 - 1)
        else:
            lo, hi = 0, 1 << 20  # integral values, exact in float32
        n_seq = 9
        lengths = [int(x) for x in rng.integers(1, 40, size=n_seq)]
        lengths[4] = 0  # an empty sequence
        seqs = [rng.integers(lo, hi, size=n, endpoint=True) for n in lengths]
        seqs[0][:2] = [lo, hi]  # the extremes of the range
        doc_idx = [0, 1, 4, 4, 7, 9]  # one-sequence, three-sequence, empty and two-sequence documents
        write_dataset(f"{out}/d{code}", code, seqs, doc_idx)
        tokens = np.concatenate(seqs).astype(np.int64)
        seq_off = np.concatenate([[0], np.cumsum(lengths)])
        doc_off = [int(seq_off[i]) for i in doc_idx]
        with open(f"{out}/d{code}.expected", "w") as f:
            f.write(" ".join(str(int(t)) for t in tokens) + "\n")
            f.write(" ".join(map(str, doc_off)) + "\n")
            f.write(" ".join(map(str, doc_idx)) + "\n")


def cmd_check(prefix, docs):
    code, seqs, doc_idx = read_dataset(prefix)
    want = []
    for d in docs:
        with open(d, "rb") as f:
            want.append(list(f.read()) + [0])
    assert code == 8, f"dtype code {code}, want 8 (uint16)"
    assert len(seqs) == len(want), f"{len(seqs)} sequences, want {len(want)}"
    assert doc_idx == list(range(len(want) + 1)), f"doc_idx {doc_idx[:10]}..."
    for i, (s, w) in enumerate(zip(seqs, want)):
        assert s.tolist() == w, f"sequence {i} differs from document {docs[i]}"
    print("ok")


if __name__ == "__main__":
    if sys.argv[1] == "write":
        cmd_write(sys.argv[2])
    elif sys.argv[1] == "check":
        cmd_check(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
