"""What verifying the prepared cache's checksums costs a read: the same reads with and without it, interleaved.

    python benchmarks/bench_checksums.py                  # 256x256x120 int16, 60 rounds
    python benchmarks/bench_checksums.py 512 512 300 30   # realistic size, 30 rounds

"Unverified" skips the check inside the same code path (``_verify_b2nd`` is a no-op; a frame's stored digest
is handed back instead of hashing), so the difference is the verification alone. Medians in ms.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import synthetic_ct  # noqa: E402

from radgenome_hf.access import cache as cm  # noqa: E402
from radgenome_hf.access.cache import PreparedCache  # noqa: E402


def main() -> None:
    shape = tuple(int(x) for x in sys.argv[1:4]) if len(sys.argv) > 3 else (256, 256, 120)
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 60
    ct = np.asfortranarray(synthetic_ct(shape))
    c = PreparedCache(tempfile.mkdtemp())
    chunked, frame = c.key_for(b"chunked"), c.key_for(b"frame")
    c.put_array(chunked, ct)
    c.put_array(frame, ct, layout="frame")
    with open(c.file_for(frame), "rb") as f:
        digest = f.read(4096)[12:20]
    real_verify, real_xxh3 = cm._verify_b2nd, cm._xxh3
    lo = [s // 2 - 24 for s in shape[:2]] + [shape[2] // 2 - 16]
    box = (*lo, lo[0] + 48, lo[1] + 48, lo[2] + 32)
    full = np.empty(ct.shape, ct.dtype, order="F")
    crop = np.empty((48, 48, 32), ct.dtype, order="F")

    def verified(on: bool) -> None:
        cm._verify_b2nd = real_verify if on else (lambda *a, **k: None)
        cm._xxh3 = real_xxh3 if on else (lambda *parts: digest)

    ops = {
        "chunked, full read into out=": lambda: c.get_array(chunked, out=full),
        "chunked, 48x48x32 crop into out=": lambda: c.crop(chunked, box, out=crop),
        "frame, full read into out=": lambda: c.get_array(frame, out=full),
    }
    print(f"# shape={shape} int16, {rounds} rounds, blosc2 zstd-1, chunks 64^3")
    for name, fn in ops.items():
        fn()
        t: dict[bool, list[float]] = {True: [], False: []}
        for r in range(rounds):
            for on in (True, False) if r % 2 else (False, True):
                verified(on)
                t0 = time.perf_counter()
                assert fn() is not None
                t[on].append(time.perf_counter() - t0)
        verified(True)
        v, u = statistics.median(t[True]) * 1e3, statistics.median(t[False]) * 1e3
        print(f"{name:34s} verified {v:8.3f}  unverified {u:8.3f}  cost {v - u:+.3f} ms ({(v / u - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
