"""The secret scan's pre-filter loses nothing: it finds what detect-secrets finds on every line."""

from __future__ import annotations

import random
import string

import pytest

from ingest.secrets import Scanner


def _rand(rng: random.Random, chars: str, n: int) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


def _corpus(rng: random.Random) -> list[str]:
    alnum = string.ascii_letters + string.digits
    hexa, lower = "0123456789abcdef", string.ascii_lowercase
    secrets = [
        f'AWS_ACCESS_KEY_ID = "AKIA{_rand(rng, string.ascii_uppercase + string.digits, 16)}"',
        f'aws_secret_access_key = "{_rand(rng, alnum, 40)}"',
        f"token = ghp_{_rand(rng, alnum, 36)}",
        f"GITLAB = 'glpat-{_rand(rng, alnum, 20)}'",
        f"postgres://admin:{_rand(rng, alnum, 12)}@db.internal:5432/app",
        f'client_key = "{_rand(rng, alnum, 24)}"',
        f'DB-PASS: "{_rand(rng, alnum, 16)}"',
        f'PASSWORD = "{_rand(rng, alnum, 14)}"',
        f'my_secret := "{_rand(rng, alnum, 18)}"',
        f"ibm_cloud_iam_key = {_rand(rng, alnum + '_-', 44)}",
        f"IBM-COS-HMAC-SECRET-ACCESS-KEY = {_rand(rng, hexa, 48)}",
        f"softlayer_api_key: {_rand(rng, lower + string.digits, 64)}",
        f"cloudant_password = {_rand(rng, hexa, 64)}",
        f"https://user:{_rand(rng, hexa, 64)}@acct.cloudant.com",
        f"SLACK = 'xoxb-{rng.randint(10**9, 10**10)}-{_rand(rng, lower + string.digits, 24)}'",
        f"stripe = 'sk_live_{_rand(rng, alnum, 24)}'",
        f"twilio = 'AC{_rand(rng, lower + string.digits, 32)}'",
        f"mailchimp = '{_rand(rng, lower + string.digits, 32)}-us12'",
        f"npm = '//registry.npmjs.org/:_authToken={_rand(rng, hexa, 8)}-{_rand(rng, hexa, 4)}-"
        f"{_rand(rng, hexa, 4)}-{_rand(rng, hexa, 4)}-{_rand(rng, hexa, 12)}'",
        f"openai = 'sk-{_rand(rng, alnum, 20)}T3BlbkFJ{_rand(rng, alnum, 20)}'",
        f"telegram = '{rng.randint(10**8, 10**9)}:{_rand(rng, alnum + '_-', 35)}'",
        f"jwt = 'eyJ{_rand(rng, alnum, 20)}.eyJ{_rand(rng, alnum, 30)}.{_rand(rng, alnum, 30)}'",
        f'blob = "{_rand(rng, alnum + "+/", 40)}"',
        f"digest = '{_rand(rng, hexa, 40)}'",
    ]
    ordinary = [
        "found = sorted(found, key=lambda x: x.get('session', 0))",
        "def test_a_key_over_its_limit_gets_429_with_retry_after(server_fixture_name):",
        "    return self.cache_key_for_the_request_path(request)  # clients: see docs/API_KEYS.md",
        "url = f'https://example.com/{path}'",
        "    password_field = form.fields['password']",
        "MAX = 1234567890  # a number, not a token",
        "commit = 'c0ffee' * 2",
        "Ünïcödé ünd ïdéntïfïérs_thät_äré_löng_énöügh = 1",
    ]
    lines = secrets + ordinary
    lines += [line.upper() for line in secrets[5:12]] + [line.lower() for line in secrets[:4]]
    rng.shuffle(lines)
    return [*lines, "-----BEGIN RSA PRIVATE KEY-----"]  # last: a key with no END is redacted to the end


@pytest.mark.parametrize("seed", range(3))
def test_the_prefilter_finds_all_that_detect_secrets_finds_line_by_line(seed: int) -> None:
    lines = _corpus(random.Random(seed))
    text = "\n".join(lines)
    scanner, every_line = Scanner(), Scanner()
    every_line.candidates = lambda text: list(range(text.count("\n") + 1))  # type: ignore[method-assign]
    try:
        for is_diff, sample in ((False, text), (True, "\n".join("+" + line for line in lines))):
            ours, reference = scanner.redact_many([(sample, "settings.py", is_diff)])[0], every_line.redact_many(
                [(sample, "settings.py", is_diff)])[0]
            assert ours.text == reference.text
            assert ours.counts == reference.counts
            assert sum(reference.counts.values()) >= 25  # the corpus does hold secrets of many kinds
        assert len(scanner.candidates(text)) < len(lines)  # and the pre-filter did leave lines out
    finally:
        scanner.close()
        every_line.close()


def test_lines_seen_before_are_redacted_again_in_every_later_text() -> None:
    """What was found on a line is kept per file; a later diff showing the line again (as
    context, removed, in another batch) is redacted and counted as if scanned anew."""
    rng = random.Random(7)
    lines = _corpus(rng)[:-1]  # (the private key is redacted before any line is looked at)
    batches = [
        [(f"diff --git a/{path} b/{path}\n" + "\n".join(rng.choice("+- ") + rng.choice(lines) for _ in range(12)),
          path, True) for path in rng.sample(["settings.py", "deploy/config.yaml", "README.md"], 2)]
        for _ in range(30)
    ]
    remembering = Scanner()
    small = Scanner()
    small.LINE_CACHE = 5  # what it remembers is dropped again and again
    try:
        for batch in batches:
            fresh = Scanner()
            try:
                reference = fresh.redact_many(batch)
            finally:
                fresh.close()
            for scanner in (remembering, small):
                got = scanner.redact_many(batch)
                assert [r.text for r in got] == [r.text for r in reference]
                assert [r.counts for r in got] == [r.counts for r in reference]
        assert sum(len(kept) for kept in remembering._seen.values()) < sum(
            len(text.split("\n")) for batch in batches for text, _, _ in batch)  # lines did repeat
        redacted = remembering.redact_many(batches[-1])
        assert all("[REDACTED:" in r.text for r in redacted)
    finally:
        remembering.close()
        small.close()
