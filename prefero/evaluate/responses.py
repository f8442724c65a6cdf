"""One side's responses in `prefero eval`: generated here from the prompts, or read from a
file and matched to the prompts.

Responses a model generates here are aligned with `prompts` by position (they were
generated from that file, in its order). Responses read from a file (`outputs`,
`baseline_outputs`) are matched to the prompts **by prompt text**, exactly, a prompt
recorded as one user message ([{"role": "user", "content": P}], as `prefero generate`
records a string prompt under a chat template) counting as the string P; a prompt asked
twice takes the file's responses to it in file order. A prompt with no response is an
error naming its row; rows of the file that answer no prompt are counted in the report
(`unused_rows`). Without `prompts` the policy's file sets the prompts.

Generating a side's responses is a stage of output_dir's run (`prefero.stages`: recorded in
output_dir/stages.json with its fingerprint, the sampling keys, the prompts' fingerprint and
the model's weight files): a finished one with the same fingerprint is reused; with another it
is an error naming what changed, or with `overwrite: true` is made again.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from prefero.data.errors import DataError
from prefero.data.formats import Text, Where, text_value
from prefero.data.read import iter_rows
from prefero.evaluate.config import EvalConfig
from prefero.judges import text_key
from prefero.pipeline_io import Prompt, read_jsonl_rows
from prefero.processes import Processes
from prefero.stages import Runner, Stage


def responses_path(output_dir: str | Path, side: str) -> Path:
    return Path(output_dir) / f"{side}_responses.jsonl"


@dataclass
class OutputRow:
    """One row of a responses file: the prompt it answers and the response."""

    prompt: Text
    response: str
    row: int
    file: str
    finish_reason: str | None = None


@dataclass
class Responses:
    """One side's response to each prompt, in prompt order, and where they came from."""

    texts: list[str]
    source: str
    matched_by: str  # "index" (generated here from the prompts file) | "prompt text"
    unused_rows: int = 0  # rows of the file that answer none of the prompts
    hit_max_new_tokens: int | None = None  # responses cut by the token limit (None: unknown)


def read_outputs(path: str, prompt_column: str = "prompt", response_column: str = "response") -> list[OutputRow]:
    """Rows {prompt, response} or {prompt, completions: [one]} (as `prefero generate` writes
    with num_completions 1). The prompt is read from `prompt_column`, else from `prompt`
    (generate's own column). A response may be empty (a policy that answered nothing has
    still answered); it must be a string. A bad row is a DataError naming row and field."""
    rows = []
    for row, record in iter_rows(path):
        if isinstance(record, DataError):
            raise record
        where = Where(str(path), row)
        column = prompt_column if prompt_column in record or "prompt" not in record else "prompt"
        if record.get(column) is None:
            columns = ", ".join(sorted(map(str, record))) or "none"
            raise where.error(prompt_column, f"missing (the row has columns: {columns}); set prompt_column")
        prompt = text_value(record[column], column, where)
        response, reason = _response(record, response_column, where)
        rows.append(OutputRow(prompt, response, row, str(path), reason))
    if not rows:
        raise DataError(str(path), None, None, "no responses (the file has no rows)", skippable=False)
    return rows


def _response(record: dict, column: str, where: Where) -> tuple[str, str | None]:
    if record.get(column) is not None:
        value = record[column]
        if not isinstance(value, str):
            raise where.error(column, f"expected the response as a string, got {type(value).__name__}")
        return value, None
    completions = record.get("completions")
    if completions is None:
        raise where.error(column, "missing; expected the response as a string (or `completions`: a list with one)")
    if not isinstance(completions, list) or len(completions) != 1:
        got = f"{len(completions)} completions" if isinstance(completions, list) else type(completions).__name__
        raise where.error("completions", f"expected a list with exactly one response, got {got} (the evaluation "
                                         "compares one response per prompt: generate with num_completions=1)")
    if not isinstance(completions[0], str):
        raise where.error("completions[0]", f"expected a string, got {type(completions[0]).__name__}")
    reasons = record.get("finish_reasons")
    return completions[0], reasons[0] if isinstance(reasons, list) and reasons else None


def prompt_key(text: Text) -> str:
    """What two prompts must share to be the same prompt: a single user message is its text."""
    if isinstance(text, list) and len(text) == 1 and text[0].get("role") == "user":
        text = text[0]["content"]
    return ("s:" if isinstance(text, str) else "m:") + text_key(text)


def match_responses(prompts: list[Prompt], rows: list[OutputRow], prompt_column: str = "prompt") -> Responses:
    """Each prompt's response from `rows`, matched by prompt text (see the module docstring)."""
    answers: dict[str, deque] = defaultdict(deque)
    for r in rows:
        answers[prompt_key(r.prompt)].append(r)
    picked, missing = [], []
    for p in prompts:
        queue = answers.get(prompt_key(p.text))
        if queue:
            picked.append(queue.popleft())
        else:
            missing.append(p)
    source = rows[0].file
    if missing:
        first = missing[0]
        raise first.error(prompt_column, f"no response to this prompt in {source} ({len(missing)} of {len(prompts)} "
                                         "prompts have none; responses are matched to prompts by their exact text)")
    reasons = [r.finish_reason for r in picked]
    return Responses([r.response for r in picked], source, "prompt text",
                     unused_rows=sum(len(q) for q in answers.values()),
                     hit_max_new_tokens=None if None in reasons else reasons.count("length"))


# --------------------------------------------------------------------------- generation


def generate_config(cfg: EvalConfig, side: str, model: str):
    from prefero.generate import GenerateConfig

    return GenerateConfig(model=model, prompts=cfg.prompts, prompt_column=cfg.prompt_column,
                          output=str(responses_path(cfg.output_dir, side)), num_completions=1,
                          trust_remote_code=cfg.trust_remote_code, overwrite=cfg.overwrite,
                          **dataclasses.asdict(cfg.generation))


class GeneratedResponses(Stage):
    """`model`'s response to every prompt, made by the generation stage (`prefero generate`),
    which resumes a killed run's rows. Under several processes they share the work, and all
    of them read the file process 0 merged."""

    def __init__(self, cfg: EvalConfig, side: str, model: str, prompts: list[Prompt], procs: Processes):
        from prefero.generate.prompts import prompts_sha256
        from prefero.reference import model_identity

        self.gen, self.procs = generate_config(cfg, side, model), procs
        # the model's weight files too: a model retrained in place must not reuse old responses
        settings = {**self.gen.settings(prompts_sha256(prompts)), "model_files": model_identity(model)}
        # outputs are the run directory's (output_dir's): its file name, not the cwd-relative path
        super().__init__(f"{side}_responses", outputs=[Path(self.gen.output).name], settings=settings)

    def run(self) -> None:
        from prefero.generate import run_generate
        from prefero.generate.run import report_path

        # killed between generation's last write and the manifest's: the file is this stage's own
        if not (self.resuming and Path(self.gen.output).exists() and Path(report_path(self.gen.output)).exists()):
            run_generate(self.gen)
        if self.procs.barrier is not None:
            self.procs.barrier()  # process 0 has merged the rows


def generated_responses(cfg: EvalConfig, side: str, model: str, prompts: list[Prompt], runner: Runner,
                        procs: Processes = Processes()) -> Responses:
    """`model`'s response to every prompt: the `GeneratedResponses` stage's output, made (or
    resumed) by `runner` unless a finished one with the same fingerprint is there."""
    stage = GeneratedResponses(cfg, side, model, prompts, procs)
    runner.run(stage)
    gen = stage.gen
    rows = [row for _, row in read_jsonl_rows(Path(gen.output))]
    if [r["index"] for r in rows] != list(range(len(prompts))):
        raise DataError(gen.output, None, "index", f"{len(rows)} rows that are not the {len(prompts)} prompts of "
                                                   f"{cfg.prompts} in order; delete it to generate again")
    texts = [r["completions"][0] for r in rows]
    hit = sum(r["finish_reasons"][0] == "length" for r in rows)
    return Responses(texts, gen.output, "index", hit_max_new_tokens=hit)


