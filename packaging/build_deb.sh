#!/usr/bin/env bash
# Builds safeshard_<version>_amd64.deb from built binaries (run by //packaging:deb; tools/package
# runs that with --config=opt). Depends: from dpkg-shlibdeps on every ELF file, plus python3 and
# adduser.
# Usage: build_deb.sh OUT.deb VERSION_H README UNIT CONFIG SAFESHARD SAFESHARDD INSPECTOR TORCH \
#                     PY_INIT PY_SO
set -euo pipefail
out=$(realpath -m "$1"); version_h=$2; readme=$3; unit=$4; config=$5
safeshard=$6; safeshardd=$7; inspector=$8; torch=$9; py_init=${10}; py_so=${11}
version=$(sed -n 's/.*kVersion\[\] = "\([^"]*\)".*/\1/p' "$version_h")
[[ -n "$version" ]] || { echo "no version in $version_h" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/safeshard" \
  "$root/usr/lib/python3/dist-packages/safeshard" "$root/usr/share/doc/safeshard"
install -m 0755 "$safeshard" "$root/usr/bin/safeshard"
install -m 0755 "$safeshardd" "$root/usr/bin/safeshardd"
install -m 0755 "$inspector" "$root/usr/bin/safeshard-inspector"
install -m 0755 "$torch" "$root/usr/bin/safeshard-torch"
install -m 0644 "$py_init" "$root/usr/lib/python3/dist-packages/safeshard/__init__.py"
install -m 0644 "$py_so" "$root/usr/lib/python3/dist-packages/safeshard/_safeshard.so"
install -m 0644 "$unit" "$root/lib/systemd/system/safeshardd.service"
install -m 0644 "$config" "$root/etc/safeshard/safeshardd.json"
install -m 0644 "$readme" "$root/usr/share/doc/safeshard/README.md"
strip --strip-unneeded "$root/usr/bin/"* "$root/usr/lib/python3/dist-packages/safeshard/_safeshard.so" \
  2>/dev/null || true
cat > "$root/usr/share/doc/safeshard/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: safeshard
Source: https://github.com/safeshard/safeshard

Files: *
Copyright: the safeshard developers
License: proprietary
 All rights reserved by the safeshard developers; see README.md.
COPYRIGHT

# Runtime libraries: dpkg-shlibdeps maps every library the ELF files need to its package.
mkdir -p "$work/debian"
printf 'Source: safeshard\n\nPackage: safeshard\nArchitecture: amd64\n' > "$work/debian/control"
elves=("$root/usr/bin/"* "$root/usr/lib/python3/dist-packages/safeshard/_safeshard.so")
shlibs=$(cd "$work" && dpkg-shlibdeps -O --warnings=0 "${elves[@]/#/-e}" 2>/dev/null |
  sed -n 's/^shlibs:Depends=//p')
[[ -n "$shlibs" ]] || { echo "dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size=$(du -ks "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: safeshard
Version: $version
Architecture: amd64
Maintainer: safeshard developers <safeshard@localhost>
Installed-Size: $size
Depends: $shlibs, python3 (>= 3.11), python3 (<< 3.12), adduser
Recommends: python3-numpy
Section: utils
Priority: optional
Homepage: https://github.com/safeshard/safeshard
Description: HuggingFace-format distributed checkpoints: verify, consolidate, inspect
 safeshard consolidates per-rank torch.distributed.checkpoint safetensors shards into the
 standard HF layout, proves checkpoints complete, dequantizes FP8/MXFP4 weights, and remaps and
 diffs checkpoints. Includes the safeshard CLI, the safeshardd service that consolidates
 finished runs by itself, the safeshard-inspector GUI and the safeshard Python module.
CONTROL
echo /etc/safeshard/safeshardd.json > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd safeshard >/dev/null; then
    adduser --system --group --home /var/lib/safeshard --no-create-home safeshard >/dev/null
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    # An upgrade restarts a running service on the new binary; a fresh install does not start
    # it (list the watched roots first: see README, "Deployment as a service").
    systemctl try-restart safeshardd.service >/dev/null 2>&1 || true
  fi
fi
exit 0
POSTINST
cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
# Stop the service before its binary goes (an upgrade restarts it in postinst when it ran).
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop safeshardd.service >/dev/null 2>&1 || true
fi
exit 0
PRERM
cat > "$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi
# purge: the service's state (journal, API token) goes; the user stays (files it wrote under
# the watched roots keep its uid), as Debian's policy for system users recommends.
if [ "$1" = purge ]; then rm -rf /var/lib/safeshard; fi
exit 0
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
dpkg-deb --root-owner-group -Zxz -z6 --build "$root" "$out" >/dev/null
