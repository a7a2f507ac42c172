#!/bin/bash
# Install the Debian packages named in the given list files (one per line, # comments) that
# are not installed yet. Needs root for that; without it, names them and exits 1.
# Packages do not start their system services here (policy-rc.d): tests and the lab run
# their own instances.
set -euo pipefail
missing=()
for list in "$@"; do
    while read -r pkg; do
        case "$pkg" in ""|"#"*) continue ;; esac
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done < "$list"
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root and they are installed)" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
fi
trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
