"""selfinstruct: self-instruct data generation with vLLM and LoRA/QLoRA fine-tuning.

The library has no Prefect dependency except :mod:`pipeline.report`, which only acts inside a flow run.
"""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root when running from a checkout; used to find ``prompts/`` and ``seeds/``.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Prompt templates: generation (``generate_*.jinja``) and training (``train_*.json``).
PROMPTS_DIR = PROJECT_ROOT / "prompts"
