{{/* Names: every object is <release>-<component>, cut to 63 characters. */}}
{{- define "spire-rs.name" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "spire-rs.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: spire-rs
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "spire-rs.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* An image reference from {repository, tag}; an empty tag is the chart's appVersion. */}}
{{- define "spire-rs.image" -}}
{{- $repo := .image.repository -}}
{{- $registry := .root.Values.global.imageRegistry -}}
{{- if and $registry (not (regexMatch "^[^/]+[.:][^/]*/" $repo)) -}}
{{- $repo = printf "%s/%s" $registry $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "spire-rs.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The hardened container securityContext: non-root, read-only root, no capabilities. */}}
{{- define "spire-rs.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "spire-rs.serverName" -}}{{ include "spire-rs.name" (dict "root" . "component" "spire-server") }}{{- end -}}
{{- define "spire-rs.agentName" -}}{{ include "spire-rs.name" (dict "root" . "component" "spire-agent") }}{{- end -}}
{{- define "spire-rs.operatorName" -}}{{ include "spire-rs.name" (dict "root" . "component" "spire-operator") }}{{- end -}}
{{- /* Cluster-scoped, so the namespace keeps two releases of one name apart. */}}
{{- define "spire-rs.webhookConfigurationName" -}}{{ .Release.Namespace }}-{{ include "spire-rs.operatorName" . }}-webhook{{- end -}}
{{- define "spire-rs.webhookServiceName" -}}{{ include "spire-rs.operatorName" . }}-webhook{{- end -}}
{{- /* On the chart's own spire.spiffe.io objects: the webhook's objectSelector lets them
  through, so an install does not wait on an operator that is not up yet. */}}
{{- define "spire-rs.webhookSkipLabel" -}}spire-rs.spiffe.io/webhook: skip{{- end -}}
{{- define "spire-rs.csiName" -}}{{ include "spire-rs.name" (dict "root" . "component" "spiffe-csi-driver") }}{{- end -}}
{{- define "spire-rs.oidcName" -}}{{ include "spire-rs.name" (dict "root" . "component" "oidc-discovery-provider") }}{{- end -}}

{{- define "spire-rs.bundleConfigMap" -}}
{{- default .Values.spireServer.bundleConfigMap .Values.spireAgent.trustBundleConfigMap -}}
{{- end -}}

{{- define "spire-rs.agentSocketDir" -}}
{{- default .Values.spireAgent.socketDir .Values.csiDriver.agentSocketDir -}}
{{- end -}}

{{- define "spire-rs.agentSocketName" -}}
{{- default .Values.spireAgent.socketName .Values.csiDriver.agentSocketName -}}
{{- end -}}

{{- define "spire-rs.oidcDomains" -}}
{{- if .Values.oidcDiscoveryProvider.domains -}}
{{- toJson .Values.oidcDiscoveryProvider.domains -}}
{{- else -}}
{{- toJson (list (printf "oidc-discovery.%s" .Values.global.trustDomain)) -}}
{{- end -}}
{{- end -}}

{{/* Directory (in the server pod) of the admin socket the operator shares. */}}
{{- define "spire-rs.adminSocketDir" -}}/run/spire/server-admin{{- end -}}

{{/* Whether the operator runs as its own Deployment (TCP+mTLS) rather than a sidecar. */}}
{{- define "spire-rs.operatorDeployment" -}}
{{- if and .Values.operator.enabled .Values.operator.deployment.enabled -}}true{{- end -}}
{{- end -}}

{{/* The ServiceAccount the operator runs as: its own as a Deployment, the server's as a sidecar. */}}
{{- define "spire-rs.operatorServiceAccount" -}}
{{- if include "spire-rs.operatorDeployment" . -}}
{{- include "spire-rs.operatorName" . -}}
{{- else -}}
{{- include "spire-rs.serverName" . -}}
{{- end -}}
{{- end -}}

{{/* The operator Deployment's SPIFFE ID (the server's admin_ids lists it). */}}
{{- define "spire-rs.operatorSPIFFEID" -}}
{{- with .Values.operator.deployment.spiffeID -}}
{{- . -}}
{{- else -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .Values.global.trustDomain .Release.Namespace (include "spire-rs.operatorName" .) -}}
{{- end -}}
{{- end -}}

{{/* Combinations that cannot work fail the install with a reason. */}}
{{- define "spire-rs.validate" -}}
{{- if and .Values.operator.enabled (not .Values.spireServer.enabled) (not (and .Values.operator.deployment.enabled .Values.operator.deployment.spireServerAddress)) -}}
{{- fail "operator.enabled needs spireServer.enabled: the operator runs beside the server and uses its admin socket. With an existing SPIRE server, either run the operator as a Deployment reaching it over TCP (operator.deployment.enabled with operator.deployment.spireServerAddress; the server must list the operator in admin_ids and hold its entry), or add the operator to that server's pod and set operator.enabled=false." -}}
{{- end -}}
{{- if and (include "spire-rs.operatorDeployment" .) (not (and .Values.spireAgent.enabled .Values.csiDriver.enabled)) -}}
{{- fail "operator.deployment.enabled needs spireAgent.enabled and csiDriver.enabled: the operator gets its own X.509-SVID from the agent's Workload API through the CSI driver." -}}
{{- end -}}
{{- if and .Values.spireServer.enabled (gt (int .Values.spireServer.replicas) 1) (eq .Values.spireServer.dataStore.type "sqlite3") -}}
{{- fail "spireServer.replicas > 1 needs spireServer.dataStore.type postgres or mysql: each replica would have its own sqlite database." -}}
{{- end -}}
{{- if and .Values.spireServer.enabled (ne .Values.spireServer.dataStore.type "sqlite3") (not .Values.spireServer.dataStore.connectionString) (not .Values.spireServer.dataStore.existingSecret.name) -}}
{{- fail (printf "spireServer.dataStore.type %s needs spireServer.dataStore.existingSecret.name (or connectionString)" .Values.spireServer.dataStore.type) -}}
{{- end -}}
{{- if and .Values.spireAgent.enabled (not .Values.spireServer.enabled) (not .Values.spireAgent.server.address) -}}
{{- fail "spireAgent.server.address is required when spireServer.enabled is false: the agents need a server to attest to." -}}
{{- end -}}
{{- if and .Values.spireServer.upstreamAuthority.certManager.enabled (not .Values.spireServer.upstreamAuthority.certManager.issuerName) -}}
{{- fail "spireServer.upstreamAuthority.certManager.issuerName is required when the cert-manager upstream authority is enabled" -}}
{{- end -}}
{{- end -}}

{{/* Env entries pointing in-cluster clients at global.kubernetesServiceHost/Port, if set. */}}
{{- define "spire-rs.kubernetesServiceEnv" -}}
{{- $env := list -}}
{{- with .Values.global.kubernetesServiceHost -}}
{{- $env = append $env (dict "name" "KUBERNETES_SERVICE_HOST" "value" .) -}}
{{- end -}}
{{- with .Values.global.kubernetesServicePort | toString -}}
{{- $env = append $env (dict "name" "KUBERNETES_SERVICE_PORT" "value" .) -}}
{{- end -}}
{{- with $env }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* hostNetwork and the DNS policy that keeps cluster DNS for it. */}}
{{- define "spire-rs.hostNetwork" -}}
{{- if . -}}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end -}}
{{- end -}}

{{/* A CSI container's preStop sleep (csiDriver.shutdownDelaySeconds): see values.yaml. */}}
{{- define "spire-rs.csiShutdownDelay" -}}
{{- with int .shutdownDelaySeconds -}}
lifecycle:
  preStop:
    sleep: {seconds: {{ . }}}
{{- end -}}
{{- end -}}
