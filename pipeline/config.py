"""Typed configuration for the generation stage.

One pydantic model per concern, nested into :class:`GenerationConfig`. Every field carries a description:
the same models are the Prefect flow parameters (the UI renders them as a form) and the YAML schema of the
CLI. Defaults follow Stanford Alpaca's ``generate_instruction.py`` where it has one, and say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pipeline.resources import seeds_path
from pipeline.rouge import ALPACA_THRESHOLD
from pipeline.settings import apply_overrides, load_config, validate_config
from pipeline.text import TokenizerName

RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

DEFAULT_BLACKLIST_EN = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
    "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
]
#: Korean nouns take particles, so these match as substrings; ambiguous stems are listed with their particle
#: ("지도를", not "지도", which would also drop 지도자 "leader"; "그림을", not "그림", which would drop 그림자 "shadow").
DEFAULT_BLACKLIST_KO = [
    "이미지", "사진", "그래프", "파일", "동영상", "영상을", "영상으로", "오디오", "음악", "녹음", "순서도",
    "다이어그램", "도표", "그림을", "그림으로", "그림에", "지도를", "지도에", "지도로",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LLMConfig(_Model):
    """How to reach the model: one or more OpenAI-compatible endpoints (vLLM or any other)."""

    base_urls: list[str] = Field(
        default_factory=list,
        description="OpenAI-compatible base URLs, e.g. ['http://127.0.0.1:8000/v1']. Several URLs are balanced by "
        "least outstanding requests. Empty: managed mode, the run starts its own vLLM server (see `server`).",
    )
    model: str = Field(
        "Qwen/Qwen2.5-7B-Instruct",
        description="Model name as the server knows it. In managed mode this is also what vLLM loads: a hub id or a local directory.",
    )
    api_key: SecretStr = Field(
        SecretStr("EMPTY"),
        description="API key sent as a bearer token. vLLM ignores it unless started with --api-key. Never logged or stored.",
    )
    max_concurrency: int = Field(
        64,
        ge=1,
        le=4096,
        description="Requests kept in flight at once, across all endpoints. vLLM batches continuously, so it needs many "
        "requests in flight to stay busy; 64 saturates one 7-8B model on one GPU at these prompt lengths.",
    )
    max_ahead: int = Field(
        0,
        ge=0,
        description="How far (in request indices) sending may run ahead of the oldest unfinished request. Results are "
        "consumed in request order, so one slow request holds back all later ones; this caps the reorder buffer. "
        "0 means 4 x max_concurrency.",
    )
    request_timeout_s: float = Field(300.0, gt=0, description="Seconds before one HTTP request is abandoned and retried.")
    keepalive_expiry_s: float = Field(
        2.0, gt=0,
        description="Seconds an idle pooled connection is kept for reuse. Keep it below the server's keep-alive (vLLM's "
        "and uvicorn's default: 5 s): a connection reused just as the server closes it fails the request.",
    )
    http_backend: Literal["aiohttp", "httpx"] = Field(
        "aiohttp",
        description="HTTP transport under the openai client. aiohttp (openai's own `DefaultAioHttpClient`) spends about "
        "a third less client CPU per request than httpx at 64 requests in flight, which matters once several GPUs "
        "answer hundreds of requests a second; httpx is the openai client's default.",
    )
    max_retries: int = Field(
        6, ge=0, le=100, description="Retries per request on 429, 5xx, connection errors and timeouts, with exponential backoff."
    )
    backoff_initial_s: float = Field(1.0, gt=0, description="First retry delay; doubles on each retry, with full jitter.")
    backoff_max_s: float = Field(60.0, gt=0, description="Upper bound of one retry delay (a server's Retry-After may ask for more, up to this).")
    endpoint_failure_threshold: int = Field(
        3, ge=1, description="Consecutive failures after which an endpoint is taken out of rotation (with several endpoints)."
    )
    endpoint_cooldown_s: float = Field(30.0, gt=0, description="Seconds before a failed endpoint is probed again.")
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature (Alpaca: 1.0).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (Alpaca: 1.0).")
    max_tokens: int = Field(3072, ge=16, description="Completion token limit per request (Alpaca: 3072).")
    json_string_pattern: str | None = Field(
        None,
        description="Optional regex put on every string field of the structured-output JSON schema. Only for tiny random "
        "demo models, to keep their output word-like; leave empty for real models.",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM sampling parameters sent with every request, e.g. {'repetition_penalty': 1.05}."
    )


class ServerConfig(_Model):
    """Managed mode: the vLLM OpenAI server the run starts for itself when `llm.base_urls` is empty."""

    python: str = Field(
        ".venv-vllm/bin/python",
        description="Interpreter of the virtualenv that holds vLLM (its pins conflict with Prefect's). Relative paths are from the project root.",
    )
    command: list[str] = Field(
        default_factory=list,
        description="Full command to start the server instead of `python -m vllm.entrypoints.openai.api_server`; "
        "--model, --host and --port are still appended.",
    )
    host: str = Field("127.0.0.1", description="Bind address. Keep loopback unless the server must be reached from other hosts.")
    port: int = Field(0, ge=0, le=65535, description="Port; 0 picks a free one.")
    startup_timeout_s: float = Field(900.0, gt=0, description="Seconds to wait for GET /v1/models to answer.")
    max_restarts: int = Field(2, ge=0, description="Times a server that dies mid-run is restarted before the run fails (resumable).")
    dtype: str = Field("auto", description="vLLM --dtype (auto, bfloat16, float16, float32).")
    max_model_len: int | None = Field(None, ge=64, description="vLLM --max-model-len; empty uses the model's.")
    enforce_eager: bool = Field(False, description="vLLM --enforce-eager: skip CUDA graphs / torch.compile (faster start, slower serving).")
    enable_prefix_caching: bool = Field(
        True, description="Automatic prefix caching: every prompt shares the long fixed instructions, so their KV cache is reused."
    )
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="vLLM --gpu-memory-utilization (GPU only).")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM --tensor-parallel-size.")
    data_parallel_size: int = Field(1, ge=1, description="vLLM --data-parallel-size: replicas behind one endpoint.")
    structured_outputs_backend: str | None = Field(
        "xgrammar", description="vLLM structured-outputs backend (xgrammar, guidance, outlines); empty leaves vLLM's default."
    )
    disable_any_whitespace: bool = Field(
        False, description="Forbid free whitespace in structured JSON output; tiny random models otherwise emit endless spaces."
    )
    chunked_prefill: bool | None = Field(
        None,
        description="vLLM chunked prefill. Empty: off on vLLM's CPU build, whose sampler crashes ('CPU Generator does not "
        "use offset') on a seeded request whose prefill is chunked (vLLM then sizes the batched-token budget to fit "
        "max_model_len); vLLM's own default on GPUs.",
    )
    trust_remote_code: bool = Field(False, description="Let vLLM run code shipped with the model. Off unless you trust the model repo.")
    kv_cache_space_gib: int | None = Field(None, ge=1, description="VLLM_CPU_KVCACHE_SPACE for the CPU build (GiB of KV cache).")
    extra_args: list[str] = Field(default_factory=list, description="Further vLLM CLI arguments, appended verbatim.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the server process.")


class FilterConfig(_Model):
    """Quality filters applied to every parsed candidate, in order. Each drop is kept in rejected.jsonl with its reason."""

    min_instruction_words: int = Field(4, ge=0, description="Drop instructions with fewer words (Alpaca drops <= 3).")
    max_instruction_words: int = Field(150, ge=1, description="Drop instructions with more words (Alpaca drops > 150).")
    blacklist: list[str] | None = Field(
        None,
        description="Words that signal a task a text model cannot do (images, audio...). Empty list disables; "
        "unset uses the default list for the run's language.",
    )
    drop_program_openings: bool = Field(True, description="Drop instructions that start with 'Write a program' (Alpaca).")
    drop_punctuation_start: bool = Field(True, description="Drop instructions whose first character is punctuation.")
    check_language: bool = Field(
        True, description="English: the instruction starts with an ASCII character. Korean: it contains Hangul."
    )
    drop_empty_output: bool = Field(True, description="Drop candidates with an empty output.")
    drop_input_equals_output: bool = Field(True, description="Drop candidates whose output merely repeats the input.")
    drop_exact_duplicates: bool = Field(True, description="Drop exact (case/space-normalised) duplicates of seeds or accepted instructions.")


class DedupConfig(_Model):
    """ROUGE-L near-duplicate filter against the seeds and every accepted instruction (Alpaca's 0.7 rule)."""

    enabled: bool = Field(True, description="Turn the ROUGE-L filter off only for debugging.")
    threshold: float = Field(ALPACA_THRESHOLD, gt=0, le=1, description="Reject when ROUGE-L F-measure against any kept instruction exceeds this (Alpaca: 0.7).")
    tokenizer: TokenizerName = Field(
        "auto",
        description="'rouge' is rouge-score's (exact Alpaca behaviour, English only); 'ko' uses Kiwi morphemes; "
        "'unicode' keeps every word character; 'auto' picks 'ko' for Korean runs and 'rouge' otherwise.",
    )
    top_k_similar: int = Field(
        0, ge=0, le=100, description="Store this many most similar instructions with each accepted record (Alpaca: 10). 0 skips it."
    )
    context_runs: list[str] = Field(
        default_factory=list,
        description="Names of earlier runs (under output_dir) whose accepted instructions are dedup context too, "
        "so a new dated run never repeats them.",
    )


class FormatChecksConfig(_Model):
    """Checks for what a model leaks or loops on, each a named reason in rejected.jsonl (English and Korean)."""

    enabled: bool = Field(
        False,
        description="Run the checks below. Off by default so that an existing config keeps its accepted set; the "
        "shipped deployments turn them on.",
    )
    leaked_labels: bool = Field(
        True, description="Drop records with the prompt's numbering or field labels in a field ('3. Instruction:', 'Input:', "
        "'Output:', '### ', and the Korean prompt's labels).",
    )
    label_prefix: bool = Field(True, description="Drop instructions that start with a label such as 'Question:' or 'Task:'.")
    echoed_output: bool = Field(
        True, description="Drop outputs that repeat the instruction, or contain the input verbatim without adding to it.",
    )
    max_repeated_ngram_share: float = Field(
        0.3, gt=0, le=1,
        description="Drop outputs whose word n-grams (n = repetition_ngram) repeat more than this share: a "
        "generation stuck in a loop. 1 turns the check off.",
    )
    repetition_ngram: int = Field(3, ge=1, le=10, description="n of the repeated n-gram share.")
    placeholder_input: bool = Field(True, description="Drop inputs that are placeholders ('[text]', '<input>', '...').")


class EvalSetConfig(_Model):
    """One evaluation set to decontaminate against."""

    name: str = Field(..., min_length=1, description="Benchmark name, stored with every match (e.g. 'self-instruct-user-oriented').")
    path: str = Field(
        ..., description="A JSON (array of objects), JSONL or parquet file, or a Hugging Face dataset directory "
        "(save_to_disk). Relative paths are from the working directory.",
    )
    text_fields: list[str] = Field(
        default_factory=lambda: ["instruction"],
        description="Fields whose text is matched, joined with a space. Dotted paths reach into lists' first items "
        "(e.g. 'instances.input').",
    )
    id_field: str | None = Field(None, description="Field holding the item id; empty uses the item's position.")
    split: str | None = Field(None, description="For a dataset directory holding a DatasetDict: the split to read.")


class DecontaminationConfig(_Model):
    """Drop candidates that share a long n-gram with an evaluation set (GPT-3 / NeMo Curator convention)."""

    eval_sets: list[EvalSetConfig] = Field(
        default_factory=list, description="Evaluation sets to check against. None by default: name your benchmarks here.",
    )
    ngram: int = Field(
        13, ge=3, le=50,
        description="English: word n-grams of this length (13, as GPT-3 and NeMo Curator). An eval item with fewer "
        "words (but at least 8) must appear whole in a candidate.",
    )
    ngram_ko: int = Field(13, ge=3, le=50, description="Korean: Kiwi morpheme n-grams of this length.")
    min_tokens: int = Field(
        8, ge=1, le=50,
        description="Evaluation items shorter than this (in tokens) are not matched at all: 'Write a poem.' would "
        "otherwise drop every candidate containing it (GPT-3 and NeMo Curator use 8). Items between this and n "
        "tokens match when they appear whole.",
    )
    fields: list[Literal["instruction", "input", "output"]] = Field(
        default_factory=lambda: ["instruction", "input"],
        description="Candidate fields checked, joined with a space.",
    )


class JudgeConfig(_Model):
    """An LLM judge (AlpaGasus-style): rates instruction + input + output from 1 to 5, with a short rationale."""

    enabled: bool = Field(
        False,
        description="Rate every candidate that reaches the judge. The score and rationale are stored on each accepted "
        "record and the score in the dataset. Judging runs while generation goes on, on candidates as they arrive.",
    )
    threshold: float | None = Field(
        None, ge=1, le=5,
        description="Reject records scored below this as 'low_score', with the rationale (AlpaGasus kept >= 4.5 of 5). "
        "Empty: score only, reject nothing.",
    )
    llm: LLMConfig | None = Field(
        None,
        description="A separate judge model or endpoint. Empty: the generation server and model judge. With empty "
        "base_urls here, the generation endpoints are used with this section's model and settings.",
    )
    prompt_template: str | None = Field(
        None, description="Judge prompt: a name in prompts/ or a path. Empty: judge_en.jinja or judge_ko.jinja.",
    )
    temperature: float = Field(0.0, ge=0, le=2, description="Judge sampling temperature; 0 rates deterministically.")
    max_tokens: int = Field(256, ge=16, description="Token limit of one judgment (rationale and score).")
    max_concurrency: int | None = Field(
        None, ge=1, le=4096, description="Judge requests in flight at once. Empty: the generation's llm.max_concurrency.",
    )


class ExportConfig(_Model):
    """What is written when the run reaches its target."""

    hf_dataset: bool = Field(True, description="Write a Hugging Face dataset (save_to_disk) and a parquet file.")
    charts: bool = Field(True, description="Draw the quality report's PNG charts (funnel, ROUGE-L histograms, root verbs, lengths, judge scores) next to the dataset.")
    sample_rows: int = Field(20, ge=0, le=1000, description="Random accepted/rejected records shown in artifacts and the card.")


class GenerationConfig(_Model):
    """One self-instruct run: seeds → prompts → LLM → parse → filters → ROUGE-L dedup → Alpaca dataset."""

    run_name: str = Field(
        "default",
        pattern=RUN_NAME_PATTERN,
        description="Directory name under output_dir. Running again with the same name resumes the run.",
    )
    output_dir: str = Field("outputs", description="Where run directories live. Relative paths are from the working directory.")
    language: Literal["en", "ko"] = Field("en", description="'en' for Alpaca-style English, 'ko' for KoAlpaca-style Korean.")
    seeds_path: str | None = Field(None, description="Seed tasks JSONL (Self-Instruct format). Empty: seeds/seed_tasks.jsonl or seeds/seed_tasks_ko.jsonl.")
    prompt_template: str | None = Field(
        None, description="Generation prompt template: a name in prompts/ or a path. Empty: generate_en.jinja or generate_ko.jinja."
    )
    response_mode: Literal["structured", "text"] = Field(
        "structured",
        description="'structured' sends a JSON schema as response_format (vLLM enforces it); 'text' asks for numbered "
        "Instruction/Input/Output blocks as Alpaca did and parses them.",
    )
    target: int = Field(100, ge=1, le=10_000_000, description="Accepted records to reach. The run stops within one request's worth beyond it.")
    num_seed_examples: int = Field(3, ge=1, le=20, description="Seed tasks shown in each prompt (Alpaca: 3).")
    tasks_per_request: int = Field(10, ge=1, le=50, description="New tasks asked for per request (Alpaca asks for 20 and keeps 17).")
    seed: int = Field(42, description="Run seed. Request i's seed examples and sampling seed derive from (seed, i) alone.")
    max_requests: int | None = Field(
        None,
        ge=1,
        description="Safety cap on requests for the whole run. Empty: 20 x target / tasks_per_request, so a model that "
        "never produces usable tasks cannot loop forever.",
    )
    round_size: int = Field(
        256, ge=1, description="Requests per Prefect task (one round). Larger rounds mean fewer task runs; progress is reported per request anyway."
    )
    commit_interval_s: float = Field(
        0.5, gt=0, description="At most this much work is redone after a crash: records are fsynced and the resume point committed this often."
    )
    llm: LLMConfig = Field(default_factory=LLMConfig, description="Endpoints, sampling and retries.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="Managed vLLM server, used when llm.base_urls is empty.")
    curation: list[Literal["filters", "format_checks", "decontamination", "dedup", "judge"]] = Field(
        default_factory=lambda: ["filters", "format_checks", "decontamination", "dedup", "judge"],
        description="The curation stages, in the order they run; each is configured in its own section (a stage left "
        "out does not run). The first stage to drop a candidate decides its reason.",
    )
    filters: FilterConfig = Field(default_factory=FilterConfig, description="Quality filters.")
    format_checks: FormatChecksConfig = Field(default_factory=FormatChecksConfig, description="Leaked labels, echoes, loops, placeholders.")
    decontamination: DecontaminationConfig = Field(
        default_factory=DecontaminationConfig, description="Drop candidates that overlap evaluation sets."
    )
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="ROUGE-L near-duplicate filter.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM judge: scores, and optionally a threshold.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Dataset export.")
    train_deployment: str | None = Field(
        None,
        description="When set (e.g. 'train-alpaca/default'), the self-instruct flow starts this Prefect deployment on the "
        "finished dataset. Ignored by the CLI.",
    )

    @field_validator("run_name")
    @classmethod
    def _no_traversal(cls, value: str) -> str:
        if ".." in value or "/" in value or "\\" in value:
            raise ValueError("must be a plain directory name: no path separators and no '..'")
        return value

    @field_validator("curation")
    @classmethod
    def _stages_once(cls, value: list[str]) -> list[str]:
        repeated = sorted({stage for stage in value if value.count(stage) > 1})
        if repeated:
            raise ValueError(f"each stage may appear once; repeated: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> "GenerationConfig":
        if self.filters.min_instruction_words > self.filters.max_instruction_words:
            raise ValueError("filters.min_instruction_words must not exceed filters.max_instruction_words")
        return self

    # ---- resolved values -------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    @property
    def resolved_seeds_path(self) -> Path:
        if self.seeds_path:
            return Path(self.seeds_path)
        name = "seed_tasks_ko.jsonl" if self.language == "ko" else "seed_tasks.jsonl"
        return seeds_path(name)

    @property
    def resolved_max_requests(self) -> int:
        if self.max_requests is not None:
            return self.max_requests
        return max(self.round_size, 20 * -(-self.target // self.tasks_per_request))

    @property
    def resolved_blacklist(self) -> list[str]:
        if self.filters.blacklist is not None:
            return self.filters.blacklist
        return DEFAULT_BLACKLIST_KO + DEFAULT_BLACKLIST_EN if self.language == "ko" else DEFAULT_BLACKLIST_EN

    @property
    def resolved_dedup_tokenizer(self) -> str:
        if self.dedup.tokenizer != "auto":
            return self.dedup.tokenizer
        return "ko" if self.language == "ko" else "rouge"

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-able data with secrets masked, for run.json, cards and artifacts."""
        data = self.model_dump(mode="json")
        data["llm"]["api_key"] = "**********"
        return data

    # ---- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "GenerationConfig":
        """Load a YAML file; ``overrides`` uses dotted keys (``{"llm.model": "x"}``). Errors name the file and field."""
        return load_config(cls, path, overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = "config") -> "GenerationConfig":
        return validate_config(cls, apply_overrides(data, overrides or {}), source)
