"""Options for the data loaders and the tokenized records they produce."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataOptions:
    """How to read and tokenize preference / SFT data (README.md#data)."""

    max_length: int = 1024  # prompt + completion tokens, after truncation
    max_prompt_length: int = 512  # prompt tokens; longer prompts keep their end
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    completion_column: str = "completion"  # SFT / unpaired (KTO)
    label_column: str = "label"  # unpaired: True = desirable
    completions_column: str = "completions"  # scored multi-completion records
    scores_column: str = "scores"
    p_chosen_column: str = "p_chosen"  # SPPO win probabilities
    p_rejected_column: str = "p_rejected"
    messages_column: str = "messages"  # SFT conversations
    on_bad_record: str = "error"  # "error": raise DataError; "skip": count it and go on
    split: str | None = None  # which split of a dataset with several (None: the only one)
    binarize: str = "worst"  # scored records: rejected = "worst" or a "random" lower-scored one
    seed: int = 0  # for binarize="random"; combined with the row so it is order-independent

    def validate(self) -> None:
        """Reject nonsense options up front rather than after tokenizing a whole dataset."""
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {self.max_length!r}")
        if not isinstance(self.max_prompt_length, int) or self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be an int >= 1, got {self.max_prompt_length!r}")
        if self.on_bad_record not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {self.on_bad_record!r}")
        if self.binarize not in ("worst", "random"):
            raise ValueError(f"binarize must be 'worst' or 'random', got {self.binarize!r}")


@dataclass
class TokenizedPair:
    """One preference pair as token ids; the prompt is shared by both completions.

    Completion ids end with exactly one stop token (EOS, or a chat template's end-of-turn
    token) unless the completion was truncated or marked as cut at generation.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    p_chosen: float | None = None  # SPPO: estimated P(chosen beats the policy)
    p_rejected: float | None = None
    row: int = 0  # where it came from, for error messages downstream


@dataclass
class TokenizedExample:
    """One prompt + completion as token ids, for SFT and unpaired (KTO) training."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool | None = None  # unpaired: True = desirable; None for SFT
    row: int = 0
