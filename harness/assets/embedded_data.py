"""The embedded default data: a deterministic generator of instruction/response pairs.

No instruction dataset can be fetched offline, so we generate skills that a 135M model measurably
learns in a few minutes of CPU training and that an exact-match task scores: two-digit addition,
arithmetic sequences, sorting digits, reversing word order and upper-casing. The base instruct
model answers most of them verbosely or wrongly (exact match ~0); a tuned one answers tersely.

Train and held-out never overlap: every problem is assigned to one split by a hash of its
content, and each split draws only problems assigned to it.
"""

import hashlib
import random
from collections.abc import Callable

WORDS = [
    "apple",
    "river",
    "green",
    "stone",
    "cloud",
    "music",
    "table",
    "window",
    "garden",
    "yellow",
    "silver",
    "paper",
    "orange",
    "forest",
    "bread",
    "candle",
    "winter",
    "summer",
    "mountain",
    "ocean",
    "rabbit",
    "tiger",
    "pencil",
    "basket",
    "coffee",
    "bottle",
    "doctor",
    "yellow",
    "planet",
    "rocket",
    "spider",
    "castle",
    "button",
    "dragon",
    "guitar",
    "island",
    "jacket",
    "ladder",
    "market",
    "number",
    "pillow",
    "rainbow",
    "shadow",
    "ticket",
    "violin",
    "wallet",
    "zebra",
    "anchor",
    "bridge",
    "camera",
    "desert",
    "engine",
    "feather",
    "hammer",
    "kettle",
    "lemon",
    "mirror",
    "needle",
    "orbit",
    "puzzle",
    "quiet",
    "saddle",
    "thunder",
    "velvet",
    "whistle",
]
WORDS = sorted(set(WORDS))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}? Reply with the number only.", str(a + b)


def _sequence(rng: random.Random) -> tuple[str, str]:
    start, step = rng.randint(1, 30), rng.randint(2, 9)
    seq = ", ".join(str(start + i * step) for i in range(4))
    return f"Give the next number in the sequence: {seq}", str(start + 4 * step)


def _sort(rng: random.Random) -> tuple[str, str]:
    digits = rng.sample(range(10), 4)
    return (
        f"Sort these digits in ascending order: {' '.join(map(str, digits))}",
        " ".join(map(str, sorted(digits))),
    )


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, 3)
    return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words))


def _upper(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, 2)
    return f"Write these words in capital letters: {' '.join(words)}", " ".join(words).upper()


SKILLS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add,
    "sequence": _sequence,
    "sort": _sort,
    "reverse": _reverse,
    "upper": _upper,
}
HELDOUT_BUCKETS = 5  # 1 in 5 problems belongs to held-out


def _is_heldout(instruction: str) -> bool:
    return int(hashlib.sha1(instruction.encode()).hexdigest(), 16) % HELDOUT_BUCKETS == 0


def _draw(n: int, *, heldout: bool, rng: random.Random) -> list[dict[str, str]]:
    out, seen, names = [], set(), sorted(SKILLS)
    for attempt in range(200 * n + 1000):
        if len(out) == n:
            return out
        instruction, answer = SKILLS[names[attempt % len(names)]](rng)
        if instruction in seen or _is_heldout(instruction) != heldout:
            continue
        seen.add(instruction)
        out.append({"instruction": instruction, "input": "", "output": answer})
    raise ValueError(f"could not draw {n} distinct {'held-out' if heldout else 'train'} problems")


def generate_embedded(num_train: int, num_heldout: int, *, seed: int) -> tuple[list, list]:
    """(train, held-out) Alpaca-format examples; deterministic for a seed."""
    train = _draw(num_train, heldout=False, rng=random.Random(f"train-{seed}"))
    heldout = _draw(num_heldout, heldout=True, rng=random.Random(f"heldout-{seed}"))
    return train, heldout
