# syntax=docker/dockerfile:1
# The Bee Flow connector image (AppAPI ExApp bee_flow): `python -m beeflow serve` plus the frpc
# release HaRP pins. Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 .
#
# Base images are pinned by EXACT TAG (Python patch release + Debian release), not by digest:
# the tag fixes everything our code depends on (CPython 3.11.13, Debian 12 "bookworm") while the
# Docker official-images team rebuilds that same tag for Debian security fixes, which a digest
# would freeze out until someone bumps it by hand. For a bit-for-bit reproducible build pass a
# digest: --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG NODE_IMAGE=node:22.12.0-bookworm-slim
# The UI bundled in the image (the connector fetches the service's own UI from
# BEEFLOW_EMBED_BASE_URL first and falls back to this one): "local" = this repository's spa/
# (default); "hive" = the full Bee Flow UI built from Bee-Flow/hive at the commit HIVE_REF (see the
# spa-hive stages), once per URL prefix.
ARG SPA_SOURCE=local

# ------------------------------------------------------------------ frpc (pinned, verified)
FROM ${PYTHON_IMAGE} AS frpc
# Set by buildx per platform. frpc/pin.toml holds the version and one sha256 per architecture;
# an architecture without a checksum there fails the build.
ARG TARGETARCH
WORKDIR /build
COPY frpc/pin.toml docker/fetch_frpc.py ./
RUN python fetch_frpc.py --pin pin.toml --arch "${TARGETARCH}" --out /out/frpc

# ------------------------------------------------------------------ Python package + deps
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml setup.cfg README.md docker/constraints.txt ./
COPY beeflow ./beeflow
# pyproject's [tool.setuptools.data-files] installs the repo's UI into the venv
# (<prefix>/share/beeflow/spa, static.py's fallback): the wheel cannot build without it. The
# runtime serves /app/spa (BEEFLOW_SPA_DIR) whatever SPA_SOURCE chose. tests/ops/test_image_build.py
# builds the wheel from exactly these COPY lines.
COPY spa ./spa
# [speed] adds uvloop: BEEFLOW_EVENT_LOOP=auto (the default) runs on it when installed
# (measured in bench/: less CPU per request and per SSE event; docs/benchmarks.md).
RUN /opt/venv/bin/pip install --no-cache-dir -c constraints.txt ".[speed]"

# ------------------------------------------------------------------ web UI: the repo's spa/
FROM scratch AS spa-local
COPY spa/ /spa/

# ------------------------------------------------------------------ web UI: full bundle (optional)
# docker buildx build --build-arg SPA_SOURCE=hive --build-arg HIVE_REF=<40-hex commit> .
FROM ${NODE_IMAGE} AS spa-hive-build
ARG HIVE_REPO=Bee-Flow/hive
ARG HIVE_REF=
ARG APP_ID=bee_flow
# git comes from the pinned Debian release of the pinned Node image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /hive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if ! [[ "${HIVE_REF}" =~ ^[0-9a-f]{40}$ ]]; then \
        echo "HIVE_REF must pin a full 40-hex commit of ${HIVE_REPO}" >&2; exit 1; \
    fi \
    && git init -q . \
    && git fetch -q --depth=1 "https://github.com/${HIVE_REPO}.git" "${HIVE_REF}" \
    && git checkout -q FETCH_HEAD
# Built as the UI repository builds itself (Vite): the prefix is baked in at build time, with
# --base=<prefix>/ for the asset URLs and VITE_API_URL=<prefix> for its API calls (its vite.config
# sets no base; its env files are read from the directory above the checkout, none here). One
# build cannot serve two prefixes, so there are two: the PHP proxy's
# (/index.php/apps/app_api/proxy/<appid>/, legacy mode and Nextcloud-rendered pages) and HaRP's
# (/exapps/<appid>/). The connector serves the one matching how a request came in
# (beeflow/shell.py). Hard-coded leading "/" of the logo src/href are stripped so they resolve
# under the base, as the Node connector's image does.
RUN npm ci \
    && sed -i -E 's#(src|href)="/(bee-flow-logo|BeeFlow-logo)#\1="\2#g' index.html \
    && VITE_API_URL="/index.php/apps/app_api/proxy/${APP_ID}" \
       npm run build -- --base="/index.php/apps/app_api/proxy/${APP_ID}/" --outDir=dist-proxy \
    && VITE_API_URL="/exapps/${APP_ID}" \
       npm run build -- --base="/exapps/${APP_ID}/" --outDir=dist-exapps \
    && test -f dist-proxy/index.html \
    && test -f dist-exapps/index.html

FROM scratch AS spa-hive
COPY --from=spa-hive-build /hive/dist-proxy/ /spa/proxy/
COPY --from=spa-hive-build /hive/dist-exapps/ /spa/exapps/

# An internal stage chosen by SPA_SOURCE, not a registry image: nothing to tag.
# hadolint ignore=DL3006
FROM spa-${SPA_SOURCE} AS spa

# ------------------------------------------------------------------ runtime
FROM ${PYTHON_IMAGE} AS runtime
# The connector's version: beeflow.__version__, appinfo/info.xml's <version> and <image-tag>
# (the manifest names the image by version, never `latest`); tests/ops/test_image_pins.py.
ARG BEEFLOW_VERSION=0.1.0
LABEL org.opencontainers.image.title="Bee Flow connector" \
      org.opencontainers.image.version="${BEEFLOW_VERSION}" \
      org.opencontainers.image.description="Nextcloud AppAPI External App bridging Nextcloud and Bee Flow" \
      org.opencontainers.image.source="https://github.com/Bee-Flow/connector" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
# The image keeps running as root: AppAPI and HaRP `docker exec` into it as root to run
# `cat /etc/os-release`, `mkdir -p /certs/frp`, copy Nextcloud's CA into
# /usr/local/share/ca-certificates and run `update-ca-certificates` (contract 5.3).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BEEFLOW_SPA_DIR=/app/spa \
    BEEFLOW_FRPC_BIN=/usr/local/bin/frpc \
    BEEFLOW_FRPC_PIN_FILE=/app/frpc/pin.toml \
    BEEFLOW_SHUTDOWN_GRACE_SECONDS=5 \
    BEEFLOW_FRPC_STOP_GRACE_SECONDS=1
COPY --from=build /opt/venv /opt/venv
COPY --from=frpc /out/frpc /usr/local/bin/frpc
COPY --from=spa /spa/ /app/spa/
COPY frpc/pin.toml /app/frpc/pin.toml
COPY appinfo/info.xml /app/appinfo/info.xml
COPY docker/healthcheck.py /app/docker/healthcheck.py
WORKDIR /app
# What AppAPI/HaRP need inside the container, checked at build time.
RUN for tool in cat mkdir update-ca-certificates; do command -v "$tool" >/dev/null || exit 1; done \
    && test -s /etc/os-release \
    && test -x /usr/local/bin/frpc \
    && { test -f /app/spa/index.html \
         || { test -f /app/spa/proxy/index.html && test -f /app/spa/exapps/index.html; }; } \
    && python -c "import beeflow, aiohttp"
EXPOSE 8080
# Legacy: /heartbeat over TCP. HaRP: /heartbeat over the Unix socket AND frpc running. The first
# probe runs 5 s after start (the server listens in well under a second), so the container turns
# healthy long before HaRP's 90 s limit.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]
# No shell and no supervisor loop: the server supervises frpc itself and gets SIGTERM directly.
# `docker stop` kills after 10 s. SIGTERM to exit takes at most the 5 s drain + 1.1 s flush +
# 1.2 s frpc stop (1 s grace, frpc dies on TERM in ms) + 1 s runner close = 8.3 s
# (docs/transports.md "Shutdown budget"; tests/ops/test_image.py checks the sum).
ENTRYPOINT ["python", "-m", "beeflow", "serve"]
