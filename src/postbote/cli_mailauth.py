"""``postbote dkim`` and ``postbote dns-records``: signing keys and the DNS records a
domain publishes so that other servers accept its mail (issue 6 §2)."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from postbote.config import Config
from postbote.policy.dkim import public_record
from postbote.policy.dkimkeys import ALGORITHMS, DkimKeys, _check_domain

TTL = 3600


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "dkim",
        parents=[common],
        help="DKIM signing keys",
        description="keygen DOMAIN: make a key (RSA 2048 by default) that signs mail from "
        "DOMAIN, and print its DNS record; list: every key.",
    )
    s.add_argument("action", choices=["keygen", "list"])
    s.add_argument("domain", nargs="?", metavar="DOMAIN")
    s.add_argument("--selector", default=None, help="the key's name in DNS (default: a date)")
    s.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="rsa")
    s.set_defaults(handler=cmd_dkim)

    s = sub.add_parser(
        "dns-records",
        parents=[common],
        help="print the DNS records to publish for a domain",
        description="Prints MX, SPF, DKIM and DMARC records for DOMAIN in zone-file form, "
        "ready to paste, with placeholders for MTA-STS and TLS reporting.",
    )
    s.add_argument("domain", metavar="DOMAIN")
    s.set_defaults(handler=cmd_dns_records)


def cmd_dkim(args: argparse.Namespace, config: Config) -> int:
    keys = DkimKeys(config.data_dir)
    if args.action == "list":
        found = keys.all()
        if not found:
            print("no DKIM keys (make one: postbote dkim keygen DOMAIN)")
        for domain, entries in sorted(found.items()):
            for key in entries:
                print(f"{domain}\t{key.selector}\t{key.algorithm}")
        return 0
    selector = args.selector or datetime.date.today().strftime("s%Y%m")
    if args.algorithm == "ed25519" and args.selector is None:
        selector += "e"  # an RSA and an ed25519 key side by side (dual signing)
    path, key = keys.generate(args.domain, selector, args.algorithm)
    print(f"postbote: new {key.algorithm} key in {path} (mode 0600)")
    print("Publish this record, then mail from this domain is signed with it:")
    print(_dkim_line(key.domain, key.selector, public_record(key.private_key, args.algorithm)))
    return 0


def cmd_dns_records(args: argparse.Namespace, config: Config) -> int:
    domain = _check_domain(args.domain)
    mx = config.hostname
    keys = DkimKeys(config.data_dir).all().get(domain, [])
    out = [
        f"; DNS records for {domain}: paste them into the zone of {domain}.",
        f"; Mail for {domain} goes to {mx}; give {mx} A/AAAA records and a matching PTR.",
        f"{domain}.\t{TTL}\tIN\tMX\t10 {mx}.",
        "; SPF (RFC 7208): only the MX hosts send mail for the domain.",
        f'{domain}.\t{TTL}\tIN\tTXT\t"v=spf1 mx -all"',
    ]
    if keys:
        out.append("; DKIM (RFC 6376): the public keys of the signing keys.")
        for key in keys:
            algorithm = next(a for a, full in ALGORITHMS.items() if full == key.algorithm)
            out.append(_dkim_line(domain, key.selector, public_record(key.private_key, algorithm)))
    else:
        out.append(f"; DKIM: no key yet. Make one with: postbote dkim keygen {domain}")
    out += [
        "; DMARC (RFC 7489): ask receivers to quarantine mail that fails SPF and DKIM;",
        "; start with p=none to watch the reports first, end with p=reject.",
        f'_dmarc.{domain}.\t{TTL}\tIN\tTXT\t"{_dmarc_value(domain)}"',
        "; MTA-STS (RFC 8461) and TLS reporting (RFC 8460): placeholders for a later release.",
        f'; _mta-sts.{domain}.\t{TTL}\tIN\tTXT\t"v=STSv1; id=YYYYMMDDNN"',
        f'; _smtp._tls.{domain}.\t{TTL}\tIN\tTXT\t"v=TLSRPTv1; rua=mailto:postmaster@{domain}"',
    ]
    print("\n".join(out))
    return 0


def _dmarc_value(domain: str) -> str:
    return f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"


def _dkim_line(domain: str, selector: str, value: str) -> str:
    """A TXT record in zone-file form; strings of at most 255 octets (RFC 1035 §3.3)."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
    quoted = " ".join(f'"{c}"' for c in chunks)
    body = f"( {quoted} )" if len(chunks) > 1 else quoted
    return f"{selector}._domainkey.{domain}.\t{TTL}\tIN\tTXT\t{body}"
