#!/usr/bin/env bash
# Builds offload-api, offload-worker and offload-notifier (tag $TAG, default "dev") with the
# classic builder. The base is $PYTHON_IMAGE, else python:3.11-slim-bookworm when it can be
# had, else a local Debian base built by scripts/build-base-image.sh. Also makes sure a Redis
# image exists for compose and the container tests ($REDIS_IMAGE, default redis:7.2, else a
# local build tagged offload/redis:7).
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${TAG:-dev}"
local_base=offload/python:3.11-bookworm

have() { docker image inspect "$1" >/dev/null 2>&1; }
fetch() { have "$1" || docker pull --quiet "$1" >/dev/null 2>&1; }

base="${PYTHON_IMAGE:-}"
if [ -z "$base" ]; then
  if fetch python:3.11-slim-bookworm; then
    base=python:3.11-slim-bookworm
  else
    echo "python:3.11-slim-bookworm cannot be pulled; using a local base image"
    scripts/build-base-image.sh "$local_base"
    base="$local_base"
  fi
fi

for service in api worker notifier; do
  echo "building offload-$service:$tag on $base"
  docker build --quiet --build-arg PYTHON_IMAGE="$base" -f "services/$service/Dockerfile" -t "offload-$service:$tag" . >/dev/null
done

redis_image="${REDIS_IMAGE:-redis:7.2}"
if ! fetch "$redis_image"; then
  echo "$redis_image cannot be pulled; building offload/redis:7 on $base"
  docker build --quiet --build-arg PYTHON_IMAGE="$base" -t offload/redis:7 deploy/docker/redis >/dev/null
  redis_image=offload/redis:7
fi
echo "images: offload-api:$tag offload-worker:$tag offload-notifier:$tag redis=$redis_image"
