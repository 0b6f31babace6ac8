"""Regenerate `corpus.txt`: procedurally generated English-like text from a tiny grammar.

Run `python -m param_decomp.data.corpus.make_corpus` to rewrite the shipped file; it is a pure
function of SEED, so the output is byte-identical every time. The grammar has structure a small
LM can learn at several scales: spelling (a closed word list), subject-verb agreement, articles
before adjectives/nouns, clause patterns, counting sequences and small sums whose answer follows
from the question, and paragraphs that repeat their named characters. Nothing is copied from
existing text.
"""

from __future__ import annotations

import random
from pathlib import Path

SEED = 1234
TARGET_BYTES = 240_000
OUT = Path(__file__).with_name("corpus.txt")

NAMES = ["Ada", "Bo", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lin"]
NOUNS = {  # singular -> plural
    "cat": "cats",
    "dog": "dogs",
    "bird": "birds",
    "fox": "foxes",
    "child": "children",
    "robot": "robots",
    "farmer": "farmers",
    "teacher": "teachers",
    "river": "rivers",
    "tree": "trees",
    "box": "boxes",
    "lamp": "lamps",
    "ball": "balls",
    "book": "books",
    "apple": "apples",
    "stone": "stones",
    "boat": "boats",
    "house": "houses",
}
ANIMATE = ["cat", "dog", "bird", "fox", "child", "robot", "farmer", "teacher"]
THINGS = ["tree", "box", "lamp", "ball", "book", "apple", "stone", "boat", "house", "river"]
ADJS = ["red", "small", "old", "quiet", "bright", "heavy", "green", "happy", "tall", "cold"]
VERBS = {  # base (plural subject) -> 3rd person singular
    "see": "sees",
    "find": "finds",
    "carry": "carries",
    "push": "pushes",
    "like": "likes",
    "watch": "watches",
    "hold": "holds",
    "paint": "paints",
    "want": "wants",
    "move": "moves",
}
PREPS = ["near", "under", "behind", "beside", "over", "inside"]
PLACES = ["the garden", "the market", "the hill", "the school", "the harbor", "the forest"]
TIMES = ["in the morning", "at night", "after lunch", "every day", "before the rain"]
NUMBERS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
]


def noun_phrase(rng: random.Random, nouns: list[str], plural: bool) -> str:
    noun = NOUNS[rng.choice(nouns)] if plural else rng.choice(nouns)
    adj = rng.choice(ADJS) + " " if rng.random() < 0.5 else ""
    if plural:
        det = rng.choice(["the ", "some ", "two ", "many ", ""])
    else:
        det = rng.choice(["the ", "a ", "this ", "that "])
        if det == "a " and (adj or noun)[0] in "aeiou":
            det = "an "
    return f"{det}{adj}{noun}"


def simple_sentence(rng: random.Random, subject: str | None = None) -> str:
    plural = subject is None and rng.random() < 0.4
    subj = subject or noun_phrase(rng, ANIMATE, plural)
    verb = rng.choice(list(VERBS))
    verb = verb if plural else VERBS[verb]
    obj = noun_phrase(rng, THINGS, rng.random() < 0.3)
    tail = ""
    r = rng.random()
    if r < 0.3:
        tail = f" {rng.choice(PREPS)} {noun_phrase(rng, THINGS, False)}"
    elif r < 0.5:
        tail = f" in {rng.choice(PLACES)}"
    elif r < 0.65:
        tail = f" {rng.choice(TIMES)}"
    return f"{subj} {verb} {obj}{tail}"


def counting(rng: random.Random) -> str:
    start = rng.randrange(0, 12)
    length = rng.randrange(3, 7)
    return "counting: " + ", ".join(NUMBERS[start : start + length]) + "."


def addition(rng: random.Random) -> str:
    a, b = rng.randrange(0, 10), rng.randrange(0, 9)
    return f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}."


def story(rng: random.Random) -> str:
    """A paragraph about two named characters; later sentences reuse the same names."""
    a, b = rng.sample(NAMES, 2)
    place = rng.choice(PLACES)
    lines = [f"{a} and {b} walk to {place}."]
    for _ in range(rng.randrange(2, 5)):
        who = rng.choice([a, b])
        r = rng.random()
        if r < 0.5:
            lines.append(simple_sentence(rng, subject=who) + ".")
        elif r < 0.7:
            lines.append(f"{who} says that {simple_sentence(rng)}.")
        elif r < 0.85:
            lines.append(
                f"then {who} counts {rng.choice(NUMBERS[2:10])} {NOUNS[rng.choice(THINGS)]}."
            )
        else:
            lines.append(addition(rng))
    lines.append(f"at the end, {a} and {b} go home.")
    return " ".join(lines)


def paragraph(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return story(rng)
    if r < 0.65:
        return " ".join(addition(rng) for _ in range(rng.randrange(2, 5)))
    if r < 0.8:
        return counting(rng)
    sentences = [simple_sentence(rng) for _ in range(rng.randrange(2, 5))]
    return " ".join(s + ("?" if rng.random() < 0.1 else ".") for s in sentences)


def capitalize_sentences(text: str) -> str:
    """Upper-case the first letter of the paragraph and of every sentence after '. ' or '? '."""
    chars = list(text)
    for i, ch in enumerate(chars):
        if i == 0 or (i >= 2 and chars[i - 1] == " " and chars[i - 2] in ".?"):
            chars[i] = ch.upper()
    return "".join(chars)


def make_corpus(seed: int = SEED, target_bytes: int = TARGET_BYTES) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < target_bytes:
        text = capitalize_sentences(paragraph(rng))
        parts.append(text)
        size += len(text) + 1
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    OUT.write_text(make_corpus(), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
