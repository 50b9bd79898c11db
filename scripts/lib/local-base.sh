# shellcheck shell=bash
# Debian base images made on this machine with debootstrap, for builds without any
# container registry. Sourced by scripts/images.sh and scripts/service-images.sh.
#
#   local_base_image TOOL SUITE REF   # e.g. buildah bookworm localhost/debian:12
#
# Creates REF unless TOOL already has it, from `debootstrap --variant=minbase SUITE`
# (root, debootstrap, the Debian archive at $DEBIAN_MIRROR). The rootfs tarball is cached
# in ~/.cache/lapseguard/images/debian-SUITE-minbase.tar.gz and reused.

local_base_log() { printf '[local-base] %s\n' "$*" >&2; }

local_base_exists() { # TOOL REF
  case "$1" in
    buildah) buildah inspect --type image "$2" >/dev/null 2>&1 ;;
    *) "$1" image inspect "$2" >/dev/null 2>&1 ;;
  esac
}

local_base_image() { # TOOL SUITE REF
  local tool="$1" suite="$2" ref="$3"
  local_base_exists "$tool" "$ref" && { local_base_log "using $ref"; return 0; }
  local cache="${LAPSEGUARD_CACHE_DIR:-$HOME/.cache/lapseguard}/images"
  local tarball="$cache/debian-$suite-minbase.tar.gz"
  # bookworm's tarball kept its historical name
  [ "$suite" = bookworm ] && tarball="$cache/debian-12-minbase.tar.gz"
  if [ ! -s "$tarball" ]; then
    [ "$(id -u)" = 0 ] || { local_base_log "error: debootstrap needs root (or import $tarball yourself)"; return 1; }
    command -v debootstrap >/dev/null || { local_base_log "error: debootstrap not found (Debian: apt-get install debootstrap)"; return 1; }
    local root mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}" script=""
    # Suites newer than this debootstrap knows are bootstrapped with the sid script.
    [ -e "/usr/share/debootstrap/scripts/$suite" ] || script=/usr/share/debootstrap/scripts/sid
    root=$(mktemp -d); chmod 0755 "$root"; mkdir -p "$cache"
    local_base_log "debootstrap --variant=minbase $suite ($mirror) -> $tarball"
    debootstrap --variant=minbase "$suite" "$root" "$mirror" $script >&2 \
      || { rm -rf "$root"; local_base_log "error: debootstrap failed"; return 1; }
    # Like the official debian images: updates and security suites for stable releases,
    # no docs/man/locales.
    case "$suite" in
      bookworm|trixie) printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s-security %s-security main\n' \
           "$mirror" "$suite" "$mirror" "$suite" "$mirror" "$suite" ;;
      *) printf 'deb %s %s main\n' "$mirror" "$suite" ;;   # testing/unstable: one suite
    esac > "$root/etc/apt/sources.list"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
      'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
      'path-exclude /usr/share/lintian/*' > "$root/etc/dpkg/dpkg.cfg.d/excludes"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
      "$root"/usr/share/man/* "$root"/usr/share/info/* \
      "$root"/tmp/* "$root"/var/tmp/*
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    tar --numeric-owner -C "$root" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  else
    local_base_log "reusing $tarball"
  fi
  local_base_log "importing $tarball as $ref"
  case "$tool" in
    buildah)
      local c; c=$(buildah from --pull-never scratch)
      buildah add "$c" "$tarball" / >/dev/null
      buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
      buildah commit --rm "$c" "$ref" >/dev/null ;;
    podman|docker)
      "$tool" import --change 'CMD ["/bin/bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tarball" "$ref" >/dev/null ;;
  esac
}
