"""The config loader: the shipped file loads, and every kind of bad file is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repotune import config as cfg
from repotune.cli import app

from .conftest import ROOT

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def test_shipped_config_loads_with_its_documented_defaults(clean_env):
    settings = cfg.load(ROOT / "config.toml")
    assert settings.source == ROOT / "config.toml"
    # The shipped file states the defaults: loading it equals loading nothing.
    assert settings.config == cfg.Config()
    assert settings.data_dir == ROOT / ".repotune"
    assert settings.repo == str(ROOT)
    assert settings.lineage == cfg.default_lineage(str(ROOT))


def test_every_shipped_key_is_commented():
    lines = (ROOT / "config.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            # A key's comment sits above it or above the run of keys it belongs to.
            above = i - 1
            while above >= 0 and "=" in lines[above] and not lines[above].lstrip().startswith("#"):
                above -= 1
            assert above >= 0 and lines[above].lstrip().startswith("#"), f"config.toml:{i + 1} has no comment"


def test_bad_toml_names_file_and_line(write_config):
    path = write_config('[model]\nbase = "builtin:tiny"\n[serve\nmax_lora_rank = 16\n')
    result = run("config", "check", "--config", str(path))
    assert result.exit_code == 2
    assert str(path) in result.stderr
    assert "not valid TOML" in result.stderr and "line 3" in result.stderr


def test_unknown_key_names_key_file_and_line(write_config):
    path = write_config('[model]\nbase = "builtin:tiny"\n\n[serve]\nmax_lora_rnk = 16\n')
    result = run("config", "check", "--config", str(path))
    assert result.exit_code == 2
    assert f"{path}:5: serve.max_lora_rnk: unknown key (known keys: host, port, max_lora_rank," in result.stderr


def test_unknown_section_is_an_error(write_config):
    path = write_config('[modle]\nbase = "x"\n')
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(path)
    sections = ", ".join(cfg.Config.model_fields)
    assert e.value.problems == [f"{path}:1: modle: unknown key (known sections: {sections})"]


def test_wrong_type_names_key_line_and_value(write_config):
    path = write_config('[policy]\nrefusal = "no"\ntrain_refusals = "sometimes"\n')
    result = run("config", "check", "--config", str(path), "--json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    [problem] = report["errors"]
    assert problem.startswith(f"{path}:3: policy.train_refusals: ")
    assert "'sometimes'" in problem


def test_every_problem_is_reported_at_once(write_config):
    path = write_config("[serve]\nmax_lora_rank = 'big'\n[train]\nlora_rank = 0\n[paths]\ncache = 'x'\n")
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(path)
    keys = [p.split(": ")[1] for p in e.value.problems]
    assert keys == ["serve.max_lora_rank", "train.lora_rank", "paths.cache"]


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ('[serve]\napi_keys = ["k1"]\n', "serve.api_keys", "REPOTUNE_API_KEYS"),
        ('[serve]\nadmin_key = "hunter2"\n', "serve.admin_key", "REPOTUNE_ADMIN_KEY"),
        ('[ingest]\ngithub_token = "abc"\n', "ingest.github_token", "GITHUB_TOKEN"),
        ('[tuner]\nteacher_api_key = "abc"\n', "tuner.teacher_api_key", "REPOTUNE_TEACHER_API_KEY"),
        ('[ingest]\nrepo = "https://ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8@github.com/o/r"\n',
         "ingest.repo", "environment variables"),
    ],
)
def test_a_secret_in_the_file_is_refused(write_config, text, key, hint):
    path = write_config(text)
    result = run("config", "check", "--config", str(path))
    assert result.exit_code == 2
    assert f"{path}:2: {key}: " in result.stderr and hint in result.stderr
    # the refusal never echoes the secret itself
    assert "hunter2" not in result.stderr and "ghp_a1B2" not in result.stderr


def test_keys_that_merely_mention_tokens_are_not_secrets():
    assert not cfg._secrets_in({"ingest": {"max_tokens": 512, "chunk_tokens": 256}})


def test_lora_rank_above_engine_limit_is_refused_at_load(write_config):
    path = write_config("[serve]\nmax_lora_rank = 8\n\n[train]\nlora_rank = 16\n")
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(path)
    assert "train.lora_rank (16) exceeds serve.max_lora_rank (8)" in str(e.value)


def test_max_n_above_a_keys_concurrency_is_refused_at_load(write_config):
    """A request of n choices takes n of its key's units: more than the key has could never run."""
    path = write_config("[serve]\nmax_concurrent_per_key = 4\nmax_n = 8\n")
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(path)
    assert "serve.max_n (8)" in str(e.value) and "serve.max_concurrent_per_key (4)" in str(e.value)
    assert cfg.load(write_config("[serve]\nmax_concurrent_per_key = 8\nmax_n = 8\n")).config.serve.max_n == 8


def test_eval_concurrency_above_what_a_key_may_run_and_queue_is_refused_at_load(write_config):
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(write_config("[serve]\nmax_concurrent_per_key = 8\nmax_queued_per_key = 4\nmax_n = 8\n"
                              "[eval]\nconcurrency = 16\n"))
    assert "eval.concurrency (16) exceeds" in str(e.value) and "= 12)" in str(e.value)
    assert cfg.load(write_config("[serve]\nmax_concurrent_per_key = 8\nmax_queued_per_key = 8\nmax_n = 8\n"
                                 "[eval]\nconcurrency = 16\n")).config.eval.concurrency == 16


def test_engine_rank_must_be_one_vllm_accepts(write_config):
    path = write_config("[serve]\nmax_lora_rank = 24\n[train]\nlora_rank = 8\n")
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(path)
    assert f"{path}:2: serve.max_lora_rank: must be one of the ranks vLLM accepts" in str(e.value)


@pytest.mark.parametrize("name", ["base", "Repo", "1repo", "my-repo", "a" * 41, ""])
def test_bad_lineage_names_are_refused(write_config, name):
    path = write_config(f'[tuner]\nlineage = "{name}"\n')
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(path)
    assert f"{path}:2: tuner.lineage: " in str(e.value)


@pytest.mark.parametrize(
    ("repo", "lineage"),
    [
        ("/src/RepoTune", "repotune"),
        ("/src/my-project", "my_project"),
        ("https://github.com/acme/Widget.Factory.git", "widget.factory"),
        ("git@github.com:acme/2fast.git", "repo_2fast"),
        ("/src/base", "repo"),
    ],
)
def test_default_lineage_is_the_repo_folder_name(repo, lineage):
    assert cfg.default_lineage(repo) == lineage
    assert cfg.validate_lineage(lineage) == lineage


def test_relative_paths_resolve_against_the_config_folder(write_config, tmp_path, monkeypatch):
    path = write_config('[paths]\ndata_dir = "state"\n[ingest]\nrepo = "../code"\n')
    monkeypatch.chdir("/")
    settings = cfg.load(path)
    assert settings.data_dir == tmp_path / "state"
    assert settings.repo == str(tmp_path.parent / "code")
    assert settings.lineage == "code"


def test_config_is_found_by_env_then_cwd(write_config, tmp_path, clean_env):
    path = write_config('[tuner]\nlineage = "from_env"\n', name="other.toml")
    clean_env.setenv("REPOTUNE_CONFIG", str(path))
    assert cfg.load().lineage == "from_env"
    clean_env.delenv("REPOTUNE_CONFIG")
    (tmp_path / "config.toml").write_text('[tuner]\nlineage = "from_cwd"\n')
    clean_env.chdir(tmp_path)
    assert cfg.load().lineage == "from_cwd"


def test_no_config_file_means_defaults_but_a_named_missing_file_is_an_error(tmp_path, clean_env):
    clean_env.chdir(tmp_path)
    settings = cfg.load()
    assert settings.source is None and settings.config == cfg.Config()
    result = run("config", "show", "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert "no such config file" in result.stderr


def test_show_masks_secrets_from_the_environment(write_config):
    path = write_config('[model]\nbase = "builtin:tiny"\n')
    env = {"REPOTUNE_API_KEYS": "client-key-one, client-key-two", "REPOTUNE_ADMIN_KEY": "admin-secret-1"}
    for args in (["config", "show"], ["config", "show", "--json"]):
        result = run(*args, "--config", str(path), env=env)
        assert result.exit_code == 0, result.output
        assert "client-key" not in result.stdout and "admin-secret" not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["secrets"]["api_keys"] == ["********", "********"]
    assert shown["secrets"]["admin_key"] == "********"
    assert shown["secrets"]["github_token"] is None
    assert shown["source"] == str(path)
    assert shown["paths"]["data_dir"] == str(Path(path).parent / ".repotune")


def test_show_prints_toml_that_loads_back(write_config, tmp_path):
    path = write_config('[tuner]\nlineage = "shown"\n[train]\nlora_rank = 8\n')
    result = run("config", "show", "--config", str(path))
    assert result.exit_code == 0, result.output
    text = result.stdout.split("\n", 1)[1]
    import tomllib

    data = tomllib.loads(text)
    assert data["tuner"]["lineage"] == "shown" and data["train"]["lora_rank"] == 8
    assert data["paths"]["data_dir"] == str(tmp_path / ".repotune")
    data.pop("secrets")
    assert cfg.parse(data).train.lora_rank == 8


@pytest.mark.parametrize(("train", "message"), [
    ('target_modules = ["q_proj", "lm_head"]', "lm_head: the engine cannot serve LoRA on these embeddings"),
    ("embedding_learning_rate = 1e-4", "train.embedding_learning_rate sets the rate of a LoRA on embed_tokens, "
                                       "which train.target_modules does not name"),
    ("early_stopping_patience = 2", "needs train.keep_best = true"),
    ('backend = "deepspeed"', "train.backend: must be one of auto, trl, unsloth"),
    ('strategy = "sometimes"', "train.strategy: must be one of full, incremental"),
    ("replay_kl = 0\nreplay_kl_top = 32", "train.replay_kl_top shapes the KL term, which is off (train.replay_kl = 0)"),
    ("replay_kl = 0\nreplay_kl_rows = 4\nreplay_kl_top = 32",
     "train.replay_kl_rows and train.replay_kl_top shape the KL term"),
])
def test_train_settings_the_trainer_or_the_engine_cannot_use_are_refused_at_load(write_config, train, message):
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(write_config(f"[train]\n{train}\n"))
    assert message in str(e.value)


def test_a_lora_on_the_input_embeddings_loads_with_a_rate_of_its_own(write_config):
    train = cfg.load(write_config('[train]\ntarget_modules = ["q_proj", "embed_tokens"]\n'
                                  "embedding_learning_rate = 1e-4\n")).config.train
    assert train.target_modules == ["q_proj", "embed_tokens"] and train.embedding_learning_rate == 1e-4


def test_the_default_recipe_pins_the_base_and_replay_kl_0_alone_turns_it_off(write_config):
    """The KL pin is on by default (its shape included); a config that sets only replay_kl = 0 loads, the
    replay then trained on as examples."""
    default = cfg.load(write_config("")).config.train
    assert default.replay_kl > 0 and default.replay_kl_top > 0
    off = cfg.load(write_config("[train]\nreplay_kl = 0\n")).config.train
    assert off.replay_kl == 0
    # The shipped config.toml spells out the pin's shape: setting its replay_kl to 0 is enough there too.
    shipped = (Path(__file__).resolve().parents[1] / "config.toml").read_text()
    assert "\nreplay_kl = 2.0\n" in shipped
    edited = cfg.load(write_config(shipped.replace("\nreplay_kl = 2.0\n", "\nreplay_kl = 0\n")))
    assert edited.config.train.replay_kl == 0


def test_a_batch_token_limit_below_one_row_is_refused_with_both_keys(write_config):
    """A part of a batch is at least one row of max_seq_len: a smaller limit could never hold."""
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(write_config("[train]\nmax_seq_len = 1024\nmax_batch_tokens = 512\n"))
    assert "train.max_batch_tokens (512) is less than one row of train.max_seq_len (1024)" in str(e.value)
    fits = cfg.load(write_config("[train]\nmax_seq_len = 256\nmax_batch_tokens = 512\n"))
    assert fits.config.train.max_batch_tokens == 512


@pytest.mark.parametrize(("text", "key"), [
    ('[policy]\nmode = "gatekeeper"\n', "policy.mode"),
    ("[policy]\nthreshold = 1.5\n", "policy.threshold"),
    ("[policy]\nmax_false_refusal = 1\n", "policy.max_false_refusal"),
    ("[train]\nreplay_kl = -1\n", "train.replay_kl"),
    ('[tuner.data]\nreplay_answers = "mine"\n', "tuner.data.replay_answers"),
    ('[schedule]\ncron = "every night"\n', "schedule.cron"),
    ('[schedule]\ntimezone = "Mars/Olympus"\n', "schedule.timezone"),
    ("[schedule]\npoll_s = 0\n", "schedule.poll_s"),
])
def test_bad_policy_and_replay_settings_are_refused_with_their_key(write_config, text, key):
    path = write_config(text)
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(path)
    assert f"{path}:2: {key}: " in str(e.value)
