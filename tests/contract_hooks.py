"""schemathesis hooks of the contract tests (loaded through SCHEMATHESIS_HOOKS).

Every schema-valid Idempotency-Key is made unique. The generator draws keys from the header's
pattern, often one character, and repeats inputs: a repeat with the same key and request is
answered with the *first* answer (documented), so a stateful sequence create -> delete -> the
same create again gets the deleted task's 201 replayed, and the "created resource is readable"
check then fails although the node did what the document says. Replays are tested in
tests/test_idempotency.py; invalid keys are left as generated (they must get 400).
"""
import os
import re
import uuid

import schemathesis
import yaml

KEY_HEADER = "Idempotency-Key"
SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "openapi.yaml")
with open(SPEC, encoding="utf-8") as spec:  # the pattern the generator draws keys from
    KEY_PATTERN = re.compile(yaml.safe_load(spec)["components"]["parameters"]["IdempotencyKey"]["schema"]["pattern"])
TAG_LENGTH = 33  # "." and 32 hex digits


def unique_key(key: str) -> str:
    """The key with a unique tag inside it, in the same form (quoted or bare); still valid."""
    tag = "." + uuid.uuid4().hex
    if len(key) >= 2 and key[0] == key[-1] == '"':
        return f'"{key[1:-1][:255 - TAG_LENGTH]}{tag}"'
    return key[:255 - TAG_LENGTH] + tag


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    key = headers.get(KEY_HEADER)
    if isinstance(key, str) and KEY_PATTERN.fullmatch(key):
        tagged = unique_key(key)
        assert KEY_PATTERN.fullmatch(tagged), (key, tagged)  # max length 255, forms of the pattern
        headers[KEY_HEADER] = tagged
