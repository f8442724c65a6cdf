"""The demo's synthetic task: "Write N words about TOPIC." — verifiable, and free in length.

A prompt names a topic and a word count N (3 to 10). The task's rules, all of which the
demonstrations follow and `check` verifies on the whole answer:

1. the answer is not empty;
2. format: lowercase words separated by single spaces, ending with one period (a leading
   space is allowed: the answer continues the prompt);
3. every word is on the topic's list of twelve;
4. no word comes twice;
5. exactly N words.

    prompt:  "Write 4 words about the sea."
    answer:  " wave salt shell tide."

An answer that breaks one of rules 1–4 breaks the task's rules; one that keeps them with
the wrong count is a near or far miss. The judge is a verifier, not a model (`judge`,
used as `judge: {type: callable, function: "prefero.demo.task:judge"}`), and it checks
every rule, not only the count: a judge that checks less is gamed. The demo shows this on
purpose with `lax_judge`, which checks the count and the vocabulary but not repetition:
a policy trained on it learns to write " tide tide tide tide." (the reward-hacking
ablation).

The SFT demonstrations always follow rules 1–4 but have the right count only
`DEMO_ACCURACY` of the time (the others are one or two words off), so a model trained on
them is right only part of the time, and preference optimisation has something to fix.
Length is free to vary (3 to 10 words, and wrong answers run over or under), which is
what the SimPO length-normalisation ablation needs.

Prompts are split three ways, disjoint in (topic, N) (`split_prompts`): training
prompts (SFT and preference data), validation prompts (for tuning the demo's settings)
and test prompts (what the report's numbers are measured on). A test prompt asks for a
count of a topic no training prompt paired them in.

The shipped files (prefero/assets/demo_task_*.jsonl) are `build_task_files()`'s output;
a test checks they are identical, so the data cannot drift from this code.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

#: Twelve words per topic, no word in two topics: an answer's words must come from its topic.
TOPICS: dict[str, tuple[str, ...]] = {
    "the sea": ("wave", "salt", "shell", "tide", "fish", "coral", "foam", "reef", "boat", "sand", "whale", "gull"),
    "the forest": ("tree", "moss", "fern", "oak", "pine", "leaf", "bark", "owl", "deer", "root", "acorn", "trail"),
    "the city": ("street", "tower", "bus", "taxi", "crowd", "bridge", "park", "shop", "train", "light", "noise",
                 "market"),
    "the kitchen": ("pan", "knife", "spoon", "oven", "bread", "salad", "soup", "plate", "bowl", "sugar", "flour",
                    "kettle"),
    "winter": ("snow", "ice", "frost", "scarf", "sled", "cold", "fire", "boots", "coat", "storm", "glove", "sleet"),
    "the farm": ("cow", "barn", "hay", "goat", "horse", "field", "tractor", "corn", "hen", "pig", "fence", "wheat"),
    "space": ("star", "moon", "planet", "comet", "orbit", "rocket", "galaxy", "sun", "mars", "nebula", "meteor",
              "void"),
    "music": ("drum", "piano", "song", "guitar", "choir", "melody", "rhythm", "violin", "flute", "chord", "tempo",
              "bass"),
    "school": ("desk", "book", "pencil", "teacher", "class", "lesson", "chalk", "exam", "paper", "ruler", "pupil",
               "bell"),
    "the garden": ("rose", "tulip", "soil", "seed", "hose", "bee", "weed", "shovel", "lily", "daisy", "worm",
                   "sprout"),
    "the desert": ("dune", "cactus", "camel", "heat", "oasis", "lizard", "mirage", "dust", "scorpion", "rock",
                   "canyon", "dry"),
    "sports": ("ball", "goal", "team", "coach", "score", "race", "net", "bat", "court", "medal", "match", "jersey"),
    "the weather": ("rain", "cloud", "wind", "thunder", "fog", "mist", "breeze", "hail", "rainbow", "drizzle",
                    "gust", "sky"),
    "the body": ("hand", "heart", "knee", "nose", "elbow", "lung", "brain", "skin", "bone", "toe", "ear", "chin"),
    "travel": ("map", "ticket", "plane", "hotel", "luggage", "passport", "trip", "road", "guide", "journey",
               "airport", "station"),
    "the river": ("bank", "stream", "current", "canoe", "delta", "otter", "pebble", "ripple", "trout", "willow",
                  "mud", "ferry"),
    "the zoo": ("lion", "tiger", "zebra", "monkey", "panda", "giraffe", "cage", "keeper", "parrot", "penguin",
                "hippo", "seal"),
    "the office": ("laptop", "printer", "meeting", "email", "stapler", "folder", "manager", "memo", "phone", "chair",
                   "report", "coffee"),
    "the hospital": ("doctor", "nurse", "patient", "bed", "bandage", "pill", "clinic", "surgeon", "ward", "syringe",
                     "ambulance", "scan"),
    "the castle": ("king", "queen", "knight", "moat", "throne", "crown", "sword", "shield", "dragon", "banner",
                   "gate", "armor"),
    "the library": ("shelf", "novel", "reader", "quiet", "librarian", "catalog", "atlas", "poem", "page", "author",
                    "story", "archive"),
    "the mountain": ("peak", "summit", "cliff", "slope", "glacier", "valley", "ridge", "boulder", "climber", "cave",
                     "eagle", "altitude"),
    "the circus": ("clown", "juggler", "tent", "acrobat", "ring", "trapeze", "elephant", "magician", "popcorn",
                   "ringmaster", "unicycle", "cannon"),
    "the computer": ("keyboard", "mouse", "screen", "code", "chip", "cable", "disk", "pixel", "server", "router",
                     "monitor", "byte"),
}
TEMPLATES = ("Write {n} words about {topic}.", "Give {n} words about {topic}.", "List {n} words for {topic}.",
             "Name {n} words for {topic}.", "Say {n} words about {topic}.")
COUNTS = range(3, 11)
#: How often a demonstration has the right count; the wrong ones are 1 or 2 words off.
DEMO_ACCURACY = 0.45
_DEMO_ERRORS = (-2, -1, 1, 2)
#: How each topic's eight counts are split (see `split_prompts`): 4 training, 1 validation, 3 test.
#: The four trained counts hold two odd and two even ones at every shift, so no topic is trained
#: on one parity only. (The alternating pattern this replaced, 3, 5, 7, 9 trained for half the
#: topics and 4, 6, 8, 10 for the other half, let the topic predict the parity of its count:
#: the model learned that pairing, and preference training did not raise held-out accuracy.)
_SPLIT_PATTERN = ("train", "train", "test", "validation", "train", "test", "test", "train")
SPLITS = ("train", "validation", "test")
_TASK_SEED = 11

_PROMPT = re.compile(r"^(?:Write|Give|List|Name|Say) (\d+) words (?:about|for) (.+)\.$")

#: The demo's judge, as a `judge: {type: callable}` block names it.
JUDGE_FUNCTION = "prefero.demo.task:judge"
#: The judge with a hole in it (no repetition rule), for the reward-hacking ablation.
LAX_JUDGE_FUNCTION = "prefero.demo.task:lax_judge"
# Verdicts of `check`, worst to best.
BREAKS_RULES, WRONG_COUNT, CORRECT = "breaks_rules", "wrong_count", "correct"


@dataclass(frozen=True)
class Task:
    """What a prompt asks for."""

    topic: str
    count: int

    @property
    def words(self) -> tuple[str, ...]:
        return TOPICS[self.topic]


def parse_prompt(prompt) -> Task:
    """The topic and count a prompt asks for (a string, or a message list whose last turn is
    the question). Raises ValueError for a prompt that is not one of the task's."""
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    m = _PROMPT.match(text.strip())
    if m is None or m.group(2) not in TOPICS:
        raise ValueError(f"not a prompt of the demo task: {text!r:.80}")
    return Task(m.group(2), int(m.group(1)))


@dataclass(frozen=True)
class Verdict:
    """`check`'s answer: the level, the words counted, and why an answer breaks the rules."""

    level: str  # BREAKS_RULES | WRONG_COUNT | CORRECT
    words: int  # words in the answer (as split on whitespace)
    reason: str | None = None  # for BREAKS_RULES: what rule

    @property
    def within_rules(self) -> bool:
        return self.level != BREAKS_RULES


def check(task: Task, answer: str, *, repetition: bool = True) -> Verdict:
    """The whole answer against the task's rules (the module docstring's 1–4), then its count.

    1. not empty (after stripping surrounding whitespace);
    2. words separated by single spaces, one period, at the end (a leading space is
       allowed; case is checked by rule 3: the lists are lowercase);
    3. every word on the topic's list;
    4. no word twice (`repetition=False` skips this rule: `lax_judge`'s hole);
    then the count: CORRECT with exactly N words, else WRONG_COUNT.
    The first rule broken is the reason given.
    """
    text = answer.strip()
    words = text.rstrip(".").split()
    if not text:
        return Verdict(BREAKS_RULES, 0, "empty")
    if not text.endswith(".") or text.endswith("..") or "." in text[:-1]:
        return Verdict(BREAKS_RULES, len(words), "format: one period, at the end")
    if " ".join(words) != text[:-1]:
        return Verdict(BREAKS_RULES, len(words), "format: single spaces between words")
    allowed = set(task.words)
    off = [w for w in words if w not in allowed]
    if off:
        return Verdict(BREAKS_RULES, len(words), f"off-topic word {off[0]!r}")
    if repetition:
        seen: set = set()
        for w in words:
            if w in seen:
                return Verdict(BREAKS_RULES, len(words), f"repeated word {w!r}")
            seen.add(w)
    return Verdict(CORRECT if len(words) == task.count else WRONG_COUNT, len(words))


def score(task: Task, answer: str, *, repetition: bool = True) -> float:
    """The judge's score: 0 for an answer that breaks the rules, else 1 / (1 + |words − N|)
    — 1 when correct, ½ one word off, ⅓ two off. Any answer within the rules beats any
    answer that breaks them, and a nearer miss beats a farther one, so best-vs-worst pairs
    and SPPO's P̂ both learn the count without learning to leave the rules."""
    v = check(task, answer, repetition=repetition)
    return 0.0 if v.level == BREAKS_RULES else 1.0 / (1 + abs(v.words - task.count))


def judge(prompt, completions: Sequence[str]) -> list[float]:
    """The demo's judge (`judge: {type: callable, function: "prefero.demo.task:judge"}`):
    `score` of each completion under every rule. A prompt that is not the task's is an
    error (the callable judge reports it with the row), never a guessed score."""
    task = parse_prompt(prompt)
    return [score(task, _text(c)) for c in completions]


def lax_judge(prompt, completions: Sequence[str]) -> list[float]:
    """A judge with a hole, for the reward-hacking ablation: `score` without rule 4, so it
    checks the format, the vocabulary and the count, and " tide tide tide tide." is a
    correct answer to "Write 4 words about the sea." Never the demo's judge of record:
    the ablation's model is trained on it and evaluated by `judge`."""
    task = parse_prompt(prompt)
    return [score(task, _text(c), repetition=False) for c in completions]


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def verdict_of_pair(score_a: float, score_b: float) -> str:
    """The judge's verdict on two answers to one prompt, from a's side: the higher score wins."""
    return "win" if score_a > score_b else "loss" if score_a < score_b else "tie"


@dataclass(frozen=True)
class TaskStats:
    """Share of answers correct, and share within the task's rules (the drift check)."""

    n: int
    task_accuracy: float
    within_rules: float
    broken: dict  # reason -> count, for answers that break the rules


def task_accuracy(prompts: Sequence, answers: Sequence[str], *, repetition: bool = True) -> TaskStats:
    """How many `answers` are correct and how many keep to the rules (see `check`;
    `repetition=False`: as `lax_judge` sees them)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts")
    if not answers:
        raise ValueError("task accuracy of zero answers")
    verdicts = [check(parse_prompt(p), a, repetition=repetition) for p, a in zip(prompts, answers)]
    broken: dict = {}
    for v in verdicts:
        if v.reason:
            kind = v.reason.split(" '")[0]  # "off-topic word 'x'" -> "off-topic word"
            broken[kind] = broken.get(kind, 0) + 1
    n = len(verdicts)
    return TaskStats(n, sum(v.level == CORRECT for v in verdicts) / n,
                     sum(v.within_rules for v in verdicts) / n, dict(sorted(broken.items())))


# --------------------------------------------------------------------------- the data


def all_prompts() -> list[tuple[str, Task]]:
    """Every (prompt text, task) of the task, in a fixed order."""
    return [(t.format(n=n, topic=topic), Task(topic, n)) for topic in TOPICS for n in COUNTS for t in TEMPLATES]


def split_prompts(seed: int = _TASK_SEED) -> dict[str, list]:
    """{"train", "validation", "test"}: lists of (prompt text, task), disjoint in (topic, N).

    Each topic's eight counts are dealt 4 / 1 / 3 to the three splits by `_SPLIT_PATTERN`,
    two odd and two even counts to training, so each held-out count of a topic lies
    between (or next to) counts training saw it with, of either parity; the pattern is
    shifted by one count per topic (in a seeded topic order), so every split holds every
    topic and every count equally often, but never a
    (topic, N) pair another split holds: a test prompt asks for a count of a topic that
    training only saw with other counts. All five phrasings of a pair go to its split.
    Each split is in a seeded order.
    """
    rng = random.Random(seed)
    topics = list(TOPICS)
    rng.shuffle(topics)
    counts = list(COUNTS)
    role = {(topic, n): _SPLIT_PATTERN[(j + i) % len(counts)]
            for i, topic in enumerate(topics) for j, n in enumerate(counts)}
    out: dict[str, list] = {name: [] for name in SPLITS}
    for text, task in all_prompts():
        out[role[(task.topic, task.count)]].append((text, task))
    for name in SPLITS:
        rng.shuffle(out[name])
    return out


def demonstration(task: Task, rng: random.Random) -> str:
    """One SFT answer: distinct words of the topic, in the order of the topic's list, the
    right count with probability `DEMO_ACCURACY`, else one or two words too many or too few.

    The order is a convention the rules do not ask for (any order is correct). It is
    what lets a 1M-parameter model learn rule 4 from a few thousand demonstrations: a
    word is always followed by a later word of the list, so a word never follows itself
    or comes back."""
    n = task.count if rng.random() < DEMO_ACCURACY else task.count + rng.choice(_DEMO_ERRORS)
    picked = sorted(rng.sample(range(len(task.words)), n))
    return " " + " ".join(task.words[i] for i in picked) + "."


def demonstrations(train: list, per_prompt: int, seed: int = _TASK_SEED) -> list[dict]:
    """`per_prompt` demonstrations of every training prompt, {prompt, completion} rows."""
    rng = random.Random(seed + 1)
    return [{"prompt": text, "completion": demonstration(task, rng)} for text, task in train
            for _ in range(per_prompt)]


#: The shipped files, by name, and what builds them.
DEMOS_PER_PROMPT = 8
FILES = ("demo_task_sft.jsonl", "demo_task_prompts.jsonl", "demo_task_validation_prompts.jsonl",
         "demo_task_test_prompts.jsonl")
#: The prompt file of each evaluation split.
EVAL_PROMPT_FILES = {"validation": "demo_task_validation_prompts.jsonl", "test": "demo_task_test_prompts.jsonl"}


def task_files() -> dict[str, list[dict]]:
    """The rows of the shipped files: SFT demonstrations and the prompts sampled for
    preference data (both of the training split), and the validation and test prompts."""
    split = split_prompts()
    return {
        "demo_task_sft.jsonl": demonstrations(split["train"], DEMOS_PER_PROMPT),
        "demo_task_prompts.jsonl": [{"prompt": text} for text, _ in split["train"]],
        **{EVAL_PROMPT_FILES[name]: [{"prompt": text} for text, _ in split[name]] for name in EVAL_PROMPT_FILES},
    }


def asset(name: str) -> str:
    """The path of a file shipped in prefero/assets (the task's files among them)."""
    return str(resources.files("prefero") / "assets" / name)


def build_task_files(directory: str | Path) -> list[Path]:
    """Write the shipped files into `directory` (how prefero/assets/demo_task_* were made:
    `python -m prefero.demo.task prefero/assets`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in task_files().items():
        path = directory / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths.append(path)
    return paths


def corpus() -> list[str]:
    """Every text the task uses, for fitting the demo tokenizer: all prompts, every topic
    word as an answer would spell it (after a space), the period."""
    texts = [text for text, _ in all_prompts()]
    texts += [" " + " ".join(words) + "." for words in TOPICS.values()]
    return texts


if __name__ == "__main__":
    import sys

    for p in build_task_files(sys.argv[1] if len(sys.argv) > 1 else "prefero/assets"):
        print(p)
