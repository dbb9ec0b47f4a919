"""selfinstruct: self-instruct data generation with vLLM and LoRA/QLoRA fine-tuning.

The library has no Prefect dependency except :mod:`pipeline.report`, which only acts inside a flow run.
"""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root when running from a checkout (in a wheel install: the ``site-packages`` folder). Find prompt
#: templates and seed files through :mod:`pipeline.resources`, which works in both.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

