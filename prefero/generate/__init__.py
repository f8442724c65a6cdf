"""`prefero generate`: sample K completions per prompt (docs/pipeline.md).

    from prefero.options import load_config
    from prefero.generate import GenerateConfig, run_generate

    report = run_generate(load_config("examples/generate.yaml", ["seed=1"], cls=GenerateConfig))

Backends: `transformers` (batched `model.generate`, left-padded, KV cache), `vllm`
(optional extra), `openai` (any OpenAI-compatible server, through prefero.openai_client).
Output rows `{index, prompt, completions, finish_reasons, tokens}` are readable by the
judge stage and by `prefero.pipeline_io.read_prompts`; a report is written beside them.
The same config gives the same file, for any number of processes and across resumptions.

Modules: `config` (GenerateConfig), `prompts` (rendering, seeds), `sampler` (the backend
interface), `transformers_backend`, `vllm_backend`, `openai_backend`, `run` (the stage).
Importing this package does not import torch.
"""

from prefero.generate.config import GenerateConfig
from prefero.generate.run import make_sampler, report_path, run_generate

__all__ = ["GenerateConfig", "make_sampler", "report_path", "run_generate"]
