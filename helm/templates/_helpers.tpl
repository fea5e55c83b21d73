{{/* Names, labels and the few values derived from several settings. */}}

{{- define "seg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Objects are named after the release (seg-kafka, seg-spark-master...): the chart is one application. */}}
{{- define "seg.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* seg.component NAME: "<fullname>-NAME", e.g. seg-spark-master (callers pass (list $ "spark-master")). */}}
{{- define "seg.component" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "seg.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "seg.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "seg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: behavior-segmentation
{{- end -}}

{{/* seg.selectorLabels (list $ "component") */}}
{{- define "seg.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "seg.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* seg.componentLabels (list $ "component"): full label set of one component. */}}
{{- define "seg.componentLabels" -}}
{{ include "seg.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "seg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "seg.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
seg.imageRef (list $ IMAGE-VALUES "values.path"): repository:tag, with @digest when image.digest is set.
With requireImageDigests (values-production.yaml) an image without a sha256 digest fails the render:
a tag can be moved to other content, a digest cannot.
*/}}
{{- define "seg.imageRef" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $digest := $img.digest | default "" -}}
{{- if and (or $digest $root.Values.requireImageDigests) (not (regexMatch "^sha256:[0-9a-f]{64}$" $digest)) -}}
{{- fail (printf "%s.digest must be the image's sha256 digest (requireImageDigests; got %q): `crane digest %s:%s` or `docker buildx imagetools inspect %s:%s` prints it; docs/DEPLOY.md (Pinned images)" (index . 2) $digest $img.repository $img.tag $img.repository $img.tag) -}}
{{- end -}}
{{- if $digest -}}
{{- printf "%s:%s@%s" $img.repository $img.tag $digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $img.tag -}}
{{- end -}}
{{- end -}}

{{/* The app image (Spark master, workers, driver, generator, API). */}}
{{- define "seg.image" -}}
{{- $img := merge (dict "tag" (default .Chart.AppVersion .Values.image.tag)) (omit .Values.image "tag") -}}
{{- include "seg.imageRef" (list . $img "image") -}}
{{- end -}}

{{- define "seg.kafkaImage" -}}
{{- include "seg.imageRef" (list . .Values.kafka.image "kafka.image") -}}
{{- end -}}

{{- define "seg.mongodbImage" -}}
{{- include "seg.imageRef" (list . .Values.mongodb.image "mongodb.image") -}}
{{- end -}}

{{/* spark:// URL the driver submits to. */}}
{{- define "seg.sparkMasterUrl" -}}
{{- if .Values.job.master -}}
{{- .Values.job.master -}}
{{- else if .Values.spark.enabled -}}
{{- printf "spark://%s:%v" (include "seg.component" (list . "spark-master")) .Values.spark.master.port -}}
{{- else -}}
{{- required "job.master is required when spark.enabled=false" .Values.job.master -}}
{{- end -}}
{{- end -}}

{{/* Kafka bootstrap servers: the chart's Kafka Service, or the external one. */}}
{{- define "seg.kafkaBootstrap" -}}
{{- if .Values.kafka.enabled -}}
{{- printf "%s:9092" (include "seg.component" (list . "kafka")) -}}
{{- else -}}
{{- required "kafka.externalBootstrapServers is required when kafka.enabled=false" .Values.kafka.externalBootstrapServers -}}
{{- end -}}
{{- end -}}

{{- define "seg.kafkaReplicationFactor" -}}
{{- if .Values.kafka.replicationFactor -}}
{{- .Values.kafka.replicationFactor -}}
{{- else if .Values.kafka.enabled -}}
{{- min (int .Values.kafka.replicas) 3 -}}
{{- else -}}
{{- 1 -}}
{{- end -}}
{{- end -}}

{{- define "seg.mongodbReplicas" -}}
{{- if .Values.mongodb.replicaSet.enabled -}}{{ int .Values.mongodb.replicaSet.replicas }}{{- else -}}1{{- end -}}
{{- end -}}

{{/* Host name of MongoDB member I: seg.mongodbHost (list $ I) */}}
{{- define "seg.mongodbHost" -}}
{{- $root := index . 0 -}}
{{- $sts := include "seg.component" (list $root "mongodb") -}}
{{- printf "%s-%v.%s-headless.%s.svc.%s:27017" $sts (index . 1) $sts $root.Release.Namespace $root.Values.clusterDomain -}}
{{- end -}}

{{/*
seg.mongodbUri (list $ USER PASSWORD): the chart's MongoDB (every member + replicaSet when it
is one; with USER, its credentials and authSource=admin, where the chart creates its users), or
the external URI.
*/}}
{{- define "seg.mongodbUri" -}}
{{- $root := index . 0 -}}
{{- $user := index . 1 -}}
{{- $m := $root.Values.mongodb -}}
{{- if $m.enabled -}}
{{- $hosts := list (printf "%s:27017" (include "seg.component" (list $root "mongodb"))) -}}
{{- $params := list -}}
{{- if $m.replicaSet.enabled -}}
{{- $hosts = list -}}
{{- range $i := until (int $m.replicaSet.replicas) -}}
{{- $hosts = append $hosts (include "seg.mongodbHost" (list $root $i)) -}}
{{- end -}}
{{- $params = append $params (printf "replicaSet=%s" $m.replicaSet.name) -}}
{{- end -}}
{{- $userinfo := "" -}}
{{- if $user -}}
{{- $userinfo = printf "%s:%s@" (urlquery $user) (urlquery (index . 2)) -}}
{{- $params = append $params "authSource=admin" -}}
{{- end -}}
{{- printf "mongodb://%s%s/" $userinfo (join "," $hosts) -}}
{{- if $params }}?{{ join "&" $params }}{{ end -}}
{{- else -}}
{{- required "mongodb.externalUri (or mongodb.existingSecret) is required when mongodb.enabled=false" $m.externalUri -}}
{{- end -}}
{{- end -}}

{{/* "true" when the chart runs MongoDB with authentication. */}}
{{- define "seg.mongodbAuth" -}}
{{- if and .Values.mongodb.enabled .Values.mongodb.auth.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Secret the chart generates for MongoDB: the URIs, and with auth the passwords and key file. */}}
{{- define "seg.mongodbCredentialsName" -}}
{{- include "seg.component" (list . "mongodb-credentials") -}}
{{- end -}}

{{/* The Secret with the server-side credentials (mongodb-*-password, mongodb-replica-set-key). */}}
{{- define "seg.mongodbAuthSecretName" -}}
{{- default (include "seg.mongodbCredentialsName" .) .Values.mongodb.auth.existingSecret -}}
{{- end -}}

{{/* The Secret the pods read MONGODB_URI (and MONGODB_API_URI) from. */}}
{{- define "seg.mongodbSecretName" -}}
{{- if .Values.mongodb.existingSecret -}}
{{- .Values.mongodb.existingSecret -}}
{{- else if and (include "seg.mongodbAuth" .) .Values.mongodb.auth.existingSecret -}}
{{- .Values.mongodb.auth.existingSecret -}}
{{- else -}}
{{- include "seg.mongodbCredentialsName" . -}}
{{- end -}}
{{- end -}}

{{/*
Checksum of what the MongoDB URIs depend on, except the passwords (random until the Secret
exists, so hashing them would restart the driver on the first upgrade): a new host list,
user or Secret restarts the driver.
*/}}
{{- define "seg.mongodbUriChecksum" -}}
{{- $secret := include "seg.mongodbSecretName" . -}}
{{- $uri := "" -}}
{{- if eq $secret (include "seg.mongodbCredentialsName" .) -}}
{{- $uri = include "seg.mongodbUri" (list . "" "") -}}
{{- end -}}
{{- list $secret $uri .Values.mongodb.auth | toJson | sha256sum -}}
{{- end -}}

{{/*
seg.secretValue (list $ SECRET-DATA KEY LENGTH): the value KEY had in an existing Secret's data
(from lookup), else LENGTH random letters and digits. Keeps generated passwords stable across
upgrades; `helm template` (no cluster) always generates.
*/}}
{{- define "seg.secretValue" -}}
{{- $old := index (index . 1) (index . 2) | default "" | b64dec -}}
{{- $old | default (randAlphaNum (int (index . 3))) -}}
{{- end -}}

{{- define "seg.kafkaSaslSecretName" -}}
{{- default (include "seg.component" (list . "kafka-sasl")) .Values.kafka.sasl.existingSecret -}}
{{- end -}}

{{/*
seg.kafkaUser (list $ WHO): the SASL user and the Secret key of its password, as "user key", for
WHO = job (the driver, its executors, its topic init container), generator, admin (the kafka-init
Job), broker.
*/}}
{{- define "seg.kafkaUser" -}}
{{- $s := (index . 0).Values.kafka.sasl -}}
{{- $who := index . 1 -}}
{{- $users := dict "job" (list $s.username "client-password") "generator" (list $s.generatorUsername "generator-password")
      "admin" (list $s.adminUsername "admin-password") "broker" (list $s.interBrokerUsername "inter-broker-password") -}}
{{- join " " (get $users $who) -}}
{{- end -}}

{{/* seg.kafkaSaslEnv (list $ WHO): the Kafka client login of WHO (kafka.sasl; seg.kafkaUser). */}}
{{- define "seg.kafkaSaslEnv" -}}
{{- $root := index . 0 -}}
{{- $user := splitList " " (include "seg.kafkaUser" .) -}}
- name: KAFKA_SECURITY_PROTOCOL
  value: SASL_PLAINTEXT
- name: KAFKA_SASL_MECHANISM
  value: {{ $root.Values.kafka.sasl.mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ index $user 0 | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "seg.kafkaSaslSecretName" $root }}
      key: {{ index $user 1 }}
{{- end -}}

{{/*
The chart's Kafka with kafka.sasl: SCRAM only (PLAIN would send every password on the wire), and
one user per principal, so each one's ACLs are its own.
*/}}
{{- define "seg.kafkaSaslValidate" -}}
{{- $s := .Values.kafka.sasl -}}
{{- if not (has $s.mechanism (list "SCRAM-SHA-256" "SCRAM-SHA-512")) -}}
{{- fail (printf "kafka.sasl.mechanism=%s: the chart's Kafka offers SCRAM-SHA-512 or SCRAM-SHA-256 (PLAIN sends the password; it is for an external Kafka)" $s.mechanism) -}}
{{- end -}}
{{- $names := list $s.username $s.generatorUsername $s.adminUsername $s.interBrokerUsername -}}
{{- range $s.consumers -}}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*$" (.name | default "")) -}}
{{- fail (printf "kafka.sasl.consumers: name %q must be letters, digits, '.', '_' or '-'" (.name | default "")) -}}
{{- end -}}
{{- if or (not .topics) (without .topics "alerts" "actions" "segments") -}}
{{- fail (printf "kafka.sasl.consumers %s: topics must name alerts, actions and/or segments (the job's output topics), got %v" .name .topics) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- if ne (len $names) (len (uniq $names)) -}}
{{- fail (printf "kafka.sasl: the users %v must all differ (one user per principal, each with its own ACLs)" $names) -}}
{{- end -}}
{{- end -}}

{{/* seg.podPeer (list $ "component"): a NetworkPolicyPeer for the release's pods of one component. */}}
{{- define "seg.podPeer" -}}
- podSelector:
    matchLabels:
      {{- include "seg.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* NetworkPolicyPeers of the executors: the chart's workers, or networkPolicy.externalExecutors. */}}
{{- define "seg.executorPeers" -}}
{{- if .Values.spark.enabled -}}
{{ include "seg.podPeer" (list . "spark-worker") }}
{{- else if .Values.networkPolicy.externalExecutors -}}
{{ toYaml .Values.networkPolicy.externalExecutors }}
{{- end -}}
{{- end -}}

{{/* The Secret with spark.authenticate's shared secret (key auth-secret). */}}
{{- define "seg.sparkAuthSecretName" -}}
{{- default (include "seg.component" (list . "spark-auth")) .Values.spark.authenticate.existingSecret -}}
{{- end -}}

{{/*
-D options of the Spark master and worker daemons: the kill links of the UI off, and with
spark.authenticate every RPC peer (driver, worker, executor) proves the shared secret, which the
daemons read from _SPARK_AUTH_SECRET (seg.sparkDaemonAuthEnv); executors get it from their worker.
*/}}
{{- define "seg.sparkDaemonOpts" -}}
{{- $opts := list "-Dspark.ui.killEnabled=false" -}}
{{- if .Values.spark.authenticate.enabled -}}
{{- $opts = append $opts "-Dspark.authenticate=true" -}}
{{- end -}}
{{- join " " $opts -}}
{{- end -}}

{{- define "seg.sparkDaemonAuthEnv" -}}
{{- if .Values.spark.authenticate.enabled -}}
- name: _SPARK_AUTH_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "seg.sparkAuthSecretName" . }}
      key: auth-secret
{{- end -}}
{{- end -}}

{{- define "seg.rulesContent" -}}
{{- if .Values.rules.content -}}
{{- .Values.rules.content -}}
{{- else -}}
{{- .Files.Get "files/segments_v1.yaml" | required "files/segments_v1.yaml is missing or empty (a symlink to app/rules/segments_v1.yaml); or set rules.content" -}}
{{- end -}}
{{- end -}}

{{/*
Containers of the app image start under tini (the image's ENTRYPOINT, repeated because
`command` replaces it): a worker's executors and Python daemons are reaped and get signals.
Env vars every container of the app image gets: */}}
{{- define "seg.commonEnv" -}}
- name: HOME
  value: /tmp
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/*
seg.waitForKafka (list $ WHO TOPICS...): init container, run from the Kafka image so its own tools do
the work, that waits until each topic exists, creating it when missing and WHO may (without SASL,
or an external Kafka's ACLs allow it; with the chart's SASL the kafka-init Job creates them as
admin). Bounded: fails after ~10 minutes. With kafka.sasl it logs in as WHO (seg.kafkaSaslEnv)
through a client properties file written at run time from its env into the /tmp emptyDir, so the
password is in no ConfigMap and no pod spec.
*/}}
{{- define "seg.waitForKafka" -}}
{{- $root := index . 0 -}}
{{- $who := index . 1 -}}
{{- $topics := slice . 2 -}}
- name: kafka-topic
  image: {{ include "seg.kafkaImage" $root | quote }}
  imagePullPolicy: {{ $root.Values.kafka.image.pullPolicy }}
  command: ["/bin/bash", "-c"]
  args:
    - |
      login=()
      if [[ -n "${KAFKA_SASL_PASSWORD:-}" ]]; then
        case "$KAFKA_SASL_MECHANISM" in
          PLAIN) module=org.apache.kafka.common.security.plain.PlainLoginModule ;;
          *) module=org.apache.kafka.common.security.scram.ScramLoginModule ;;
        esac
        (umask 077 && printf '%s\n' "security.protocol=$KAFKA_SECURITY_PROTOCOL" "sasl.mechanism=$KAFKA_SASL_MECHANISM" \
          "sasl.jaas.config=$module required username=\"$KAFKA_SASL_USERNAME\" password=\"$KAFKA_SASL_PASSWORD\";" \
          > /tmp/kafka-client.properties)
        login=(--command-config /tmp/kafka-client.properties)
      fi
      topics() { /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" "${login[@]}" "$@"; }
      # --list needs only DESCRIBE on the topic (--describe also reads its configs).
      ensure() {
        topics --list --topic "$1" 2>/dev/null | grep -qxF "$1" ||
          topics --create --if-not-exists --topic "$1" --partitions "$PARTITIONS" --replication-factor "$REPLICATION_FACTOR"
      }
      for i in {1..120}; do
        ok=1
        for topic in $TOPICS; do ensure "$topic" || { ok=0; break; }; done
        (( ok )) && exit 0
        echo "waiting for Kafka at $KAFKA_BOOTSTRAP_SERVERS and the topics $TOPICS ($i/120)"; sleep 5
      done
      echo "Kafka at $KAFKA_BOOTSTRAP_SERVERS did not show the topics $TOPICS in 10 minutes" >&2; exit 1
  env:
    - name: KAFKA_BOOTSTRAP_SERVERS
      value: {{ include "seg.kafkaBootstrap" $root | quote }}
    - name: TOPICS
      value: {{ join " " $topics | quote }}
    - name: PARTITIONS
      value: {{ $root.Values.kafka.partitions | quote }}
    - name: REPLICATION_FACTOR
      value: {{ include "seg.kafkaReplicationFactor" $root | quote }}
    - name: KAFKA_HEAP_OPTS
      value: "-Xmx256m"
    - name: LOG_DIR
      value: /tmp
    {{- if $root.Values.kafka.sasl.enabled }}
    {{- include "seg.kafkaSaslEnv" (list $root $who) | nindent 4 }}
    {{- end }}
  securityContext:
    {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
  resources:
    requests: {cpu: 50m, memory: 256Mi}
    limits: {memory: 512Mi}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{- define "seg.checkpointClaim" -}}
{{- default (include "seg.component" (list . "checkpoints")) .Values.checkpoint.existingClaim -}}
{{- end -}}

{{/* The Secret the API reads API_KEY (key api-key) from. */}}
{{- define "seg.apiKeySecretName" -}}
{{- default (include "seg.component" (list . "api-key")) .Values.api.existingSecret -}}
{{- end -}}

{{/* sh -c script of the API container: refuse an empty API_KEY, else exec the API ("$0" "$@"). */}}
{{- define "seg.apiKeyGuard" -}}
[ -n "$API_KEY" ] || { echo "API_KEY is empty: the Secret's key api-key must hold the API key" >&2; exit 64; }; exec "$0" "$@"
{{- end -}}

{{/* JOB_STATUS_URL of the API: api.jobStatusUrl, else the driver's health Service; empty without a job. */}}
{{- define "seg.jobStatusUrl" -}}
{{- if .Values.api.jobStatusUrl -}}
{{- .Values.api.jobStatusUrl -}}
{{- else if .Values.job.enabled -}}
{{- printf "http://%s:%v/status" (include "seg.component" (list . "streaming-ui")) .Values.job.health.port -}}
{{- end -}}
{{- end -}}
