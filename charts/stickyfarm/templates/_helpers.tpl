{{/* Name of the release's objects. */}}
{{- define "stickyfarm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "stickyfarm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels that select the operator's pods (never change: selectors are immutable). */}}
{{- define "stickyfarm.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "stickyfarm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "stickyfarm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* registry/name@digest of one of the Stickyfarm images when image.digests pins it,
     registry/name:tag otherwise. Called with (list . "sidecar"). */}}
{{- define "stickyfarm.image" -}}
{{- $ctx := index . 0 -}}
{{- $key := index . 1 -}}
{{- $name := index $ctx.Values.image $key -}}
{{- $digest := default "" (index (default dict $ctx.Values.image.digests) $key) -}}
{{- if $digest -}}
{{- if not (regexMatch "^sha256:[a-f0-9]{64}$" $digest) -}}
{{- fail (printf "image.digests.%s must be sha256:<64 lowercase hex digits>, got %q" $key $digest) -}}
{{- end -}}
{{- printf "%s/%s@%s" (default $ctx.Values.image.registry $ctx.Values.global.imageRegistry) $name $digest -}}
{{- else -}}
{{- printf "%s/%s:%s" (default $ctx.Values.image.registry $ctx.Values.global.imageRegistry) $name (default $ctx.Chart.AppVersion $ctx.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces whose pods may scrape metrics: metrics.scrapeNamespaces, or the release's. */}}
{{- define "stickyfarm.scrapeNamespaces" -}}
{{- default (list .Release.Namespace) .Values.metrics.scrapeNamespaces | toJson -}}
{{- end -}}

{{/* The NetworkPolicy peer of the scrapers: the namespaces selected by
     metrics.scrapeNamespaceSelector or named by scrapeNamespaces (default: the release's), and
     there the pods of metrics.scrapePodSelector (default: any). The operator builds the same
     peer for every farm from the same values. */}}
{{- define "stickyfarm.scrapers" -}}
{{- $m := .Values.metrics -}}
{{- if and $m.scrapeNamespaceSelector $m.scrapeNamespaces -}}
{{- fail "metrics.scrapeNamespaces and metrics.scrapeNamespaceSelector both pick the scrapers' namespaces: set one of them" -}}
{{- end -}}
namespaceSelector:
{{- if $m.scrapeNamespaceSelector }}
  {{- toYaml $m.scrapeNamespaceSelector | nindent 2 }}
{{- else }}
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: In
      values: {{ include "stickyfarm.scrapeNamespaces" . }}
{{- end }}
{{- with $m.scrapePodSelector }}
podSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The names of imagePullSecrets ({name: …} entries, as in a pod spec), comma-separated.
*/}}
{{- define "stickyfarm.pullSecretNames" -}}
{{- $names := list -}}
{{- range . }}{{ $names = append $names .name }}{{ end -}}
{{- join "," $names -}}
{{- end }}

{{/* Labels on the monitoring objects: the chart's, and monitoring.labels (the selector of the
     Prometheus or Grafana that should pick them up). */}}
{{- define "stickyfarm.monitoringLabels" -}}
{{ include "stickyfarm.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An image reference given whole (postgresImage, tests.image) behind global.imageRegistry:
     a reference without a registry host (Docker Hub's `postgres:17`) is pulled from the mirror
     (`<mirror>/postgres:17`); one that names a host is left alone. Called with (list . ref). */}}
{{- define "stickyfarm.mirrored" -}}
{{- $ctx := index . 0 -}}
{{- $ref := index . 1 -}}
{{- $mirror := $ctx.Values.global.imageRegistry -}}
{{- $first := first (splitList "/" $ref) -}}
{{- $hasHost := and (gt (len (splitList "/" $ref)) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- if and $mirror (not $hasHost) -}}
{{- printf "%s/%s" (trimSuffix "/" $mirror) $ref -}}
{{- else -}}
{{- $ref -}}
{{- end -}}
{{- end -}}
