# One image for the Spark master and workers, the streaming job (driver) and the test-data
# generator. Build: `make image` (buildah where there is no Docker daemon, docker build where
# there is; deploy/image/build.sh), or by hand:
#   docker build --secret id=build_ca,src=<PEM file, may be empty> -t behavior-segmentation:0.1.0 .
# RUN --mount needs BuildKit (Docker >= 23 has it built in) or buildah. No `# syntax=` line:
# it would make BuildKit pull its frontend from Docker Hub, which some networks cannot reach.
#
# Base: python slim + a headless JRE 17, not spark:4.2.0-scala2.13-java17-python3-ubuntu.
# The pinned pyspark wheel (pyproject.toml) already is the complete Spark 4.2.0 distribution
# (spark-submit, spark-class, every jar), the same one local runs and CI use. The official
# image would add a second Spark (~400 MB) next to it, bring Ubuntu 22.04's Python 3.10 while
# development and CI run 3.11, and repeat the Spark version in its tag; here the version
# lives only in versions.env and pyproject.toml. Where no registry is reachable, `make image`
# makes an equivalent base from Debian's packages (debootstrap: bookworm, python3 3.11) and
# passes it as PYTHON_IMAGE.
#
# Dependencies are installed by deploy/local/setup.sh, the script `make setup` and CI run,
# with the same lock (constraints.txt), so a change to how they are fetched is exercised by
# CI before it reaches an image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# The build host's extra CA certificates (the secret build_ca: PEM, possibly empty), for a
# network whose TLS-inspecting proxy signs with them. Trusted in this build-only stage, before
# maven's JRE builds its trust store from /etc/ssl/certs; the runtime stage below starts again
# from the base and copies only the venv and the jars, so no image that ships carries them.
# One file per certificate: Java's store takes only the first certificate of a file.
RUN --mount=type=secret,id=build_ca \
    if [ -s /run/secrets/build_ca ]; then \
      awk '/-----BEGIN CERTIFICATE-----/ {n++} n {print > ("/usr/local/share/ca-certificates/build-host-" n ".crt")}' /run/secrets/build_ca \
      && update-ca-certificates; \
    fi
# maven resolves the Kafka connector from Maven Central (setup.sh connector); it pulls in a JRE.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends maven \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# env.sh honours VENV and STACK_DIR: the venv goes to /opt/venv, the connector jars to
# /opt/stack/spark-jars ($SPARK_JARS_DIR), the paths the runtime stage and the helm chart use.
ENV VENV=/opt/venv STACK_DIR=/opt/stack
COPY deploy/local/ deploy/local/
# The connector layer only changes with versions.env or the pom, not with the app code.
RUN --mount=type=cache,target=/root/.m2 deploy/local/setup.sh connector
COPY pyproject.toml constraints.txt ./
COPY app/ app/
# runtime: a plain (non-editable) install of the app and its deps, without the dev extras,
# so the driver, the executors and the generator import `app` from the venv.
RUN --mount=type=cache,target=/root/.cache/pip PYTHON_INSTALL=runtime deploy/local/setup.sh python


FROM ${PYTHON_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# tini reaps the executor and python worker processes a Spark worker starts;
# procps gives `ps` to Spark's scripts and to whoever debugs a pod.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini procps \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 app \
 && useradd --uid 10001 --gid 10001 --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
 && mkdir -p /opt/stack/logs /opt/stack/run /opt/spark-work \
 && chown app:app /opt/stack/logs /opt/stack/run /opt/spark-work
ENV PATH=/opt/venv/bin:$PATH \
    VENV=/opt/venv \
    STACK_DIR=/opt/stack \
    SPARK_HOME=/opt/spark \
    SPARK_JARS_DIR=/opt/stack/spark-jars \
    SPARK_WORKER_DIR=/opt/spark-work \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/stack/spark-jars /opt/stack/spark-jars
# SPARK_HOME=/opt/spark is the Spark distribution inside the pyspark wheel.
# SPARK_LOCAL_HOSTNAME only for this check: a build container's hostname is not in its
# /etc/hosts, and InetAddress.getLocalHost fails (UnknownHostException). Pods resolve their
# own name, and the chart sets the addresses Spark advertises.
RUN ln -s "$(/opt/venv/bin/python -c 'import importlib.util as u; print(u.find_spec("pyspark").submodule_search_locations[0])')" /opt/spark \
 && { out="$(SPARK_LOCAL_HOSTNAME=localhost /opt/spark/bin/spark-submit --version 2>&1)"; \
      echo "$out" | grep "version 4" || { echo "$out" >&2; exit 1; }; } \
 && ls /opt/stack/spark-jars/spark-sql-kafka-0-10_*.jar
WORKDIR /opt/app
# The job and generator are started by path (app/jobs/streaming/advanced_streaming.py,
# app/utils/test_behavior_generator.py); deploy/local/ makes submit.sh usable in the container.
COPY deploy/local/ deploy/local/
COPY pyproject.toml constraints.txt ./
COPY app/ app/
USER 10001:10001
EXPOSE 4040 7077 8080 8081
ENTRYPOINT ["/usr/bin/tini", "--"]
# Default: the streaming job in local mode, configured by the env vars of DESIGN.md §10.
# Spark expands the --jars glob itself (no shell here). The helm chart overrides this
# for the master, the workers, the driver (against the master) and the generator.
CMD ["spark-submit", "--jars", "/opt/stack/spark-jars/*.jar", "app/jobs/streaming/advanced_streaming.py"]
