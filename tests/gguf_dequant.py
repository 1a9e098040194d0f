#!/usr/bin/env python3
"""Dequantizes tensors of a GGUF file with the `gguf` package (llama.cpp's own Python
reader, an implementation independent of ballast's) for tests/formats_independent.rs.

usage: gguf_dequant.py FILE OUT NAME:ROWS...

Writes, for each NAME (its first ROWS rows), the float32 values little-endian, one tensor
after another, to OUT.
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main():
    path, out, requests = sys.argv[1], sys.argv[2], sys.argv[3:]
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    with open(out, "wb") as f:
        for request in requests:
            name, rows = request.rsplit(":", 1)
            t = tensors[name]
            data = np.asarray(t.data)
            if data.ndim == 1:  # a vector is one row
                data = data.reshape(1, -1)
            # Quantized tensors come as (rows, row bytes) of uint8; float ones as values.
            values = dequantize(data[: int(rows)], t.tensor_type)
            f.write(np.ascontiguousarray(values, dtype="<f4").tobytes())


if __name__ == "__main__":
    main()
