# The two commands for a fresh machine:  make demo   and   make test
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
STACK := ./deploy/local/stack.sh

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup:  ## fetch everything from the registries into .venv and .local (cached); Python deps at constraints.txt
	./deploy/local/setup.sh

lock:  ## re-resolve the Python deps (pip-compile) into constraints.txt, the lock setup and the image use (LOCK_KEEP=1: keep pins)
	./deploy/local/lock.sh

image:  ## build the Dockerfile (docker, else buildah; the base from Debian's packages where no registry answers), check it, SBOM -> .local/image
	./deploy/image/build.sh

up: setup  ## start Kafka + FerretDB on loopback (idempotent)
	$(STACK) up

down:  ## stop the local stack
	-./deploy/local/cluster.sh down 2>/dev/null
	$(STACK) down

status:  ## show what is running, and the job's health (batches, lag, last batch age)
	-$(STACK) status
	-$(PY) -m app.monitoring.status
	-./deploy/local/cluster.sh status 2>/dev/null

smoke: up  ## produce 1,000 events, Spark reads them from Kafka and writes MongoDB
	KAFKA_TOPIC=smoke_events $(PY) -m app.jobs.smoke_produce
	KAFKA_TOPIC=smoke_events ./deploy/local/submit.sh app/jobs/smoke.py

demo: up  ## run the streaming job on the local stack with generated traffic, print results
	./deploy/local/demo.sh

cluster-up: setup  ## start a Spark standalone master + 2 workers on loopback (UI :8080)
	./deploy/local/cluster.sh up

cluster-down:  ## stop the standalone cluster
	./deploy/local/cluster.sh down

cluster-demo: up cluster-up  ## make demo, with the job submitted to spark://127.0.0.1:7077
	SPARK_MASTER=spark://127.0.0.1:7077 ./deploy/local/demo.sh

helm-check: setup  ## lint, render and schema-check the helm chart (default + production values)
	./deploy/local/helm_check.sh

bench-stack: up  ## raw rates of the stack: FerretDB inserts/upserts, Kafka produce (python vs Java)
	$(PY) bench/stack_rates.py

bench: up  ## the benchmark (~55 min on 2 cores): throughput, upper bound, baseline, latency, scaling -> bench/results
	$(PY) -m bench.run --profile full

bench-profiles: up  ## profiles and alerts: the job with them on vs off (one run each), alert latency at 1,000/s -> bench/results/profiles.*
	$(PY) -m bench.profiles

bench-backlog: up  ## late events when a 1-hour backlog is caught up (MAX_OFFSETS_PER_TRIGGER 200 / 100000) vs a live run (~6 min) -> bench/results/backlog_late.*
	$(PY) -m bench.backlog_late

bench-lean: up  ## the stock vs the lean (LEAN_ARROW) applyInPandasWithState path over 100,000 preloaded events, one run each (~7 min) -> bench/results/lean_path.md
	$(PY) -m bench.lean_path

bench-state: up  ## the per-user state on applyInPandasWithState vs transformWithState (STATE_OPERATOR) over 100,000 preloaded events, one run each, outputs compared (~10 min) -> bench/results/state_operator.md
	$(PY) -m bench.state_operator

bench-latency: up  ## event -> act lane and event -> MongoDB with the job live at 100 and 1,000 events/s, its defaults, 120 s warm-up each (~10 min) -> bench/results/latency.md
	$(PY) -m bench.latency

bench-defaults: up  ## cold start (to Kafka, to MongoDB) and throughput with no settings vs the earlier defaults, 500,000 preloaded events, one run each (~20 min) -> bench/results/defaults.md
	$(PY) -m bench.defaults

bench-user-cost: setup  ## one user's batch with 1k / 10k / 100k sessions opened (a bot), pure engine (~3 min)
	$(PY) -m bench.user_cost

bench-quick: up  ## the same benchmark at a small scale (~8 min)
	$(PY) -m bench.run --profile quick --out .local/bench/results

faults: up  ## the fault suite (~50 min): outages, broker restart, kill -9, bad data, full disk, 30-min soak -> bench/results/faults.*
	$(PY) -m faults.run

api: up  ## the read-only query API + live dashboard on 127.0.0.1:8000 (API_PORT; / dashboard, /docs OpenAPI; API_KEY to require a key)
	$(PY) -m app.api

dashboard: api  ## the same as make api: the dashboard is its page /

security: setup  ## issue 20's probes: the rendered chart's checks (probe 9), then 1-8 against the running API (make api; API_URL, API_KEY); one PASS/FAIL line each, non-zero on a FAIL
	./deploy/local/helm_check.sh tools
	$(PY) tests/helm/chart_checks.py; chart=$$?; $(PY) -m security.probes; api=$$?; exit $$(( chart || api ))

bench-api: up  ## the query API (~50 min): personalization p99 at 200 req/s with the job running (at JOB_NICE 0 and 10) and alone, analytics endpoints over 1M events (the job live at both) -> bench/results/api.*
	$(PY) -m bench.api

report:  ## print sessions per segment, the funnel and open sessions to act on
	$(PY) -m app.report

query:  ## the mongosh queries of deploy/scripts/query_behavior_segments.sh
	./deploy/scripts/query_behavior_segments.sh

reset:  ## drop the demo database and checkpoint (the topic keeps its events)
	$(PY) -c "import os,pymongo; pymongo.MongoClient(os.environ.get('MONGODB_URI','mongodb://127.0.0.1:27017/')).drop_database(os.environ.get('MONGODB_DATABASE','bigdata'))"
	rm -rf .local/checkpoints/demo

mongosh: setup  ## open mongosh on the local MongoDB-compatible server
	source deploy/local/env.sh && "$$MONGOSH_BIN" "$$MONGODB_URI$${MONGODB_DATABASE:-bigdata}"

test: up  ## the quick tier (~6 min): unit, stream, helm chart, and one shared job run on the real stack feeding the API, dashboard, job and profile tests
	./deploy/local/helm_check.sh tools
	$(PY) -m pytest -m "not full" tests

test-full: up  ## every test (~35 min; what CI runs): the quick tier plus the tests marked full (their own job runs, faults, the cluster, the image)
	./deploy/local/helm_check.sh tools
	$(PY) -m pytest tests

test-unit: setup  ## unit + stream tests only (no stack needed)
	$(PY) -m pytest tests/unit tests/stream

test-mongodb: setup  ## on a real MongoDB (MONGODB_EXPLAIN_URI=mongodb://...): every API query shape is planned as an index scan
	@test -n "$(MONGODB_EXPLAIN_URI)" || { echo "set MONGODB_EXPLAIN_URI to a MongoDB (a throwaway database is created and dropped)"; exit 2; }
	MONGODB_EXPLAIN_URI="$(MONGODB_EXPLAIN_URI)" $(PY) -m pytest tests/mongodb

.PHONY: help setup lock image up down status smoke demo api dashboard security bench-api bench-backlog bench-lean bench-state bench-latency bench-defaults bench-user-cost faults bench-profiles bench-stack cluster-up cluster-down cluster-demo helm-check report query reset mongosh test test-full test-unit test-mongodb
