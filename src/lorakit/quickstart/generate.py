"""Generate the quickstart data set, `restaurants.jsonl`: 360 fictional restaurants described in English.

The data is synthetic and small on purpose: it lets `lorakit quickstart` fine-tune a 135M model on a
laptop CPU in minutes and still show a visible before/after difference. Each line is
`{"mr": ..., "ref": ..., "split": "train" | "heldout"}`. `mr` is a meaning representation in the format
of the E2E NLG Challenge (Novikova et al., 2017), with E2E's eight slots and value sets -- name,
eatType, food, priceRange, customer rating, area, familyFriendly, near -- where `name` is always
present and two to seven others are drawn at random, so an MR has 3 to 8 slots. `ref` is one or two
sentences, built by this file from five sentence plans and several phrasings per slot value, that
realize every slot of the MR exactly once and mention nothing else. Restaurant and landmark names are
made up here; no text is copied from E2E. The first 320 lines are for training and the last 40 are
held out, and no MR occurs twice. Because one program wrote every reference, the set is far more
regular than human-written E2E (one reference per MR, a closed vocabulary): scores on it show that
fine-tuning worked, not how a model would do on E2E. Regenerate with
`python -m lorakit.quickstart.generate > src/lorakit/quickstart/restaurants.jsonl`; the output
depends only on SEED and the tables below, and a test checks the shipped file still matches.
"""

import json
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

SEED = 2021
TOTAL = 360
TRAIN = 320

SLOTS = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")
"""E2E's slots in E2E's order, which is also the order they are written in an MR."""

VALUES: dict[str, tuple[str, ...]] = {
    "eatType": ("pub", "coffee shop", "restaurant"),
    "food": ("Chinese", "English", "French", "Fast food", "Indian", "Italian", "Japanese"),
    "priceRange": ("cheap", "moderate", "high", "less than £20", "£20-25", "more than £30"),
    "customer rating": ("low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"),
    "area": ("city centre", "riverside"),
    "familyFriendly": ("yes", "no"),
}
"""E2E's value sets for every slot except the two names."""

NAME_ADJECTIVES = (
    "Golden", "Copper", "Silver", "Crooked", "Velvet", "Hidden", "Rusty", "Painted", "Lucky", "Quiet",
    "Scarlet", "Wandering", "Gilded", "Merry", "Sleepy", "Amber",
)  # fmt: skip
NAME_NOUNS = (
    "Fox", "Kettle", "Lantern", "Anchor", "Otter", "Hare", "Bell", "Oak", "Compass", "Thimble", "Heron",
    "Teapot", "Fiddle", "Acorn", "Badger", "Quill",
)  # fmt: skip
LANDMARKS = (
    "Café Lumière", "Café Amalfi", "Café Verde", "Bluebell Bakery", "Kingfisher Inn", "Rosewood Hotel",
    "Juniper Books", "Saffron Kitchen", "The Lamplighter", "The Brass Monkey", "Yellow Tram Noodle Bar",
    "Harbour View Hotel", "Marigold Tea Rooms", "The Old Forge", "Larkspur Gallery", "Pebble Lane Deli",
)  # fmt: skip
"""Values of `near`: other places, as in E2E, but made up."""

GENERIC_HEADS = ("place", "venue", "spot")
"""What the place is called when the MR has no eatType, so the text never invents one."""

PRE_ORDER = ("customer rating", "priceRange", "familyFriendly", "food")
"""English adjective order before the head noun: a highly rated cheap family-friendly Italian pub."""


@dataclass(frozen=True)
class Phrasings:
    """Ways to say one slot value: before the head noun, after it, or as a verb phrase after "It"."""

    pre: tuple[str, ...]
    post: tuple[str, ...]
    verb: tuple[str, ...]

    def of(self, role: str) -> tuple[str, ...]:
        """The phrasings for `role`: "pre", "post" or "verb"."""
        return {"pre": self.pre, "post": self.post, "verb": self.verb}[role]


@dataclass(frozen=True)
class Example:
    """One line of restaurants.jsonl."""

    mr: str
    ref: str
    split: Literal["train", "heldout"]


def phrasings(slot: str, value: str) -> Phrasings:
    """Every phrasing of `slot[value]`; each contains the value itself, except familyFriendly's."""
    if slot == "food":
        dish = "fast food" if value == "Fast food" else f"{value} food"
        cuisine = "fast food" if value == "Fast food" else f"{value} cuisine"
        adjective = "fast food" if value == "Fast food" else value
        return Phrasings(
            (adjective,), (f"serving {dish}", f"offering {cuisine}"), (f"serves {dish}", f"offers {cuisine}")
        )
    if slot == "priceRange":
        return _price(value)
    if slot == "customer rating":
        return _rating(value)
    if slot == "area":
        where = ("in the city centre",) if value == "city centre" else ("by the riverside", "in the riverside area")
        return Phrasings((), where, tuple(f"is {w}" for w in where) + (f"is located {where[0]}",))
    if slot == "familyFriendly" and value == "yes":
        return Phrasings(
            ("family-friendly", "kid-friendly"),
            ("that is family-friendly", "where children are welcome"),
            ("is family-friendly", "welcomes children", "is a good choice for families"),
        )
    if slot == "familyFriendly":
        return Phrasings(
            (),
            ("that is not family-friendly", "where children are not welcome"),
            ("is not family-friendly", "does not welcome children", "is not suitable for kids"),
        )
    if slot == "near":
        return Phrasings(
            (), (f"near {value}", f"close to {value}"), (f"is near {value}", f"is a short walk from {value}")
        )
    raise ValueError(f"no phrasings for slot {slot!r}; name and eatType are placed by the sentence plans")


def _price(value: str) -> Phrasings:
    if value == "cheap":
        return Phrasings(("cheap",), ("with cheap prices",), ("is cheap", "has cheap prices"))
    if value == "moderate":
        return Phrasings(
            ("moderately priced",), ("with moderate prices",), ("is moderately priced", "has moderate prices")
        )
    if value == "high":
        return Phrasings(
            ("high-priced",),
            ("with high prices", "in the high price range"),
            ("has high prices", "is in the high price range"),
        )
    if value == "£20-25":
        return Phrasings((), ("in the £20-25 price range",), ("costs £20-25 per person", "charges £20-25 a head"))
    return Phrasings((), (f"with prices of {value}", f"where meals cost {value}"), (f"charges {value} per person",))


def _rating(value: str) -> Phrasings:
    if value == "low":
        return Phrasings(
            ("low-rated",),
            ("with a low customer rating",),
            ("has a low customer rating", "is rated low by customers"),
        )
    if value == "average":
        return Phrasings(
            (),
            ("with an average customer rating",),
            ("has an average customer rating", "is rated average by customers"),
        )
    if value == "high":
        return Phrasings(
            ("highly rated",),
            ("with a high customer rating",),
            ("has a high customer rating", "is highly rated by customers"),
        )
    return Phrasings(
        (),
        (f"with a customer rating of {value}", f"rated {value} by customers"),
        (f"has a customer rating of {value}", f"is rated {value} by its customers"),
    )


def format_mr(slots: dict[str, str]) -> str:
    """E2E's MR syntax: `name[The Golden Fox], eatType[pub], ...`, slots in E2E's order."""
    return ", ".join(f"{slot}[{slots[slot]}]" for slot in SLOTS if slot in slots)


def random_mr(rng: random.Random) -> dict[str, str]:
    """A name plus two to seven other slots with random values."""
    if rng.random() < 0.75:
        name = f"The {rng.choice(NAME_ADJECTIVES)} {rng.choice(NAME_NOUNS)}"
    else:
        first, second = rng.sample(NAME_NOUNS, 2)
        name = f"The {first} and {second}"
    others = rng.sample(SLOTS[1:], rng.randint(2, 7))
    slots = {"name": name}
    for slot in others:
        slots[slot] = rng.choice(LANDMARKS) if slot == "near" else rng.choice(VALUES[slot])
    return slots


def describe(rng: random.Random, slots: dict[str, str]) -> str:
    """One or two sentences realizing every slot of `slots` once and nothing else."""
    pre: list[tuple[str, str]] = []
    post: list[str] = []
    verb: list[str] = []
    others = [slot for slot in SLOTS[2:] if slot in slots]
    rng.shuffle(others)
    for slot in others:
        ways = phrasings(slot, slots[slot])
        # At most two adjectives, two trailing phrases and one relative clause keep the noun phrase
        # readable; everything else becomes a verb phrase.
        fitting = [p for p in ways.post if not (_is_clause(p) and any(map(_is_clause, post)))]
        roles = ["verb"] + (["pre"] if ways.pre and len(pre) < 2 else [])
        roles += ["post"] if fitting and len(post) < 2 else []
        role = rng.choice(roles)
        if role == "pre":
            pre.append((slot, rng.choice(ways.pre)))
        elif role == "post":
            post.append(rng.choice(fitting))
        else:
            verb.append(rng.choice(ways.verb))
    adjectives = [phrase for _, phrase in sorted(pre, key=lambda item: PRE_ORDER.index(item[0]))]
    noun = " ".join([*adjectives, slots.get("eatType") or rng.choice(GENERIC_HEADS)])
    np = f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"
    # A relative clause goes right after the head noun: after "near Café Verde" its "where" would
    # seem to describe the café.
    post.sort(key=lambda phrase: not _is_clause(phrase))
    trailing = "".join(f" {p}" if i == 0 else f", {p}" for i, p in enumerate(post))
    if not adjectives and not post and "eatType" not in slots:
        return f"{slots['name']} {_join(verb)}."  # "X is a place." would say nothing
    return _plan(rng, slots["name"], np, trailing, verb)


def _is_clause(phrase: str) -> bool:
    return phrase.startswith(("that ", "where "))


def _plan(rng: random.Random, name: str, np: str, trailing: str, verbs: Sequence[str]) -> str:
    # Three plans put the verb phrases in a second sentence starting "It"; the apposition and the
    # relative clause fold them into the one sentence. The apposition needs more than "A place,", and
    # the relative clause no trailing phrase, whose last noun its "that" would seem to describe.
    plans = ["is", "there is", "looking for"]
    plans += (["apposition"] if verbs and np.count(" ") + len(trailing) > 1 else []) + (
        ["relative"] if verbs and not trailing else []
    )
    plan = rng.choice(plans)
    things = _join(verbs) if verbs else ""
    if plan == "apposition":
        return f"{np[0].upper()}{np[1:]}{trailing}, {name} {things}."
    if plan == "relative":
        return f"{name} is {np} that {things}."
    first = {
        "is": f"{name} is {np}{trailing}.",
        "there is": f"There is {np} called {name}{trailing}.",
        "looking for": f"If you are looking for {np}{trailing}, try {name}.",
    }[plan]
    return f"{first} It {things}." if verbs else first


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def generate(seed: int = SEED, total: int = TOTAL, train: int = TRAIN) -> list[Example]:
    """`total` examples with distinct MRs; the first `train` are split "train", the rest "heldout"."""
    rng = random.Random(seed)
    examples: list[Example] = []
    seen: set[str] = set()
    while len(examples) < total:
        slots = random_mr(rng)
        mr = format_mr(slots)
        if mr in seen:
            continue
        seen.add(mr)
        examples.append(Example(mr, describe(rng, slots), "train" if len(examples) < train else "heldout"))
    return examples


def to_jsonl(examples: Sequence[Example]) -> str:
    """One JSON object per line, keys in the order mr, ref, split, non-ASCII (£, é) written as is."""
    return "".join(json.dumps(asdict(example), ensure_ascii=False) + "\n" for example in examples)


def main() -> None:
    # Bytes, not text: the file must be UTF-8 whatever the locale of the shell redirecting stdout.
    sys.stdout.buffer.write(to_jsonl(generate()).encode("utf-8"))


if __name__ == "__main__":
    main()
