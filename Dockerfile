# The agents' image: one image, both agents (`ci-agent serve` by default, `cd-agent watch` by command).
#   docker build --build-arg BASE_IMAGE="$(scripts/base-image | tail -n 1)" -t picicd/agent .
# BASE_IMAGE is any Debian-based Python >= 3.11 image; without Docker Hub, scripts/base-image builds one.
# No architecture-specific downloads: the same file builds on arm64 (Pi) and amd64. Legacy builder friendly.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Behind a TLS-inspecting proxy pip needs the proxy's CA: pass its PEM text here (used in this stage
# only, so it stays out of the final image), e.g. --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)".
ARG EXTRA_CA_CERTS=""
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" >/usr/local/share/ca-certificates/picicd-extra.crt && update-ca-certificates >/dev/null; \
    fi
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/pi-cicd
WORKDIR /src
# Dependencies (and the build backend) first, from pyproject.toml alone: a code or README change then
# reinstalls only the project itself, offline. The `ssh` extra (paramiko) is in: a CI agent in this image
# can build on CI_BUILD_DOCKER_HOST=ssh://... (~4 MB; nothing imports it unless that setting says ssh).
COPY pyproject.toml ./
RUN /opt/pi-cicd/bin/python -c "import subprocess, sys, tomllib; \
meta = tomllib.load(open('pyproject.toml', 'rb')); \
deps = meta['project']['dependencies'] + meta['project']['optional-dependencies']['ssh'] \
  + meta['build-system']['requires']; \
subprocess.run([sys.executable, '-m', 'pip', 'install', *deps], check=True)"
COPY README.md ./
COPY shared/ shared/
COPY ci_agent/ ci_agent/
COPY cd_agent/ cd_agent/
RUN /opt/pi-cicd/bin/pip install --no-deps --no-build-isolation . \
 && /opt/pi-cicd/bin/pip uninstall -y pip setuptools \
 && /opt/pi-cicd/bin/python -m compileall -q /opt/pi-cicd/lib

FROM ${BASE_IMAGE}
# git: the CI agent checks out pushed commits. The agents reach dockerd through the mounted socket,
# so no docker CLI is needed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && useradd --system --create-home --home-dir /home/picicd --uid 10001 --user-group picicd \
 && mkdir -p /var/lib/pi-cicd/logs /var/lib/pi-cicd/state \
 && chown -R picicd:picicd /var/lib/pi-cicd
COPY --from=build /opt/pi-cicd /opt/pi-cicd
COPY deploy/docker/entrypoint /usr/local/bin/pi-cicd-entrypoint
COPY deploy/docker/healthcheck.py /usr/local/bin/pi-cicd-healthcheck
# Named volumes mounted at these paths start out owned by picicd (Docker copies the image's directory).
ENV PATH=/opt/pi-cicd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOG_DIR=/var/lib/pi-cicd/logs \
    STATE_DIR=/var/lib/pi-cicd/state
WORKDIR /var/lib/pi-cicd
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=25s --start-period=30s --retries=3 CMD ["python3", "/usr/local/bin/pi-cicd-healthcheck"]
ENTRYPOINT ["pi-cicd-entrypoint"]
CMD ["ci-agent", "serve"]
