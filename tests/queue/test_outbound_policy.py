"""Which TLS policy a destination gets (queue/outbound.py tls_policy_for)."""

from __future__ import annotations

from pathlib import Path

from postbote.config import parse_config
from postbote.queue.outbound import tls_policy_for


def test_require_tls_domains_match_whatever_their_case(tmp_path: Path) -> None:
    config = parse_config('[delivery]\nrequire_tls = ["Secure.Example"]\n', "t", tmp_path)
    required = tls_policy_for(config, "secure.example", "mx.secure.example")
    assert (required.mode, required.verify, required.server_name) == (
        "required",
        True,
        "mx.secure.example",
    )
    other = tls_policy_for(config, "other.example", "mx.other.example")
    assert (other.mode, other.verify) == ("opportunistic", False)
    off = parse_config('[delivery]\ntls = "none"\n', "t", tmp_path)
    assert tls_policy_for(off, "other.example", "mx").mode == "none"
