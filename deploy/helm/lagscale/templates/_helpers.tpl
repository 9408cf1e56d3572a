{{/*
The chart renders the manifests of deploy/base/ and hpa/ (files/ links to them), so the chart
and `kubectl apply -k` cannot drift apart: each is read, patched from the values, and written.
*/}}

{{/* The documents of a manifest file under files/, parsed. */}}
{{- define "lagscale.docs" -}}
{{- $out := list -}}
{{- range $text := regexSplit "(?m)^---\\s*$" (.root.Files.Get .file) -1 -}}
{{- $doc := fromYaml $text -}}
{{- if $doc.kind -}}{{- $out = append $out $doc -}}{{- end -}}
{{- end -}}
{{- toJson (dict "docs" $out) -}}
{{- end -}}

{{/* A document as the release writes it: in the release's namespace, with Helm's labels. */}}
{{- define "lagscale.write" -}}
{{- $doc := .doc -}}
{{- if and $doc.metadata.namespace (ne $doc.metadata.namespace "kube-system") -}}
{{- $_ := set $doc.metadata "namespace" .root.Release.Namespace -}}
{{- end -}}
{{- $labels := merge (dict
      "app.kubernetes.io/managed-by" .root.Release.Service
      "app.kubernetes.io/instance" .root.Release.Name
      "helm.sh/chart" (printf "%s-%s" .root.Chart.Name .root.Chart.Version))
    (default (dict) $doc.metadata.labels) -}}
{{- $_ := set $doc.metadata "labels" $labels -}}
{{- printf "\n---\n%s\n" (toYaml $doc) -}}
{{- end -}}

{{/* Points service-account subjects at the release's namespace. */}}
{{- define "lagscale.subjects" -}}
{{- range $s := (default (list) .doc.subjects) -}}
{{- if and (eq $s.kind "ServiceAccount") (ne $s.namespace "kube-system") -}}{{- $_ := set $s "namespace" $.root.Release.Namespace -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/* An image reference from values. */}}
{{- define "lagscale.image" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* Sets env var NAME of container C to VALUE (appends it when absent). */}}
{{- define "lagscale.setenv" -}}
{{- $found := false -}}
{{- range $e := .container.env -}}
{{- if eq $e.name $.name -}}{{- $_ := set $e "value" $.value -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if not $found -}}{{- $_ := set .container "env" (append .container.env (dict "name" .name "value" .value)) -}}{{- end -}}
{{- end -}}

{{/* The adapter's CA, serving certificate and KEDA's client certificate: the existing Secrets
when the release has them (upgrades keep them; the CA key is not kept, so a missing one renews
all), else generated. Computed once per render (secrets.yaml). */}}
{{- define "lagscale.pki" -}}
{{- $serving := (lookup "v1" "Secret" .Release.Namespace "lag-adapter-serving-cert").data | default dict -}}
{{- $client := (lookup "v1" "Secret" .Release.Namespace "lag-adapter-keda-client").data | default dict -}}
{{- $needClient := eq .Values.mode "keda" -}}
{{- if and (hasKey $serving "ca.crt") (or (not $needClient) (hasKey $client "tls.crt")) -}}
{{- $pki := dict "ca" (index $serving "ca.crt" | b64dec) "cert" (index $serving "tls.crt" | b64dec) "key" (index $serving "tls.key" | b64dec) "clientCert" "" "clientKey" "" -}}
{{- if $needClient -}}
{{- $_ := set $pki "clientCert" (index $client "tls.crt" | b64dec) -}}
{{- $_ := set $pki "clientKey" (index $client "tls.key" | b64dec) -}}
{{- end -}}
{{- toJson $pki -}}
{{- else -}}
{{- $ca := genCA "lagscale-adapter-ca" 3650 -}}
{{- $ns := .Release.Namespace -}}
{{- $cert := genSignedCert (printf "lag-adapter.%s.svc" $ns) nil (list (printf "lag-adapter.%s.svc" $ns) (printf "lag-adapter.%s.svc.cluster.local" $ns) "lag-adapter") 365 $ca -}}
{{- $keda := genSignedCert "keda-operator" nil nil 365 $ca -}}
{{- toJson (dict "ca" $ca.Cert "cert" $cert.Cert "key" $cert.Key "clientCert" $keda.Cert "clientKey" $keda.Key) -}}
{{- end -}}
{{- end -}}
