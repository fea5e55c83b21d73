# syntax=docker/dockerfile:1.7
# One image for the Spark master and workers, the streaming job (driver) and the test-data
# generator. Build: docker build -t behavior-segmentation:0.1.0 .
#
# Base: python slim + a headless JRE 17, not spark:4.0.0-scala2.13-java17-python3-ubuntu.
# The pinned pyspark wheel (pyproject.toml) already is the complete Spark 4.0.0 distribution
# (spark-submit, spark-class, every jar), the same one local runs and CI use. The official
# image would add a second Spark (~400 MB) next to it, bring Ubuntu 22.04's Python 3.10 while
# development and CI run 3.11, and repeat the Spark version in its tag; here the version
# lives only in versions.env and pyproject.toml.
#
# Dependencies are installed by deploy/local/setup.sh, the script `make setup` and CI run,
# so a change to how they are fetched is exercised by CI before it reaches an image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
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
COPY pyproject.toml ./
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
RUN ln -s "$(/opt/venv/bin/python -c 'import importlib.util as u; print(u.find_spec("pyspark").submodule_search_locations[0])')" /opt/spark \
 && /opt/spark/bin/spark-submit --version 2>&1 | grep -q "version 4" \
 && ls /opt/stack/spark-jars/spark-sql-kafka-0-10_*.jar
WORKDIR /opt/app
# The job and generator are started by path (app/jobs/streaming/advanced_streaming.py,
# app/utils/test_behavior_generator.py); deploy/local/ makes submit.sh usable in the container.
COPY deploy/local/ deploy/local/
COPY pyproject.toml ./
COPY app/ app/
USER 10001:10001
EXPOSE 4040 7077 8080 8081
ENTRYPOINT ["/usr/bin/tini", "--"]
# Default: the streaming job in local mode, configured by the env vars of DESIGN.md §10.
# Spark expands the --jars glob itself (no shell here). The helm chart overrides this
# for the master, the workers, the driver (against the master) and the generator.
CMD ["spark-submit", "--jars", "/opt/stack/spark-jars/*.jar", "app/jobs/streaming/advanced_streaming.py"]
