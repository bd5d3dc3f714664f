#!/usr/bin/env bash
# Installs the Debian packages that the demo corpus is built from, and the browser of the serve page's test,
# only when some are missing.
set -euo pipefail
packages=(ffmpeg espeak-ng festival festvox-kallpc16k asterisk-core-sounds-en-g722 asterisk-core-sounds-es-g722
          asterisk-core-sounds-en asterisk-core-sounds-es)
# tests/test_serve_browser.py drives the system chromium (Playwright's browser download is not reachable from
# every machine); a font so that the page's text renders.
packages+=(chromium fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ncdetect: the demo corpus and the browser test need these Debian packages, and apt-get is not" \
         "available: ${missing[*]}" >&2
    echo "ncdetect: install them with your system's package manager, then run make again." >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "ncdetect: installing Debian packages (demo corpus, browser test): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends keeps festival from pulling in voices that the demo must not use.
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
