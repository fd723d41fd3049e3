"""The rule layers of the safety filter in one call: ``detect(text, role)``.

Layers run cheapest first: personal data and credentials on the text as written
(their validators need the exact digits and case), then the lexicon and the
injection rules on ``normalize(text)``. Finally every base64, hex or URL-encoded
run that decodes to readable text is scanned again by all layers; what is found
there spans the whole encoded run and its rule gets "+<encoding>" appended
("indiscriminate_weapons:bomb+base64"). Decoding goes one level deep: a run
inside a decoded run is not decoded again.
"""

from __future__ import annotations

from engine.safety.credentials import find_secrets
from engine.safety.findings import Finding
from engine.safety.injection import find_injection
from engine.safety.lexicon import ROLES, find_lexicon
from engine.safety.normalize import DecodedRun, decoded_runs, normalize
from engine.safety.pii import find_pii


def _scan(text: str, role: str) -> list[Finding]:
    normalized = normalize(text)
    return [
        *find_pii(text),
        *find_secrets(text),
        *find_lexicon(normalized, role=role),
        *find_injection(normalized),
    ]


def _wrap(finding: Finding, run: DecodedRun) -> Finding:
    """A finding inside a decoded run, moved onto the encoded run it came from."""
    return Finding(
        finding.category,
        run.start,
        run.end,
        finding.score,
        finding.detector,
        f"{finding.rule}+{run.encoding}",
        finding.label,
    )


def detect(text: str, role: str = "prompt") -> list[Finding]:
    """Run every rule layer over ``text``.

    Args:
        text: A prompt or a model response, as written.
        role: "prompt" (the user's words) or "response" (the model's): in a
            response a refusal dampens hazard terms and "Sure, here's how" counts
            as going along with a request.

    Returns:
        The findings sorted by span, each with its score; ``Policy.triggered``
        decides which of them act. Spans index ``text``.

    Raises:
        ValueError: ``role`` is neither "prompt" nor "response".
    """
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
    findings = _scan(text, role)
    for run in decoded_runs(text):
        findings += [_wrap(f, run) for f in _scan(run.text, role)]
    unique = {(f.category, f.start, f.end, f.detector, f.rule): f for f in findings}
    return sorted(unique.values(), key=lambda f: (f.start, f.end, f.category))
