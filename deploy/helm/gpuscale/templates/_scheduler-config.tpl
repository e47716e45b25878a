{{/* KubeSchedulerConfiguration of the second scheduler (deploy/base/install/scheduler/). */}}
{{- define "gpuscale.schedulerConfig" -}}
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: true
  resourceLock: leases
  resourceName: gpuscale-scheduler
  resourceNamespace: {{ .Release.Namespace }}
  leaseDuration: 15s
  renewDeadline: 10s
  retryPeriod: 2s
profiles:
  - schedulerName: gpuscale
extenders:
  - urlPrefix: https://127.0.0.1:8888
    filterVerb: filter
    prioritizeVerb: prioritize
    bindVerb: bind
    weight: {{ .Values.scheduler.extender.weight }}
    enableHTTPS: true
    tlsConfig:
      certFile: /var/run/gpuscale/scheduler-client/tls.crt
      keyFile: /var/run/gpuscale/scheduler-client/tls.key
      caFile: /var/run/gpuscale/scheduler-client/ca.crt
      serverName: localhost
    httpTimeout: 5s
    nodeCacheCapable: true
    ignorable: true
    {{- if has "dra" .Values.scheduler.extender.inventory }}
    # DRA pods request no resource, so with managedResources kube-scheduler would never call
    # the extender for them: without the list, every pod of this profile is sent.
    {{- else }}
    managedResources:
      - name: gpuscale.io/gpu-memory
        ignoredByScheduler: true
      - name: nvidia.com/gpu
        ignoredByScheduler: false
    {{- end }}
{{- end }}
