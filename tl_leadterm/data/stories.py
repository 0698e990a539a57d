"""The embedded default corpus: short stories from a small seeded grammar.

It exists so that the main job runs with no download, and it is built to have
associations a user can check by eye:

* an animal and the verb it does: ``bird -> flew``, ``fish -> swam``,
  ``frog -> jumped``, ``dog -> barked``, ``cat -> purred``, ``bee -> buzzed``
  (bigram structure, B̄);
* a verb and its setting later in the sentence: ``flew ... sky``,
  ``swam ... pond`` (context structure, Φ̄);
* interchangeable words that occur in the same contexts and are followed by the
  same words: ``car``/``truck``/``bus`` (``drove``), ``mom``/``dad``,
  ``apple``/``cake``/``cookie`` (interchangeability, ΣB̄).

The text is a pure function of the seed: ``default_corpus_texts()`` always
returns the same stories.
"""

from __future__ import annotations

import random

DEFAULT_CORPUS_NAME = "builtin:stories"

ANIMALS = {  # animal: (verb, place phrase)
    "bird": ("flew", "up in the sky"),
    "fish": ("swam", "in the pond"),
    "frog": ("jumped", "by the pond"),
    "dog": ("barked", "in the yard"),
    "cat": ("purred", "on the bed"),
    "bee": ("buzzed", "near the flowers"),
}
VEHICLES = ["car", "truck", "bus"]
PARENTS = ["mom", "dad"]
FOODS = ["apple", "cake", "cookie"]
NAMES = ["tom", "lily", "ben", "sue", "max", "mia"]
MOODS = ["happy", "sad", "tired", "excited"]
COLORS = ["red", "blue", "green", "yellow", "big", "little"]

KNOWN_ASSOCIATIONS = {  # (current token, next token) pairs the grammar makes frequent
    "bird": "flew", "fish": "swam", "frog": "jumped", "dog": "barked",
    "cat": "purred", "bee": "buzzed", "car": "drove", "truck": "drove", "bus": "drove",
}
INTERCHANGEABLE = [tuple(VEHICLES), tuple(PARENTS), tuple(FOODS)]


def _sentence(rng: random.Random, name: str) -> str:
    kind = rng.random()
    if kind < 0.45:
        animal = rng.choice(list(ANIMALS))
        verb, place = ANIMALS[animal]
        color = rng.choice(COLORS)
        return rng.choice([
            f"the {color} {animal} {verb} {place}.",
            f"{name} saw a {animal}. the {animal} {verb} {place}.",
            f"one day, a {animal} {verb} {place}.",
        ])
    if kind < 0.65:
        v = rng.choice(VEHICLES)
        return rng.choice([
            f"the {rng.choice(COLORS)} {v} drove down the road.",
            f"{name} rode in the {v}. the {v} drove to the park.",
        ])
    if kind < 0.85:
        p, f = rng.choice(PARENTS), rng.choice(FOODS)
        return rng.choice([
            f"{p} gave {name} a {f}.",
            f"{name} ate the {f} with {p}.",
            f"{p} said, \"do you want a {f}?\"",
        ])
    mood = rng.choice(MOODS)
    return rng.choice([f"{name} was very {mood}.", f"{name} felt {mood} and smiled."])


def default_corpus_texts(n_stories: int = 1200, seed: int = 0) -> list[str]:
    """The embedded corpus: ``n_stories`` short stories, deterministic in ``seed``."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n_stories):
        name = rng.choice(NAMES)
        body = [f"once upon a time, there was a kid named {name}."]
        body += [_sentence(rng, name) for _ in range(rng.randint(2, 5))]
        body.append(rng.choice(["the end.", f"{name} went home.", "they were happy."]))
        stories.append(" ".join(body))
    return stories
