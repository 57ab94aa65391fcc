#!/bin/bash
# dracut module of anypatch: puts the static applypatch into the initramfs
# as /usr/sbin/applypatch. Only when asked for: `dracut --add anypatch`
# (or add_dracutmodules+=" anypatch " in /etc/dracut.conf.d/). The Debian
# package installs the binary as /usr/lib/anypatch/applypatch-static;
# ANYPATCH_STATIC names another static applypatch (a source build:
# scripts/build-static). See docs/initramfs.md.

anypatch_static() {
    echo "${ANYPATCH_STATIC:-/usr/lib/anypatch/applypatch-static}"
}

check() {
    require_binaries "$(anypatch_static)" || return 1
    return 255
}

depends() {
    return 0
}

install() {
    inst_binary "$(anypatch_static)" /usr/sbin/applypatch
}
