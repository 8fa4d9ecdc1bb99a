"""Starting the server: refusals that need no engine."""

import pytest

from repotune import config as cfg
from serve import server


def test_serving_without_api_keys_is_refused_unless_auth_is_off(tmp_path, clean_env):
    path = tmp_path / "config.toml"
    path.write_text('[model]\nbase = "./nowhere"\n')
    with pytest.raises(server.ServeError, match="REPOTUNE_API_KEYS"):
        server.build(cfg.load(path))
    path.write_text('[model]\nbase = "./nowhere"\n[serve]\nauth = false\n')
    from repotune.models import ModelError

    with pytest.raises(ModelError, match="does not exist"):  # past the key check, to the base model
        server.build(cfg.load(path))
