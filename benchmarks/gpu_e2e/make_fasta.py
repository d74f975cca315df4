"""Writes N random proteins with UniRef-like lengths (lognormal, median 260, 30..1500)."""

import sys

import numpy as np

ALPHABET = np.frombuffer(b"LAGVSERTIDPKQNFYMHWC", dtype=np.uint8)


def main(path: str, count: int) -> None:
    rng = np.random.default_rng(7)
    with open(path, "w") as out:
        for i in range(count):
            length = int(np.clip(rng.lognormal(np.log(260), 0.6), 30, 1500))
            residues = ALPHABET[rng.integers(0, 20, length)].tobytes().decode()
            out.write(f">p{i}\n{residues}\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
