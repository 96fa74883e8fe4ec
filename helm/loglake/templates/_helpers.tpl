{{/* ---------------------------------------------------------------------------
Names and labels
--------------------------------------------------------------------------- */}}

{{- define "loglake.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; components append "-shipper", "-ingest", ... (kept under 63). */}}
{{- define "loglake.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "loglake.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loglake.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loglake.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "loglake.labels" -}}
helm.sh/chart: {{ include "loglake.chart" . }}
{{ include "loglake.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loglake
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "ingest"). */}}
{{- define "loglake.componentSelectorLabels" -}}
{{ include "loglake.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loglake.componentLabels" -}}
{{ include "loglake.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loglake.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "loglake.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "loglake.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The query Service's name: the query Deployment's, or the demo pod's in demo mode. */}}
{{- define "loglake.queryServiceName" -}}
{{- printf "%s-query" (include "loglake.fullname" .) -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------
Required values: called by the ConfigMap, which every install renders.
--------------------------------------------------------------------------- */}}

{{- define "loglake.validate" -}}
{{- if not .Values.demo.enabled -}}
{{- $_ := required "kafka.bootstrapServers is required: the Kafka bootstrap servers, e.g. kafka-0.kafka:9092,kafka-1.kafka:9092 (or set demo.enabled=true to try loglake without Kafka)" .Values.kafka.bootstrapServers -}}
{{- $_ := required "kafka.topic is required: the Kafka topic shippers write to and ingest reads, e.g. loglake.logs" .Values.kafka.topic -}}
{{- $root := required "storage.dataRoot is required: the shared data root, s3://bucket/prefix" .Values.storage.dataRoot -}}
{{- if not (hasPrefix "s3://" $root) -}}
{{- fail (printf "storage.dataRoot must be s3://bucket/prefix (got %q): ingest workers, query servers and the maintenance worker on different nodes share it" $root) -}}
{{- end -}}
{{- $_ := required "storage.s3.existingSecret is required with an s3:// data root: an existing Secret holding the S3 access key id and secret access key" .Values.storage.s3.existingSecret -}}
{{- $_ := required "catalog.url (postgresql://user@host:5432/db, password from catalog.passwordSecret) or catalog.existingSecret (a Secret holding the whole URL) is required" (or .Values.catalog.url .Values.catalog.existingSecret) -}}
{{- if and .Values.catalog.url .Values.catalog.existingSecret -}}
{{- fail "set one of catalog.url and catalog.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.catalog.url (not (regexMatch "^postgres(ql)?://" .Values.catalog.url)) -}}
{{- fail (printf "catalog.url must be postgresql://... (got %q): SQLite cannot be shared between pods" .Values.catalog.url) -}}
{{- end -}}
{{- if hasPrefix "SASL" .Values.kafka.securityProtocol -}}
{{- $_ := required (printf "kafka.sasl.existingSecret is required with kafka.securityProtocol=%s: an existing Secret holding the SASL password" .Values.kafka.securityProtocol) .Values.kafka.sasl.existingSecret -}}
{{- $_ := required "kafka.sasl.username or kafka.sasl.usernameKey is required with SASL" (or .Values.kafka.sasl.username .Values.kafka.sasl.usernameKey) -}}
{{- end -}}
{{- if and .Values.kafka.tls.existingSecret (not (hasSuffix "SSL" .Values.kafka.securityProtocol)) -}}
{{- fail "kafka.tls.existingSecret is set but kafka.securityProtocol is not SSL or SASL_SSL" -}}
{{- end -}}
{{- if ne (empty .Values.kafka.tls.certKey) (empty .Values.kafka.tls.keyKey) -}}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (a client certificate needs its key)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------
The loglake.toml the ConfigMap carries: .Values.config with the keys the chart
manages set over it. Read by loglake.core.config.load_config via LOGLAKE_CONFIG.
--------------------------------------------------------------------------- */}}

{{/* Where things live inside the containers. */}}
{{- define "loglake.paths.config" -}}/etc/loglake{{- end -}}
{{- define "loglake.paths.kafkaTls" -}}/etc/loglake/kafka-tls{{- end -}}
{{- define "loglake.paths.queryTls" -}}/etc/loglake/query-tls{{- end -}}

{{/* A query probe from values, over HTTPS when the server has its own certificate. */}}
{{- define "loglake.queryProbe" -}}
{{- $probe := deepCopy .probe -}}
{{- if and .root.Values.query.tls.existingSecret $probe.httpGet -}}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}
{{- define "loglake.paths.shipperState" -}}/var/lib/loglake/shipper{{- end -}}
{{- define "loglake.paths.demo" -}}/var/lib/loglake{{- end -}}

{{/* Environment variable names the config points at for secrets (not LOGLAKE_*:
those would be read as config overrides). */}}
{{- define "loglake.env.saslPassword" -}}KAFKA_SASL_PASSWORD{{- end -}}
{{- define "loglake.env.s3KeyId" -}}AWS_ACCESS_KEY_ID{{- end -}}
{{- define "loglake.env.s3Secret" -}}AWS_SECRET_ACCESS_KEY{{- end -}}

{{- define "loglake.configDict" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $sections := list "kafka" "broker" "shipper" "storage" "query" "demo" -}}
{{- $sections = concat $sections (ternary (list "log") (list "ingest" "maintain" "alerts" "receive") .Values.demo.enabled) -}}
{{- range $s := $sections -}}
{{- if not (kindIs "map" (get $cfg $s)) -}}
{{- $_ := set $cfg $s dict -}}
{{- end -}}
{{- end -}}
{{- $storage := get $cfg "storage" -}}
{{- if and (not .Values.demo.enabled) (not (kindIs "map" (get $storage "s3"))) -}}
{{- $_ := set $storage "s3" dict -}}
{{- end -}}
{{- $kafka := get $cfg "kafka" -}}
{{- $shipper := get $cfg "shipper" -}}
{{- $query := get $cfg "query" -}}
{{- $_ := set $query "host" "0.0.0.0" -}}
{{- $_ := set $query "port" (int .Values.query.port) -}}
{{- if .Values.demo.enabled -}}
{{- $base := include "loglake.paths.demo" . -}}
{{- $_ := set (get $cfg "broker") "embedded" true -}}
{{- $_ := set (get $cfg "broker") "listen" "127.0.0.1:9092" -}}
{{- $_ := set $kafka "bootstrap_servers" "127.0.0.1:9092" -}}
{{- $_ := set $kafka "topic" (default "loglake.logs" .Values.kafka.topic) -}}
{{- $_ := set $kafka "security_protocol" "PLAINTEXT" -}}
{{- $_ := set $storage "data_root" (printf "%s/data" $base) -}}
{{- $_ := set $storage "catalog_url" "" -}}
{{- $_ := set $shipper "include" (list (printf "%s/demo/*.log" $base)) -}}
{{- $_ := set $shipper "state_dir" (printf "%s/shipper" $base) -}}
{{- $_ := set (get $cfg "demo") "enabled" true -}}
{{- $_ := set (get $cfg "demo") "dir" (printf "%s/demo" $base) -}}
{{- $_ := set (get $cfg "log") "dir" (printf "%s/log" $base) -}}
{{- else -}}
{{- $_ := set (get $cfg "broker") "embedded" false -}}
{{- $_ := set (get $cfg "demo") "enabled" false -}}
{{- $_ := set $kafka "bootstrap_servers" .Values.kafka.bootstrapServers -}}
{{- $_ := set $kafka "topic" .Values.kafka.topic -}}
{{- $_ := set $kafka "partitions" (int .Values.kafka.partitions) -}}
{{- $_ := set $kafka "security_protocol" .Values.kafka.securityProtocol -}}
{{- if hasPrefix "SASL" .Values.kafka.securityProtocol -}}
{{- $_ := set $kafka "sasl_mechanism" .Values.kafka.sasl.mechanism -}}
{{- if not .Values.kafka.sasl.usernameKey -}}
{{- $_ := set $kafka "sasl_username" .Values.kafka.sasl.username -}}
{{- end -}}
{{- $_ := set $kafka "sasl_password_env" (include "loglake.env.saslPassword" .) -}}
{{- end -}}
{{- if .Values.kafka.tls.existingSecret -}}
{{- $dir := include "loglake.paths.kafkaTls" . -}}
{{- $_ := set $kafka "ssl_cafile" (printf "%s/%s" $dir .Values.kafka.tls.caKey) -}}
{{- if .Values.kafka.tls.certKey -}}
{{- $_ := set $kafka "ssl_certfile" (printf "%s/%s" $dir .Values.kafka.tls.certKey) -}}
{{- $_ := set $kafka "ssl_keyfile" (printf "%s/%s" $dir .Values.kafka.tls.keyKey) -}}
{{- end -}}
{{- end -}}
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol -}}
{{- $_ := set $kafka "ssl_check_hostname" .Values.kafka.tls.checkHostname -}}
{{- end -}}
{{- $_ := set $storage "data_root" .Values.storage.dataRoot -}}
{{- if .Values.maintain.backup.dest -}}
{{- $backup := ternary (get $cfg "backup") dict (kindIs "map" (get $cfg "backup")) -}}
{{- $_ := set $backup "dest" .Values.maintain.backup.dest -}}
{{- $_ := set $backup "interval_s" .Values.maintain.backup.intervalS -}}
{{- $_ := set $backup "keep" (int .Values.maintain.backup.keep) -}}
{{- $_ := set $cfg "backup" $backup -}}
{{- end -}}
{{- if .Values.maintain.iceberg.enabled -}}
{{- $iceberg := ternary (get $cfg "iceberg") dict (kindIs "map" (get $cfg "iceberg")) -}}
{{- $_ := set $iceberg "enabled" true -}}
{{- $_ := set $iceberg "catalog_uri" .Values.maintain.iceberg.catalogUri -}}
{{- $_ := set $iceberg "interval_s" .Values.maintain.iceberg.intervalS -}}
{{- $_ := set $cfg "iceberg" $iceberg -}}
{{- end -}}
{{- if .Values.catalog.url -}}
{{- $_ := set $storage "catalog_url" .Values.catalog.url -}}
{{- else -}}
{{- $_ := unset $storage "catalog_url" -}}
{{- end -}}
{{- $s3 := get $storage "s3" -}}
{{- $_ := set $s3 "endpoint_url" .Values.storage.s3.endpointUrl -}}
{{- $_ := set $s3 "region" .Values.storage.s3.region -}}
{{- $_ := set $s3 "path_style" .Values.storage.s3.pathStyle -}}
{{- $_ := set $s3 "access_key_id_env" (include "loglake.env.s3KeyId" .) -}}
{{- $_ := set $s3 "secret_access_key_env" (include "loglake.env.s3Secret" .) -}}
{{- $_ := set $shipper "include" .Values.shipper.include -}}
{{- $_ := set $shipper "exclude" .Values.shipper.exclude -}}
{{- $_ := set $shipper "state_dir" (include "loglake.paths.shipperState" .) -}}
{{- $_ := set $shipper "metrics_listen" (printf "0.0.0.0:%d" (int .Values.shipper.metricsPort)) -}}
{{- $_ := set (get $cfg "ingest") "metrics_listen" (printf "0.0.0.0:%d" (int .Values.ingest.metricsPort)) -}}
{{- $_ := set (get $cfg "maintain") "metrics_listen" (printf "0.0.0.0:%d" (int .Values.maintain.metricsPort)) -}}
{{- $_ := set (get $cfg "alerts") "metrics_listen" (printf "0.0.0.0:%d" (int .Values.alert.metricsPort)) -}}
{{- $_ := set (get $cfg "receive") "host" "0.0.0.0" -}}
{{- $_ := set (get $cfg "receive") "port" (int .Values.receive.port) -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* TOML rendering: a table's plain keys first, then its sub-tables and arrays of tables. */}}

{{- define "loglake.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toRawJson . }}{{- end -}}
{{- end -}}

{{- define "loglake.toml.isTable" -}}
{{- if and (kindIs "map" .) (gt (len .) 0) -}}true{{- end -}}
{{- end -}}

{{- define "loglake.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- $all := true -}}
{{- range $e := . -}}{{- if not (kindIs "map" $e) -}}{{- $all = false -}}{{- end -}}{{- end -}}
{{- if $all -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "loglake.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toRawJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if kindIs "float64" $v -}}
{{- if and (eq $v (floor $v)) (lt $v 1e15) (gt $v -1e15) -}}{{ int64 $v }}{{- else -}}{{ toRawJson $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "uint64" $v) (kindIs "int32" $v) -}}{{ $v }}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "loglake.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{ {{- range $i, $k := keys $v | sortAlpha -}}{{ if $i }}, {{ end }}{{ include "loglake.toml.key" $k }} = {{ include "loglake.toml.value" (get $v $k) }}{{- end -}} }
{{- else -}}
{{- fail (printf "config: cannot write %v (%s) as TOML" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* (dict "path" list-of-quoted-keys "table" map) */}}
{{- define "loglake.toml.table" -}}
{{- $path := .path -}}
{{- $t := .table -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := get $t $k -}}
{{- if not (or (kindIs "invalid" $v) (include "loglake.toml.isTable" $v) (include "loglake.toml.isTableArray" $v)) }}
{{ include "loglake.toml.key" $k }} = {{ include "loglake.toml.value" $v }}
{{- end -}}
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := get $t $k -}}
{{- $sub := append $path (include "loglake.toml.key" $k) -}}
{{- if include "loglake.toml.isTable" $v }}

[{{ join "." $sub }}]
{{- include "loglake.toml.table" (dict "path" $sub "table" $v) -}}
{{- else if include "loglake.toml.isTableArray" $v -}}
{{- range $e := $v }}

[[{{ join "." $sub }}]]
{{- include "loglake.toml.table" (dict "path" $sub "table" $e) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "loglake.toml" -}}
# Rendered by the loglake Helm chart from its values; read with LOGLAKE_CONFIG.
{{- include "loglake.toml.table" (dict "path" (list) "table" (include "loglake.configDict" . | fromJson)) }}
{{ end -}}

{{/* ---------------------------------------------------------------------------
Pod pieces shared by every component
--------------------------------------------------------------------------- */}}

{{- define "loglake.podAnnotations" -}}
checksum/config: {{ include "loglake.toml" .root | sha256sum }}
{{- if and .metricsPort .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "loglake.podLabels" -}}
{{ include "loglake.componentSelectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: loglake
{{- with .root.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level settings: service account, no token, image pull secrets. Service links
are off: for a Service named loglake-query Kubernetes would set LOGLAKE_QUERY_PORT and
the like, which loglake's loader reads as (unknown) config keys and refuses. */}}
{{- define "loglake.podCommon" -}}
serviceAccountName: {{ include "loglake.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "loglake.containerSecurityContext" -}}
{{- toYaml .Values.securityContext -}}
{{- end -}}

{{/* (dict "base" map "over" map): base with over's top-level keys set over it, false
and 0 included (sprig's mergeOverwrite would skip those). */}}
{{- define "loglake.overlay" -}}
{{- $out := deepCopy (.base | default dict) -}}
{{- range $k, $v := (.over | default dict) -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Environment every loglake container gets. */}}
{{- define "loglake.env.common" -}}
- name: LOGLAKE_CONFIG
  value: {{ include "loglake.paths.config" . }}/loglake.toml
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{/* Kafka credentials: shipper and ingest only. */}}
{{- define "loglake.env.kafka" -}}
{{- if and (not .Values.demo.enabled) (hasPrefix "SASL" .Values.kafka.securityProtocol) }}
- name: {{ include "loglake.env.saslPassword" . }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- if .Values.kafka.sasl.usernameKey }}
- name: LOGLAKE_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Catalog and S3 credentials: ingest, query and maintain. */}}
{{- define "loglake.env.storage" -}}
{{- if not .Values.demo.enabled }}
- name: {{ include "loglake.env.s3KeyId" . }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.s3.existingSecret }}
      key: {{ .Values.storage.s3.accessKeyIdKey }}
- name: {{ include "loglake.env.s3Secret" . }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.s3.existingSecret }}
      key: {{ .Values.storage.s3.secretAccessKeyKey }}
{{- include "loglake.env.catalog" . }}
{{- end }}
{{- end -}}

{{/* Catalog credentials alone: the push receiver, which reads API keys and no data. */}}
{{- define "loglake.env.catalog" -}}
{{- if not .Values.demo.enabled }}
{{- if .Values.catalog.existingSecret }}
- name: LOGLAKE_STORAGE__CATALOG_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.catalog.existingSecret }}
      key: {{ .Values.catalog.urlKey }}
{{- else if .Values.catalog.passwordSecret.name }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.catalog.passwordSecret.name }}
      key: {{ .Values.catalog.passwordSecret.key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "loglake.volumeMounts.common" -}}
- name: config
  mountPath: {{ include "loglake.paths.config" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "loglake.volumeMounts.kafka" -}}
{{- if and (not .Values.demo.enabled) .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ include "loglake.paths.kafkaTls" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "loglake.volumes.common" -}}
- name: config
  configMap:
    name: {{ include "loglake.fullname" . }}
- name: tmp
  emptyDir:
    {{- with .Values.tmpDir.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with .Values.tmpDir.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end -}}

{{- define "loglake.volumes.kafka" -}}
{{- if and (not .Values.demo.enabled) .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* nodeSelector, tolerations, affinity of one component's values. */}}
{{- define "loglake.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
