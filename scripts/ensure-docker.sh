#!/usr/bin/env bash
# Makes a Docker engine answer on this machine: installs Debian's docker.io (and debootstrap,
# for the local base image) when missing and starts dockerd when it is not running. Needs root.
set -euo pipefail

if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "installing docker.io and debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if ! pgrep -x dockerd >/dev/null; then
  echo "starting dockerd"
  nohup dockerd >/var/log/offload-dockerd.log 2>&1 &
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "dockerd did not come up; see /var/log/offload-dockerd.log" >&2
exit 1
