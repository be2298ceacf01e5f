"""A soak worker process: ``soak_worker.py ADDRESS THREADS SECONDS``. Its threads
push dense and sparse gradients until the time is up, then it prints how many
pushes were acknowledged. Any error ends it with a non-zero exit."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np

from adamax_ps.client import Adamax, IndexedSlices, connect


def main(address: str, threads: int, seconds: float) -> None:
    cluster = connect(address)
    opt = Adamax(learning_rate=0.001, name="soak", cluster=cluster)
    emb = cluster.variable("soak/emb", shape=(20_000, 16), initializer="random_normal")
    dense = cluster.variable("soak/dense", shape=(16_384,))
    counts = [0] * threads
    failures: list[BaseException] = []
    deadline = time.monotonic() + seconds

    def work(k: int) -> None:
        rng = np.random.default_rng(k)
        try:
            while time.monotonic() < deadline:
                if counts[k] % 2:
                    rows = rng.integers(0, 20_000, 256)
                    g = IndexedSlices(
                        rng.normal(size=(256, 16)).astype(np.float32), rows
                    )
                    opt.apply_gradients([(g, emb)])
                else:
                    opt.apply_gradients(
                        [(rng.normal(size=16_384).astype(np.float32), dense)]
                    )
                counts[k] += 1
        except BaseException as e:  # reported by the parent
            failures.append(e)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    cluster.close()
    if failures:
        raise SystemExit(f"soak worker failed: {failures[0]!r}")
    print(sum(counts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
