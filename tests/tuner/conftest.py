from tests.ingest.conftest import history, settings_for  # noqa: F401  (fixtures shared with ingest)
