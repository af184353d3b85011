#!/usr/bin/env bash
# Installs everything the tests need and runs them: the Debian packages of the real
# peers the tests talk to (swaks, msmtp, fetchmail, getmail6, opendkim-tools, postfix's
# smtp-source and smtp-sink), a virtual environment with postbote and its test extra,
# then ruff, mypy --strict and pytest.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v swaks >/dev/null || missing+=(swaks)
command -v msmtp >/dev/null || missing+=(msmtp)
command -v fetchmail >/dev/null || missing+=(fetchmail)
command -v getmail >/dev/null || missing+=(getmail6)
command -v opendkim-testmsg >/dev/null || missing+=(opendkim-tools)
[ -x /usr/sbin/smtp-source ] || missing+=(postfix)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "test.sh: installing Debian packages: ${missing[*]}"
    # Postfix must not configure itself as this machine's MTA or take port 25.
    echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

echo "test.sh: ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "test.sh: mypy --strict src"
.venv/bin/mypy --strict src
echo "test.sh: pytest"
exec .venv/bin/python -m pytest "$@"
