"""`prefero revise`: constitutional critique and revision (docs/pipeline.md; Bai et al., 2022,
"Constitutional AI: Harmlessness from AI Feedback", the supervised stage).

    from prefero.options import load_config
    from prefero.revise import ReviseConfig, run_revise

    report = run_revise(load_config("examples/revise.yaml", ["rounds=2"], cls=ReviseConfig))

For each prompt the model answers (or the row brings its own `response`), then, `rounds`
times, critiques its latest answer against a principle drawn at random from a constitution
and rewrites it. Outputs in `output_dir`: `transcripts.jsonl` (every round), `sft.jsonl`
(prompt -> final revision, for `loss: sft`), `pairs.jsonl` (final revision ≻ original, for
any preference loss) and `revise_report.json`. Any `prefero generate` backend serves the
model, so a large model behind an OpenAI-compatible server can do the critiquing.

Modules: `constitution` (principles file, the seeded draw), `config` (ReviseConfig),
`run` (the stage). Importing this package does not import torch.
"""

from prefero.revise.config import GenerationBlock, ReviseConfig
from prefero.revise.constitution import Principle, default_constitution_path, draw_principle, load_constitution
from prefero.revise.run import (
                                critique_conversation,
                                derive_rows,
                                read_items,
                                revise_batch,
                                revision_conversation,
                                run_revise,
)

__all__ = [
    "GenerationBlock", "Principle", "ReviseConfig", "critique_conversation", "default_constitution_path",
    "derive_rows", "draw_principle", "load_constitution", "read_items", "revise_batch",
    "revision_conversation", "run_revise",
]
