#!/usr/bin/env bash
# The package, unpacked into a scratch root: its control data (Depends from dpkg-shlibdeps, the
# conffile, postinst), every program it installs running from there, the Python module importing
# from there, and its systemd unit passing systemd-analyze verify.
set -euo pipefail
deb="$PWD/packaging/safeshard_amd64.deb"
root="${TEST_TMPDIR:-$(mktemp -d)}/root"
rm -rf "$root" && mkdir -p "$root"
dpkg-deb -x "$deb" "$root"
fail() { echo "FAIL: $*" >&2; exit 1; }
control=$(dpkg-deb -f "$deb")
echo "$control"
grep -q '^Package: safeshard$' <<<"$control" || fail "package name"
grep -Eq '^Version: [0-9]+\.[0-9]+\.[0-9]+$' <<<"$control" || fail "version"
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libc6 libstdc++6 libabsl libqt6widgets6 libcurl libsqlite3 libtorch python3 adduser; do
  grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib: $depends"
done
ctrl=$(dpkg-deb --ctrl-tarfile "$deb" | tar -t)
for f in conffiles postinst prerm postrm; do
  grep -q "$f" <<<"$ctrl" || fail "no $f"
done
grep -q '^License:' "$root/usr/share/doc/safeshard/copyright" || fail "copyright has no License"
version=$(dpkg-deb -f "$deb" Version)
"$root/usr/bin/safeshard" --version | grep -q "$version" || fail "safeshard --version"
"$root/usr/bin/safeshardd" --help | grep -q -- "--config" || fail "safeshardd --help"
QT_QPA_PLATFORM=offscreen "$root/usr/bin/safeshard-inspector" --help | grep -q -- "--screenshot" ||
  fail "safeshard-inspector --help"
"$root/usr/bin/safeshard-torch" --help | grep -q load-check || fail "safeshard-torch --help"
# The CLI finds its torch companion next to itself.
"$root/usr/bin/safeshard" load-check --help | grep -q -- "--dequantize" || fail "load-check"
PYTHONPATH="$root/usr/lib/python3/dist-packages" /usr/bin/python3 -c \
  "import safeshard, sys; assert safeshard.__version__ == '$version'; print('python ok', safeshard.__file__)" |
  grep -q "$root" || fail "python3 -c 'import safeshard' from the package"
# The unit as installed, its ExecStart pointed at the unpacked binary (verify checks it exists).
sed "s|/usr/bin/safeshardd|$root/usr/bin/safeshardd|" "$root/lib/systemd/system/safeshardd.service" \
  > "$TEST_TMPDIR/safeshardd.service"
systemd-analyze verify "$TEST_TMPDIR/safeshardd.service" || fail "systemd-analyze verify"
for key in User=safeshard StateDirectory=safeshard ProtectSystem=strict ReadWritePaths= \
  NoNewPrivileges=yes PrivateTmp=yes LimitNOFILE=; do
  grep -q "^$key" "$root/lib/systemd/system/safeshardd.service" || fail "unit lacks $key"
done
echo "deb_test: ok"
