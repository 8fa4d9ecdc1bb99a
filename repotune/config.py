"""One typed configuration, loaded from one TOML file.

`config.toml` is parsed with `tomllib` and validated into nested pydantic models, one per
section. Every model forbids unknown keys, so a typo is an error rather than a silently
ignored setting. Errors name the key, the file and, where the key can be found in the
text, the line (pydantic and tomllib do not track positions, so `_line_of` finds it).

Secrets never come from the file: they are read from the environment into `Secrets`,
and a key or value in the file that looks like a secret is refused at load time.
Cross-field rules (LoRA rank against the engine's `max_lora_rank`, the lineage name)
are checked here, at load, not when the nightly run reaches them.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

CONFIG_ENV = "REPOTUNE_CONFIG"
DEFAULT_CONFIG_NAME = "config.toml"

# Ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py, `MaxLoRARanks`).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

LINEAGE_RE = re.compile(r"^[a-z][a-z0-9_.]{0,39}$")
RESERVED_LINEAGES = frozenset({"base"})

# Secret names as they appear in the environment, and the config keys people would
# mistakenly use for them.
SECRET_ENV = {
    "api_keys": "REPOTUNE_API_KEYS",
    "admin_key": "REPOTUNE_ADMIN_KEY",
    "github_token": "GITHUB_TOKEN",
    "teacher_api_key": "REPOTUNE_TEACHER_API_KEY",
    "webhook_secret": "REPOTUNE_WEBHOOK_SECRET",
}
_SECRET_KEY_RE = re.compile(
    r"^(?:.*_)?(?:api_?keys?|admin_key|token|access_token|auth_token|secret|client_secret|"
    r"password|passwd|private_key|secret_key|access_key)$"
)
# Prefixes of well-known credential formats (GitHub, OpenAI, Hugging Face, AWS, Slack).
_SECRET_VALUE_RE = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{20,}|"
    r"hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|xox[abpr]-[A-Za-z0-9-]{10,})"
)


class ConfigError(Exception):
    """A configuration that cannot be used. `problems` holds one line per fault."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    base: str = Field(
        "builtin:tiny",
        min_length=1,
        description="Base model: builtin:tiny, a Hugging Face model id or a local path.",
    )


class ServeSection(Section):
    host: str = Field("127.0.0.1", min_length=1, description="Address the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the gateway listens on.")
    max_lora_rank: int = Field(16, description="Largest LoRA rank the engine accepts.")
    max_loras: int = Field(4, ge=1, description="Adapters the engine batches side by side.")
    max_cpu_loras: int = Field(8, ge=1, description="Adapters the engine keeps loaded in host memory.")
    max_model_len: int = Field(2048, ge=16, description="Context length, prompt and completion together.")
    dtype: str = Field("auto", description="Engine dtype: auto, float32, bfloat16 or float16.")
    kv_cache_gb: int = Field(1, ge=1, description="CPU engine: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU engine: share of GPU memory.")
    engine_args: list[str] = Field(default_factory=list, description="Extra vLLM server arguments.")
    upstreams: list[str] = Field(
        default_factory=list, description="Engines already running (base URLs); none: start one."
    )
    keep_loaded: int = Field(2, ge=1, description="Versions per lineage kept loaded in the engine.")
    engine_start_timeout_s: float = Field(600, gt=0, description="How long an engine may take to start.")
    auth: bool = Field(True, description="Require an API key from REPOTUNE_API_KEYS on every request.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted.")
    reconcile_interval_s: float = Field(5.0, gt=0, description="How often the server re-reads the registry.")
    max_concurrent_per_key: int = Field(32, ge=1, description="Requests one API key may run at once.")
    max_queued_per_key: int = Field(64, ge=0, description="Requests of one key that may wait; beyond: 429.")
    max_n: int = Field(8, ge=1, description="Largest n (and best_of) one request may ask for.")
    request_timeout_s: float = Field(600, gt=0, description="Longest wait for the engine between bytes.")

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, v: int) -> int:
        if v not in VLLM_LORA_RANKS:
            allowed = ", ".join(map(str, VLLM_LORA_RANKS))
            raise ValueError(f"must be one of the ranks vLLM accepts ({allowed}), got {v}")
        return v


class PolicySection(Section):
    refusal: str = Field(
        "I can only help with questions about this repository and its code.",
        min_length=1,
        description="The one refusal text, returned as an ordinary completion.",
    )
    train_refusals: bool = Field(False, description="Also train refusals into the adapter.")
    mode: Literal["off", "gate", "model", "both"] = Field(
        "gate", description="gate: the gateway refuses requests whose user turns are not about the domain, before "
        "the model sees them; model: the model refuses (trained with policy.train_refusals) and a reply that begins "
        "with the refusal is cut to exactly it; both: the two; off: every request reaches the model."
    )
    threshold: float = Field(
        0.5, ge=0, le=1, description="A request is answered when each user turn's relevance (the probability that "
        "it is about the domain, times the squared share of its words the domain uses) is at least this, until "
        "`repotune eval refusal --calibrate` stores a threshold for the index."
    )
    max_false_refusal: float = Field(
        0.05, ge=0, lt=1, description="`repotune eval refusal --calibrate` picks the highest threshold that refuses "
        "at most this share of in-domain questions."
    )
    index_skip: list[str] = Field(
        # the last two: this project's own general-knowledge corpus and off-domain questions, for the
        # embedded default (`make run` learns this repository)
        default_factory=lambda: ["*.jsonl", "*.csv", "*.tsv", "repotune/data/*", "tuner/data/*.txt"],
        description="Paths (globs) whose chunks, and diffs in commits, the domain index leaves out: data files of "
        "questions about anything.",
    )
    log_text: bool = Field(False, description="Log the text of refused requests (off: only their scores).")
    score_parts: bool = Field(
        False, description="Also score each part of a turn (its clauses) on its own, the turn counting as its lowest: "
        "fewer off-domain requests framed in the domain's words get through, and more real questions whose parts "
        "lean on each other are refused."
    )


# Files the snapshot and docs sources leave out: lock files, minified and vendored code,
# generated or binary-ish text. Globs match the path from the repository root.
DEFAULT_SKIP = [
    "*.lock", "package-lock.json", "pnpm-lock.yaml", "yarn.lock", "poetry.lock", "Cargo.lock", "go.sum",
    "*.min.js", "*.min.css", "*.map", "*.svg",
    "vendor/*", "*/vendor/*", "third_party/*", "node_modules/*", "*/node_modules/*", "dist/*", "build/*",
]
GITHUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")


class IngestSection(Section):
    repo: str = Field(".", min_length=1, description="Repository to learn: a path or clone URL.")
    branches: list[str] = Field(
        default_factory=list, description="Branches whose history is read; none: the default branch."
    )
    github: str | None = Field(None, description='"owner/name" on GitHub, for pull requests through its API.')
    github_api: str = Field("https://api.github.com", min_length=1, description="GitHub's REST API base URL.")
    wiki: str | None = Field(None, description="A wiki repository of Markdown pages: a path or clone URL.")
    docs: list[str] = Field(
        default_factory=lambda: ["README*", "docs/*", "doc/*"], description="Docs in the repository, as globs."
    )
    skip: list[str] = Field(default_factory=lambda: list(DEFAULT_SKIP), description="Files left out, as globs.")
    include_untrusted: bool = Field(
        False,
        description="Also train on unmerged or forked pull requests and commits off the default branch.",
    )
    max_file_bytes: int = Field(512_000, ge=1024, description="Larger files at the head are left out.")
    max_file_diff_bytes: int = Field(16_000, ge=256, description="A commit's diff is cut at this per file.")
    max_commit_diff_bytes: int = Field(64_000, ge=1024, description="And at this per commit.")
    chunk_tokens: int = Field(384, ge=32, description="Largest chunk, in the base model's tokens.")
    workers: int = Field(0, ge=0, description="Processes scanning for secrets and chunking; 0: one per core.")

    @field_validator("github")
    @classmethod
    def _github(cls, v: str | None) -> str | None:
        if v is not None and not GITHUB_REPO_RE.match(v):
            raise ValueError(f'{v!r} is not "owner/name"')
        return v


DATA_GENERATORS = ("templates", "teacher", "replay", "raw")
PHRASED_KINDS = ("commit", "pull_request", "file", "definition", "doc")


class DataSection(Section):
    generators: list[str] = Field(
        default_factory=lambda: ["templates", "replay", "raw"],
        description="Generators of training data: templates, teacher, replay, raw (refusals: "
        "policy.train_refusals).",
    )
    seed: int = Field(0, description="Seed of every choice made while building (phrasings, splits, samples).")
    val_fraction: float = Field(
        0.05, ge=0, lt=0.5, description="Validation examples per training example: trained facts in other words."
    )
    paraphrases: int = Field(
        8, ge=1, le=40, description="Training phrasings of each commit, pull request, file and definition fact."
    )
    paraphrases_by_kind: dict[str, int] = Field(
        default_factory=dict,
        description="Training phrasings of one kind's facts where they differ from `paraphrases` (commit, "
        "pull_request, file, definition, doc: a page and its sections; a reverse question follows its kind, "
        "halved), e.g. "
        "{commit = 16, file = 16}. A count above the phrasings a kind has gives each of them once (a commit's "
        "reverse questions have 10, a file 17).",
    )
    eval_max: int = Field(500, ge=0, description="Most questions in a dataset's held-out domain eval.")
    replay_general: float = Field(
        2.0, ge=0, le=10, description="General-knowledge examples (train split), per new Q&A example."
    )
    replay_earlier: float = Field(0.5, ge=0, le=10, description="Earlier cycles' Q&A replayed, per new Q&A example.")
    replay_answers: Literal["base", "gold", "both"] = Field(
        "both", description="The general examples' answers: the base model's own (greedy, cached per base), the "
        "set's gold answers, or both (each question twice: with train.replay_kl, the base's distribution is then "
        "pinned on its own answers and on the short gold ones, the states multiple choice asks about)."
    )
    raw_ratio: float = Field(0.1, ge=0, le=1, description="Share of chunks also given as raw text.")
    refusal_ratio: float = Field(
        0.1, ge=0, le=1, description="With policy.train_refusals: refusals (and as many alarming in-domain "
        "questions) per Q&A example."
    )

    @field_validator("generators")
    @classmethod
    def _generators(cls, v: list[str]) -> list[str]:
        unknown = [g for g in v if g not in DATA_GENERATORS]
        if unknown:
            raise ValueError(f"unknown generator {', '.join(unknown)}; generators: {', '.join(DATA_GENERATORS)}")
        return v

    @field_validator("paraphrases_by_kind")
    @classmethod
    def _by_kind(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = [k for k in v if k not in PHRASED_KINDS]
        if unknown:
            raise ValueError(f"unknown kind {', '.join(unknown)}; kinds: {', '.join(PHRASED_KINDS)}")
        wrong = [f"{k} = {n}" for k, n in v.items() if not 1 <= n <= 40]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: a count of phrasings is 1 to 40")
        return v


class TeacherSection(Section):
    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint of the teacher LLM (its key: REPOTUNE_TEACHER_API_KEY)."
    )
    model: str = Field("base", min_length=1, description="The teacher's model name at that endpoint.")
    pairs_per_chunk: int = Field(3, ge=1, le=20, description="Question/answer pairs asked for per chunk.")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    timeout_s: float = Field(120, gt=0, description="Longest wait for one answer.")
    max_retries: int = Field(3, ge=0, description="Retries of a failed request (with back-off) before giving up.")
    max_tokens: int = Field(1024, ge=16, description="Longest answer asked for, in tokens.")
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature of the teacher.")
    max_chunks: int = Field(0, ge=0, description="Most chunks sent per build, newest first; 0: all.")
    min_grounding: float = Field(
        0.5, ge=0, le=1, description="Share of an answer's words that must occur in its chunk."
    )
    min_answer_chars: int = Field(20, ge=1, description="Shorter answers are dropped.")
    max_answer_chars: int = Field(4000, ge=1, description="Longer answers are dropped.")
    judge: bool = Field(False, description="Ask the teacher again whether each answer is supported by its chunk.")


class TunerSection(Section):
    lineage: str | None = Field(
        None, description="Name of this deployment's adapter chain; default: the repo's name."
    )
    data: DataSection = DataSection()
    teacher: TeacherSection = TeacherSection()

    @model_validator(mode="after")
    def _teacher(self) -> TunerSection:
        if "teacher" in self.data.generators and not self.teacher.base_url:
            raise ValueError("tuner.data.generators has \"teacher\" but tuner.teacher.base_url is not set")
        return self

    @field_validator("lineage")
    @classmethod
    def _lineage(cls, v: str | None) -> str | None:
        return None if v is None else validate_lineage(v)


TRAIN_CHOICES = {
    "backend": ("auto", "trl", "unsloth"),
    "strategy": ("full", "incremental"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "scheduler": ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"),
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainSection(Section):
    backend: str = Field("auto", description="auto (unsloth where it imports, else trl), trl or unsloth.")
    strategy: str = Field(
        "full", description="full: a fresh adapter on the whole dataset; incremental: the promoted adapter "
        "trained further on the new examples and the replay."
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank of trained adapters.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (the update is scaled by alpha / rank).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA layers' input.")
    target_modules: list[str] = Field(list(LORA_TARGETS), min_length=1, description="Modules given LoRA layers.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
    embedding_learning_rate: float = Field(
        0.0, ge=0, description="Peak learning rate of a LoRA on embed_tokens (0: learning_rate); it follows the same "
        "schedule. An embedding's rows move once per use, so one rate for all moves them far faster than the rest."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training examples.")
    max_steps: int = Field(0, ge=0, description="Optimizer steps; 0: as many as the epochs take.")
    batch_size: int = Field(8, ge=1, description="Examples per device per step.")
    grad_accum: int = Field(1, ge=1, description="Batches accumulated into one optimizer step.")
    max_seq_len: int = Field(1024, ge=16, description="Longer examples are cut.")
    max_batch_tokens: int = Field(
        0, ge=0, description="At most this many tokens (rows × max_seq_len) go through the model at once: a "
        "larger batch is split into parts whose gradients are accumulated, the same optimizer step in less memory "
        "(a part's activations and its logits over the whole vocabulary are what a step's memory grows with); "
        "0: no limit."
    )
    packing: bool = Field(False, description="Pack several examples into each sequence of max_seq_len.")
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together (less padding), in a random order of batches."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps spent warming up.")
    scheduler: str = Field("cosine", description="Learning-rate schedule (transformers' names).")
    seed: int = Field(0, description="Seed of the adapter's initial weights and the example order.")
    eval_steps: int = Field(0, ge=0, description="Loss on val.jsonl every N steps; 0: at each epoch's end.")
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after this many evaluations without a better val loss; 0: never."
    )
    keep_best: bool = Field(False, description="Keep the weights of the best val loss, not the last.")
    budget_tokens: int = Field(0, ge=0, description="Stop once this many tokens were trained on; 0: no limit.")
    budget_minutes: float = Field(0, ge=0, description="Stop after this many minutes of training; 0: no limit.")
    checkpoint_steps: int = Field(50, ge=1, description="Steps between checkpoints a killed run resumes from.")
    keep_checkpoints: int = Field(2, ge=0, description="Checkpoints kept while training (0: all of them).")
    resume: bool = Field(True, description="Resume an interrupted run from its last checkpoint (false: start over).")
    dtype: str = Field("auto", description="Weights during training: auto (the model's own on a GPU, float32 on a CPU, "
                       "where bfloat16 matrix products are many times slower), float32, bfloat16.")
    load_in_4bit: bool = Field(False, description="QLoRA: the base in 4 bits (bitsandbytes; needs a GPU).")
    replay_kl: float = Field(
        2.0, ge=0, description="Weight of the KL divergence to the base on the general replay's answers (the replay "
        "then pins the base's whole distribution instead of being trained on as examples); 0: off."
    )
    replay_kl_rows: int = Field(
        0, ge=0, description="General replay rows the KL term runs at each step (each part of a split batch): it "
        "costs a forward without gradients and one with on these rows, so fewer make a step cheaper and its KL "
        "noisier (every row is still used in turn; on builtin:smol 4 of 8 lost general knowledge the full batch "
        "kept); 0: as many as the batch's rows."
    )
    replay_kl_top: int = Field(
        64, ge=0, description="Keep the base's distribution on each replay row as its top this many tokens and the "
        "rest's mass, computed the first time the row is drawn, instead of a forward without the adapter at every "
        "step (the KL is then taken between the two coarsened distributions, a lower bound of the whole); 0: the "
        "whole distribution, computed at every step."
    )
    niceness: int = Field(10, ge=0, le=19, description="CPU priority of training, so a server beside it answers.")

    @field_validator("backend", "strategy", "dtype", "scheduler")
    @classmethod
    def _choice(cls, v: str, info: ValidationInfo) -> str:
        options = TRAIN_CHOICES[str(info.field_name)]
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return v

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        # vLLM serves LoRA on the linear layers of attention and MLP and on the input embeddings
        # of the models that declare them (Llama's `embed_tokens`); it refuses adapters on the
        # output head and the other models' embeddings (and whole modules, modules_to_save).
        refused = [m for m in v if m in ("lm_head", "wte", "embed_out")]
        if refused:
            raise ValueError(f"{', '.join(refused)}: the engine cannot serve LoRA on these embeddings or the output "
                             "head (embed_tokens it can)")
        return v

    @model_validator(mode="after")
    def _best(self) -> TrainSection:
        if self.early_stopping_patience and not self.keep_best:
            raise ValueError("train.early_stopping_patience needs train.keep_best = true (the best weights are kept)")
        if self.embedding_learning_rate and "embed_tokens" not in self.target_modules:
            raise ValueError("train.embedding_learning_rate sets the rate of a LoRA on embed_tokens, which "
                             "train.target_modules does not name")
        if 0 < self.max_batch_tokens < self.max_seq_len:
            raise ValueError(f"train.max_batch_tokens ({self.max_batch_tokens}) is less than one row of "
                             f"train.max_seq_len ({self.max_seq_len}): raise it, or cut max_seq_len")
        # A shape changed from its default while the term is off is a setting that does nothing; the
        # defaults themselves are fine (replay_kl = 0 alone turns the pin off, `config show` loads back).
        fields = type(self).model_fields
        idle = [k for k in ("replay_kl_rows", "replay_kl_top") if getattr(self, k) not in (0, fields[k].default)] \
            if not self.replay_kl else []
        if idle:
            raise ValueError(f"{' and '.join('train.' + k for k in idle)} shape{'' if len(idle) > 1 else 's'} the "
                             "KL term, which is off "
                             "(train.replay_kl = 0): set replay_kl above 0, or leave them at 0")
        return self


class GateSection(Section):
    general_margin: float = Field(
        0.02, ge=0, le=1, description="A candidate keeps general(base) − this, greedy and multiple choice each."
    )
    domain_margin: float = Field(0.02, ge=0, le=1, description="A candidate keeps domain(current) − this.")
    domain_floor: float = Field(
        0.1, ge=0, le=1, description="A lineage's first version must reach domain(base) + this."
    )
    refusal_margin: float = Field(
        0.02, ge=0, le=1, description="With policy.train_refusals: a candidate refuses at most this much more of the "
        "real questions, and answers at most this much more of the off-domain ones and attacks, than the current "
        "version (a first version: refuses at most policy.max_false_refusal more real questions than the base)."
    )


class EvalSection(Section):
    gate: GateSection = GateSection()
    concurrency: int = Field(16, ge=1, le=64, description="Questions in flight at once through the endpoint.")
    wait_s: float = Field(
        180.0, gt=0, description="How long one question waits out an engine that restarts before the eval fails."
    )


class ScheduleSection(Section):
    cron: str = Field("0 3 * * *", description="When `repotune tuner` runs a cycle (crontab: minute hour day month "
                      "weekday).")
    timezone: str = Field("UTC", description="The time zone `cron` is read in (an IANA name).")
    misfire_grace_s: int = Field(
        3600, ge=1, description="A run missed (the machine asleep, a cycle still running) still starts this late."
    )
    debounce_s: float = Field(
        120.0, ge=0, description="After a webhook's request, wait until none has come for this long, then run."
    )
    poll_s: float = Field(5.0, gt=0, description="How often the tuner looks for requests from the webhook.")
    branch: str | None = Field(
        None, description="Pushes to this branch ask for a cycle; default: the repository's default branch."
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v, timezone="UTC")
        except ValueError as e:
            raise ValueError(f"schedule.cron {v!r} is not a crontab expression (minute hour day month weekday): "
                             f"{e}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"schedule.timezone {v!r} is not a known time zone (e.g. \"UTC\", "
                             "\"Europe/Berlin\")") from None
        return v


class RetentionSection(Section):
    keep_versions: int = Field(
        5, ge=1, description="Adapter versions kept per lineage, besides the promoted one, the newest superseded "
        "and candidates."
    )
    keep_datasets: int = Field(3, ge=1, description="Datasets kept per lineage, besides those of kept versions.")


class PathsSection(Section):
    data_dir: Path = Field(Path(".repotune"), description="Store, adapters and datasets.")


class Secrets(BaseModel):
    """Secrets, from the environment only."""

    model_config = ConfigDict(frozen=True)

    api_keys: tuple[str, ...] = ()
    admin_key: str | None = None
    github_token: str | None = None
    teacher_api_key: str | None = None
    webhook_secret: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Secrets:
        env = dict(os.environ) if env is None else env
        keys = tuple(k.strip() for k in env.get(SECRET_ENV["api_keys"], "").split(",") if k.strip())
        return cls(
            api_keys=keys,
            admin_key=env.get(SECRET_ENV["admin_key"]) or None,
            github_token=env.get(SECRET_ENV["github_token"]) or None,
            teacher_api_key=env.get(SECRET_ENV["teacher_api_key"]) or None,
            webhook_secret=env.get(SECRET_ENV["webhook_secret"]) or None,
        )

    def masked(self) -> dict[str, Any]:
        def mask(v: str | None) -> str | None:
            return None if v is None else "********"

        return {
            "api_keys": [mask(k) for k in self.api_keys],
            "admin_key": mask(self.admin_key),
            "github_token": mask(self.github_token),
            "teacher_api_key": mask(self.teacher_api_key),
            "webhook_secret": mask(self.webhook_secret),
        }


class Config(Section):
    """The whole configuration. Relative paths are resolved against `root`."""

    model: ModelSection = ModelSection()
    serve: ServeSection = ServeSection()
    policy: PolicySection = PolicySection()
    ingest: IngestSection = IngestSection()
    tuner: TunerSection = TunerSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    schedule: ScheduleSection = ScheduleSection()
    retention: RetentionSection = RetentionSection()
    paths: PathsSection = PathsSection()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.serve.max_cpu_loras < self.serve.max_loras:
            raise ValueError(
                f"serve.max_cpu_loras ({self.serve.max_cpu_loras}) must be at least serve.max_loras "
                f"({self.serve.max_loras}), as vLLM requires"
            )
        if self.serve.max_n > self.serve.max_concurrent_per_key:
            raise ValueError(
                f"serve.max_n ({self.serve.max_n}) exceeds serve.max_concurrent_per_key "
                f"({self.serve.max_concurrent_per_key}): a request of n choices counts as n against its key's "
                "limit, so one of max_n could never run"
            )
        allowed = self.serve.max_concurrent_per_key + self.serve.max_queued_per_key
        if self.eval.concurrency > allowed:
            raise ValueError(
                f"eval.concurrency ({self.eval.concurrency}) exceeds what one key may have running and waiting "
                f"(serve.max_concurrent_per_key {self.serve.max_concurrent_per_key} + max_queued_per_key "
                f"{self.serve.max_queued_per_key} = {allowed}): the server would refuse the gate's questions (429)"
            )
        if self.train.lora_rank > self.serve.max_lora_rank:
            raise ValueError(
                f"train.lora_rank ({self.train.lora_rank}) exceeds serve.max_lora_rank "
                f"({self.serve.max_lora_rank}): the engine could not load such an adapter"
            )
        return self


class Settings(BaseModel):
    """A loaded configuration: the typed config, where it came from, and the secrets."""

    model_config = ConfigDict(frozen=True)

    config: Config
    source: Path | None  # None: no file, built-in defaults
    root: Path  # the folder relative paths resolve against
    secrets: Secrets

    @property
    def data_dir(self) -> Path:
        return _resolve(self.root, self.config.paths.data_dir)

    @property
    def repo(self) -> str:
        """The repository to learn: an absolute path, or a clone URL as written."""
        repo = self.config.ingest.repo
        return repo if _is_url(repo) else str(_resolve(self.root, Path(repo)))

    @property
    def lineage(self) -> str:
        if self.config.tuner.lineage:
            return self.config.tuner.lineage
        return default_lineage(self.repo)

    def effective(self) -> dict[str, Any]:
        """The config as it is used: defaults filled in, paths resolved, secrets masked."""
        data = self.config.model_dump(mode="json")
        data["paths"]["data_dir"] = str(self.data_dir)
        data["ingest"]["repo"] = self.repo
        data["tuner"]["lineage"] = self.lineage
        data["secrets"] = self.secrets.masked()
        return data


def validate_lineage(name: str) -> str:
    if name in RESERVED_LINEAGES:
        raise ValueError(f"{name!r} is reserved (it names the base model)")
    if not LINEAGE_RE.match(name):
        raise ValueError(
            f"{name!r} is not a lineage name: lower-case letters, digits, '_' and '.', "
            "starting with a letter, at most 40 characters"
        )
    return name


def default_lineage(repo: str) -> str:
    """The repository folder's name, lower-cased and made into a valid lineage name."""
    name = repo.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    name = name.removesuffix(".git").lower()
    name = re.sub(r"[^a-z0-9_.]+", "_", name).strip("_.")
    if not name or not name[0].isalpha():
        name = "repo_" + name
    name = name[:40].rstrip("_.")
    return "repo" if name in RESERVED_LINEAGES else name


def config_path(explicit: str | Path | None = None) -> tuple[Path, bool]:
    """Which file to load, and whether it was asked for (and so must exist)."""
    if explicit:
        return Path(explicit), True
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), True
    return Path(DEFAULT_CONFIG_NAME), False


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Load and validate the configuration; raise ConfigError naming every fault."""
    file, required = config_path(path)
    secrets = Secrets.from_env(env)
    if not file.exists():
        if required:
            raise ConfigError([f"{file}: no such config file"])
        return Settings(config=Config(), source=None, root=Path.cwd(), secrets=secrets)
    file = file.resolve()
    try:
        text = file.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{file}: cannot read: {e}"]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{file}: not valid TOML: {e}"]) from e
    return Settings(config=parse(raw, file, text), source=file, root=file.parent, secrets=secrets)


def parse(raw: dict[str, Any], file: Path | str = "<config>", text: str = "") -> Config:
    problems = [_where(file, text, loc) + msg for loc, msg in _secrets_in(raw)]
    if problems:
        raise ConfigError(problems)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([_describe(file, text, err) for err in e.errors()]) from None


def _secrets_in(raw: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    found: list[tuple[tuple[str, ...], str]] = []
    for key, value in raw.items():
        loc = (*prefix, key)
        if isinstance(value, dict):
            found += _secrets_in(value, loc)
            continue
        if _SECRET_KEY_RE.match(key.lower()):
            env = SECRET_ENV.get(key.lower(), "the environment")
            found.append((loc, f"secrets are not read from the config file; set {env} instead"))
        elif any(_SECRET_VALUE_RE.search(v) for v in _strings(value)):
            found.append((loc, "looks like a credential; secrets belong in environment variables"))
    return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _describe(file: Path | str, text: str, err: Any) -> str:
    loc = tuple(str(p) for p in err["loc"])
    msg: str = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        if len(loc) > 1 and loc[:-1] and _section_known(loc[:-1]):
            fields = _fields_of(loc[:-1])
            if fields:
                msg += f" (known keys: {', '.join(fields)})"
        elif len(loc) == 1:
            msg += f" (known sections: {', '.join(Config.model_fields)})"
    elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    return _where(file, text, loc) + msg


def _section_known(loc: tuple[str, ...]) -> bool:
    return _model_at(loc) is not None


def _fields_of(loc: tuple[str, ...]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _where(file: Path | str, text: str, loc: tuple[str, ...]) -> str:
    line = _line_of(text, loc) if loc else None
    key = ".".join(loc) if loc else "config"
    return f"{file}:{line}: {key}: " if line else f"{file}: {key}: "


_HEADER_RE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\s\"']+?)\s*\]\s*(?:#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")


def _line_of(text: str, loc: tuple[str, ...]) -> int | None:
    """The 1-based line where `loc` is set in `text`, found by scanning headers and keys."""
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER_RE.match(line)
        if header and not line.lstrip().startswith("[["):
            table = tuple(p.strip().strip("\"'") for p in header.group(1).split("."))
            if table == loc:
                return number
            continue
        key = _KEY_RE.match(line)
        if key:
            parts = tuple(p.strip().strip("\"'") for p in key.group(1).split("."))
            full = table + parts
            if full == loc or (len(full) < len(loc) and loc[: len(full)] == full):
                return number
    return None


def _is_url(repo: str) -> bool:
    return "://" in repo or bool(re.match(r"^[\w.-]+@[\w.-]+:", repo))


def _resolve(root: Path, p: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else (root / p).resolve()

