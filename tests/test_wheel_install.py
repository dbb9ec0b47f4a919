"""A wheel-installed ``selfinstruct`` finds its prompt templates and default seeds from any directory.

Builds a wheel from a copy of the sources (so that no ``build/`` or ``*.egg-info`` lands in the checkout), installs
it with ``--no-deps`` into a fresh venv, and makes the dependencies importable through a ``.pth`` line naming this
venv's ``site-packages`` (a path line only: the checkout's editable-install hook there is not run). Everything then
runs from a working directory outside the checkout. No network: pip gets ``--no-index``/``--no-build-isolation``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline.config import GenerationConfig
from pipeline.prompts import PromptBuilder, resolve_template
from pipeline.seeds import load_seeds
from pipeline.train.templates import load_template

HANGUL = re.compile(r"[\uac00-\ud7a3]")
#: What the wheel is built from (pyproject.toml names README.md as the readme).
SOURCES = ("pyproject.toml", "README.md", "pipeline", "flows", "prompts", "seeds")
DATA_FILES = (
    "pipeline/_data/prompts/generate_en.jinja",
    "pipeline/_data/prompts/generate_ko.jinja",
    "pipeline/_data/prompts/train_alpaca.json",
    "pipeline/_data/prompts/train_koalpaca.json",
    "pipeline/_data/seeds/seed_tasks.jsonl",
    "pipeline/_data/seeds/seed_tasks_ko.jsonl",
)

# Runs inside the wheel venv, from a directory outside the checkout; prints one JSON object.
PROBE = textwrap.dedent(
    """
    import json, sys
    import pipeline
    from pipeline import resources
    from pipeline.config import GenerationConfig
    from pipeline.prompts import PromptBuilder, resolve_template
    from pipeline.seeds import load_seeds
    from pipeline.train.templates import load_template

    out = {
        "pipeline_file": pipeline.__file__,
        "editable_hooks": [repr(f) for f in sys.meta_path + sys.path_hooks if "editable" in repr(f).lower()]
        + [m for m in sys.modules if "editable" in m.lower()],
        "prompts_dir": str(resources.prompts_dir()),
        "rendered": {},
        "templates": {},
    }
    for language, seed_file in (("en", "seed_tasks.jsonl"), ("ko", "seed_tasks_ko.jsonl")):
        config = GenerationConfig(language=language)
        seeds = load_seeds(resources.seeds_path(seed_file))
        template = resolve_template(config.prompt_template, language)
        builder = PromptBuilder(template, seeds, config.seed, config.num_seed_examples, config.tasks_per_request,
                                config.response_mode)
        prompt = builder.render(0)
        out["rendered"][language] = {
            "template": str(template), "seeds": len(seeds), "text": prompt.text, "seed_ids": list(prompt.seed_ids),
            "seed_instructions": {s.id: s.instruction.strip() for s in seeds},
            "config_default_seeds": str(config.resolved_seeds_path),
            "config_default_seeds_exists": config.resolved_seeds_path.is_file(),
        }
    for name in ("alpaca", "koalpaca"):
        t = load_template(name)
        out["templates"][name] = {"prompt": t.prompt("INSTR", "INPUT"), "response_split": t.response_split}
    print(json.dumps(out))
    """
)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1")
    return env


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, args))} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """(wheel file, venv dir, outside working dir) with the wheel installed into the venv."""
    root = tmp_path_factory.mktemp("wheel_install")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in SOURCES:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)

    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, "."],
         cwd=src)
    (wheel,) = dist.glob("selfinstruct-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    # This venv's pip installs into the new one (pip >= 22.3), which saves bootstrapping pip there.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], cwd=root)

    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip()
    here = sysconfig.get_paths()
    deps = dict.fromkeys([here["purelib"], here["platlib"]])  # this interpreter's site-packages, in order, once
    # A path line in a .pth file only extends sys.path; the .pth files in that directory (the checkout's editable
    # finder among them) are not processed, so `pipeline` can come only from the wheel.
    Path(purelib, "_selfinstruct_test_deps.pth").write_text("".join(f"{d}\n" for d in deps), encoding="utf-8")

    work = root / "elsewhere"
    work.mkdir()
    return wheel, venv, work


@pytest.fixture(scope="module")
def probe(wheel_venv):
    """What :data:`PROBE` prints, run with the wheel venv's python from a directory outside the checkout."""
    _, venv, work = wheel_venv
    (work / "probe.py").write_text(PROBE, encoding="utf-8")
    return json.loads(_run([venv / "bin" / "python", "probe.py"], cwd=work).stdout)


def test_wheel_ships_prompts_and_seeds(wheel_venv):
    wheel, _, _ = wheel_venv
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(DATA_FILES) <= names
    assert not any(n.startswith(("prompts/", "seeds/", "tests/")) for n in names), sorted(names)


def test_wheel_install_works_outside_checkout(wheel_venv, probe):
    _, venv, work = wheel_venv

    site = Path(probe["pipeline_file"]).resolve()
    assert site.is_relative_to(venv.resolve()), site
    assert not site.is_relative_to(PROJECT_ROOT), site
    assert probe["editable_hooks"] == []
    assert Path(probe["prompts_dir"]).resolve() == site.parent / "_data" / "prompts"

    for language in ("en", "ko"):
        rendered = probe["rendered"][language]
        assert Path(rendered["template"]).resolve().is_relative_to(venv.resolve())
        assert rendered["template"].endswith(f"generate_{language}.jinja")
        # The seed examples shown are real seed instructions...
        assert len(rendered["seed_ids"]) == GenerationConfig().num_seed_examples
        for seed_id in rendered["seed_ids"]:
            assert rendered["seed_instructions"][seed_id] in rendered["text"]
        # ...and the prompt is byte-identical to the checkout's for the same run seed and request index.
        config = GenerationConfig(language=language)
        seed_file = "seed_tasks.jsonl" if language == "en" else "seed_tasks_ko.jsonl"
        seeds = load_seeds(PROJECT_ROOT / "seeds" / seed_file)
        assert rendered["seeds"] == len(seeds)
        here = PromptBuilder(resolve_template(None, language), seeds, config.seed, config.num_seed_examples,
                             config.tasks_per_request, config.response_mode).render(0)
        assert rendered["text"] == here.text
    assert HANGUL.search(probe["rendered"]["ko"]["text"])

    alpaca, koalpaca = probe["templates"]["alpaca"], probe["templates"]["koalpaca"]
    assert alpaca["prompt"] == load_template("alpaca").prompt("INSTR", "INPUT")
    assert "### Instruction:" in alpaca["prompt"] and "INSTR" in alpaca["prompt"] and "INPUT" in alpaca["prompt"]
    assert koalpaca["prompt"] == load_template("koalpaca").prompt("INSTR", "INPUT")
    assert HANGUL.search(koalpaca["prompt"]) and HANGUL.search(koalpaca["response_split"])

    help_text = _run([venv / "bin" / "selfinstruct", "--help"], cwd=work).stdout
    assert "generate" in help_text and "validate-seeds" in help_text


def test_wheel_default_config_finds_seeds(probe):
    for language in ("en", "ko"):
        assert probe["rendered"][language]["config_default_seeds_exists"], probe["rendered"][language]["config_default_seeds"]
